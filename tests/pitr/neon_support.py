"""Helpers for the Neon half of ``pitr``: an Environment whose Neon client polls fast, a
project on the fake Neon server, and a stand-in booking API whose readiness a test decides."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr

from ptool_ops.environment import Environment
from ptool_ops.platform.neon import Backoff, NeonClient
from ptool_ops.settings import EnvironmentSettings
from tests.iac.fakes import FakeNeon

KEY = "neon-test-key"
FAST = Backoff(attempts=4, initial=0.01, maximum=0.02)
READY = {"status": "ready", "reason": None, "checks": {"database": "ok"}}
NOT_READY = {"status": "unavailable", "reason": "schema not understood", "checks": {}}


class FastNeonEnvironment(Environment):
    """An Environment whose Neon client backs off and polls in milliseconds."""

    poll_timeout = 5.0

    def neon(self) -> NeonClient:
        return NeonClient(
            SecretStr(KEY),
            base_url=self.settings.neon_api_url,
            backoff=FAST,
            poll_interval=0.01,
            poll_timeout=self.poll_timeout,
        )


def make_project(fake: FakeNeon, *, retention: int = 86400, age: timedelta) -> tuple[str, str]:
    """A project with a default branch created ``age`` ago; (project id, branch id)."""
    with NeonClient(
        SecretStr(KEY), base_url=f"{fake.url}/api/v2", backoff=FAST, poll_interval=0.01
    ) as api:
        created = api.create_project(
            "ptool-pitr",
            region_id="aws-eu-central-1",
            pg_version=17,
            history_retention_seconds=retention,
            database_name="booking",
            role_name="booking_owner",
        )
    born = datetime.now(UTC) - age
    fake.branches[created.branch.id]["created_at"] = born.strftime("%Y-%m-%dT%H:%M:%SZ")
    return created.project.id, created.branch.id


def neon_env(
    fake: FakeNeon,
    project: tuple[str, str],
    *,
    database_url: str,
    audit_dir: Any,
    api_url: str | None = None,
    on_secret: Callable[[str], None] | None = None,
) -> FastNeonEnvironment:
    settings = EnvironmentSettings(
        name="neon-test",
        kind="neon",
        database_url=SecretStr(database_url),
        neon_project_id=project[0],
        neon_branch_id=project[1],
        neon_api_key=SecretStr(KEY),
        neon_api_url=f"{fake.url}/api/v2",
        api_url=api_url,
        api_ready_timeout_s=0,
        audit_dir=audit_dir,
    )
    return FastNeonEnvironment(settings, on_secret=on_secret)


class StandInApi:
    """``/health/ready`` as the operations contract shapes it; ready when ``ready()`` says."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready
        self.calls = 0
        self.url = ""

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        if (method, path) != ("GET", "/health/ready"):
            return 404, {"title": "not found"}
        self.calls += 1
        return (200, READY) if self.ready() else (503, NOT_READY)
