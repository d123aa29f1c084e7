"""``Backend``: the NestJS API on Railway (dynamic providers over Railway's GraphQL API).

A long-lived environment gets its own Railway project and the ``api`` service in it. A
preview gets an ephemeral environment copied from staging's (``sourceEnvironmentId``), where
staging's service already has an instance. Either way the service instance gets the settings
zero-downtime deploys need — a health check that exercises the database, overlap and draining
seconds — and a Railway domain, and its variables are set: ``DATABASE_URL`` (a secret wired
from the ``Database`` component) in a resource of its own, the ops token ``OPS_TOKEN`` (the
stack's secret config ``ptool-ops:apiToken``, the same value ptool-ops reads from the
environment's ``api-token`` secret) in another, the plain variables in a third.

``DATABASE_URL`` of a long-lived environment is set once (``rotated_variables``, see
``components/rotation.py``): ``ptool-ops secrets rotate`` owns it afterwards. A preview's is
the stack's (its passwords come from its own config, nothing rotates them), so it follows the
branch. ``OPS_TOKEN`` is the stack's everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi

from components.config import RailwayConfig
from components.providers.railway import (
    RailwayEnvironment,
    RailwayProject,
    RailwayService,
    RailwayServiceInstance,
    RailwayVariables,
)


@dataclass(frozen=True)
class PreviewTarget:
    """For a preview: a new environment ``name`` in staging's project, copied from its env."""

    project_id: pulumi.Input[str]
    source_environment_id: pulumi.Input[str]
    service_id: pulumi.Input[str]
    name: str


#: the backend's variable holding the ops token (the booking API's operations contract)
OPS_TOKEN_VARIABLE = "OPS_TOKEN"  # noqa: S105 - a variable name, not a secret
#: the backend's variable holding its database URL (the ``Database`` component's ``app_url``)
DATABASE_URL_VARIABLE = "DATABASE_URL"


@dataclass(frozen=True)
class BackendArgs:
    environment: str
    railway: RailwayConfig
    database_url: pulumi.Input[str]  # secret
    ops_token: pulumi.Input[str] | None = None  # secret
    protect: bool = False
    preview: PreviewTarget | None = None
    extra_variables: dict[str, pulumi.Input[str]] = field(default_factory=dict)
    #: variables the rotation engine owns once the stack has set them (DATABASE_URL or none)
    rotated_variables: frozenset[str] = frozenset()


class Backend(pulumi.ComponentResource):
    project_id: pulumi.Output[str]
    environment_id: pulumi.Output[str]
    service_id: pulumi.Output[str]
    domain: pulumi.Output[str]
    url: pulumi.Output[str]

    def __init__(
        self, name: str, args: BackendArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("ptool:index:Backend", name, None, opts)
        rail = args.railway
        child = pulumi.ResourceOptions(parent=self, protect=args.protect)
        if args.preview is None:
            project = RailwayProject(
                f"{name}-project",
                name=rail.project_name or f"ptool-{args.environment}",
                description=f"Production Tool API ({args.environment})",
                workspace_id=rail.workspace_id,
                opts=child,
            )
            service = RailwayService(
                f"{name}-service",
                project_id=project.project_id,
                name=rail.service_name,
                repo=rail.repo,
                branch=rail.branch,
                opts=child,
            )
            self.project_id = project.project_id
            self.environment_id = project.default_environment_id
            self.service_id = service.service_id
        else:
            env = RailwayEnvironment(
                f"{name}-environment",
                project_id=args.preview.project_id,
                name=args.preview.name,
                source_environment_id=args.preview.source_environment_id,
                ephemeral=True,
                opts=child,
            )
            self.project_id = pulumi.Output.from_input(args.preview.project_id)
            self.environment_id = env.environment_id
            self.service_id = pulumi.Output.from_input(args.preview.service_id)

        instance = RailwayServiceInstance(
            f"{name}-instance",
            project_id=self.project_id,
            environment_id=self.environment_id,
            service_id=self.service_id,
            healthcheck_path=rail.healthcheck_path,
            healthcheck_timeout=rail.healthcheck_timeout,
            overlap_seconds=rail.overlap_seconds,
            draining_seconds=rail.draining_seconds,
            num_replicas=rail.replicas,
            start_command=rail.start_command,
            target_port=rail.port,
            opts=child,
        )
        self.domain = instance.domain
        self.url = pulumi.Output.concat("https://", instance.domain)

        plain: dict[str, pulumi.Input[str]] = {
            "NODE_ENV": "production",
            "PORT": str(rail.port),
            "PTOOL_ENVIRONMENT": args.environment,
            **rail.variables,
            **args.extra_variables,
        }
        RailwayVariables(
            f"{name}-variables",
            project_id=self.project_id,
            environment_id=self.environment_id,
            service_id=self.service_id,
            variables=plain,
            sensitive=False,
            opts=child,
        )
        rotated = DATABASE_URL_VARIABLE in args.rotated_variables
        self.secret_variables = RailwayVariables(
            f"{name}-secret-variables",
            project_id=self.project_id,
            environment_id=self.environment_id,
            service_id=self.service_id,
            variables={DATABASE_URL_VARIABLE: pulumi.Output.secret(args.database_url)},
            # rotated: set when created, then `ptool-ops secrets rotate` owns it -- a new
            # value is ignored, and no later update (a provider version bump) writes it back
            create_only=rotated,
            opts=pulumi.ResourceOptions.merge(
                child, pulumi.ResourceOptions(ignore_changes=["variables"] if rotated else None)
            ),
        )
        self.ops_token_variable: RailwayVariables | None = None
        if args.ops_token is not None:
            self.ops_token_variable = RailwayVariables(
                f"{name}-ops-token",
                project_id=self.project_id,
                environment_id=self.environment_id,
                service_id=self.service_id,
                variables={OPS_TOKEN_VARIABLE: pulumi.Output.secret(args.ops_token)},
                opts=child,
            )
        self.register_outputs(
            {
                "project_id": self.project_id,
                "environment_id": self.environment_id,
                "service_id": self.service_id,
                "domain": self.domain,
                "url": self.url,
            }
        )
