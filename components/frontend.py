"""``Frontend``: the Next.js app on Vercel (pulumiverse-vercel).

A long-lived environment gets its own Vercel project (framework, git repository, root
directory) with its variables on the ``production`` target and its domains. A preview
reuses staging's project and adds variables scoped to the ``preview`` target and the pull
request's git branch, so that branch's preview deployments talk to the preview backend.

``NEXT_PUBLIC_API_URL`` is the backend's URL. Secret variables are ``sensitive`` (Vercel
never shows them again) and their values are Pulumi secrets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumiverse_vercel as vercel

from components.config import VercelConfig

API_URL_VARIABLE = "NEXT_PUBLIC_API_URL"


@dataclass(frozen=True)
class FrontendArgs:
    environment: str
    vercel: VercelConfig
    api_url: pulumi.Input[str]
    protect: bool = False
    preview_project_id: pulumi.Input[str] | None = None  # set: a preview of that project
    preview_git_branch: str | None = None
    secret_variables: dict[str, pulumi.Input[str]] = field(default_factory=dict)


class Frontend(pulumi.ComponentResource):
    project_id: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(
        self, name: str, args: FrontendArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ptool:index:Frontend", name, None, opts)
        cfg = args.vercel
        child = pulumi.ResourceOptions(parent=self, protect=args.protect)
        preview = args.preview_project_id is not None
        if preview:
            if not args.preview_git_branch:
                raise ValueError("a preview frontend needs the pull request's git branch")
            self.project_id = pulumi.Output.from_input(args.preview_project_id)  # type: ignore[arg-type]
            targets = ["preview"]
        else:
            project = vercel.Project(
                f"{name}-project",
                name=cfg.project_name,
                framework=cfg.framework,
                team_id=cfg.team_id,
                root_directory=cfg.root_directory,
                git_repository=vercel.ProjectGitRepositoryArgs(
                    type="github", repo=cfg.repo, production_branch=cfg.production_branch
                ),
                opts=child,
            )
            self.project_id = project.id
            targets = ["production"]

        def variable(key: str, value: pulumi.Input[str], *, sensitive: bool) -> None:
            vercel.ProjectEnvironmentVariable(
                f"{name}-env-{key.lower().replace('_', '-')}",
                project_id=self.project_id,
                team_id=cfg.team_id,
                key=key,
                value=pulumi.Output.secret(value) if sensitive else value,
                sensitive=sensitive,
                targets=targets,
                git_branch=args.preview_git_branch if preview else None,
                comment=f"managed by the ptool-ops stack {pulumi.get_stack()}",
                opts=child,
            )

        variable(API_URL_VARIABLE, args.api_url, sensitive=False)
        variable("NEXT_PUBLIC_ENVIRONMENT", args.environment, sensitive=False)
        for key, value in sorted(cfg.variables.items()):
            variable(key, value, sensitive=False)
        for key, secret in sorted(args.secret_variables.items()):
            variable(key, secret, sensitive=True)

        domains = [] if preview else cfg.domains
        for domain in domains:
            vercel.ProjectDomain(
                f"{name}-domain-{domain.replace('.', '-')}",
                project_id=self.project_id,
                team_id=cfg.team_id,
                domain=domain,
                opts=child,
            )
        self.url = pulumi.Output.from_input(
            f"https://{domains[0]}" if domains else f"https://{cfg.project_name}.vercel.app"
        )
        self.register_outputs({"project_id": self.project_id, "url": self.url})
