"""Backup points: which kind, and taking each kind against real parts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from ptool_ops.environment import Environment
from ptool_ops.local.env import LocalEnvironment
from ptool_ops.migrate.backup_point import (
    ArchiveState,
    BackupKind,
    EnvironmentBackupStep,
    choose,
    take,
)
from ptool_ops.migrate.runner import Runner
from ptool_ops.settings import EnvironmentSettings
from tests.conftest import MIGRATOR, OWNER, TestDatabase, admin_url
from tests.iac.fakes import FakeNeon, serve
from tests.migrate.runner_support import FAST, add_migration, migrations_copy

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("mode", "archived", "last_ok", "last_failed", "working"),
    [
        ("on", 3, NOW, None, True),
        ("on", 3, NOW, NOW - timedelta(minutes=1), True),
        ("on", 3, NOW - timedelta(minutes=1), NOW, False),  # failing since the last success
        ("on", 0, None, None, False),  # nothing archived yet: not proven to work
        ("off", 3, NOW, None, False),
        ("always", 1, NOW, None, True),
    ],
)
def test_archive_working(
    mode: str, archived: int, last_ok: datetime | None, last_failed: datetime | None, working: bool
) -> None:
    assert ArchiveState(mode, archived, 0, last_ok, last_failed, True).working is working


def test_without_archiving_a_logical_backup_is_planned(booking_db: TestDatabase) -> None:
    env = Environment(EnvironmentSettings(name="t", kind="postgres"))
    with psycopg.connect(booking_db.url(MIGRATOR), autocommit=True) as conn:
        plan = choose(env, conn)
    assert plan.kind is BackupKind.logical_backup and "archive_mode is off" in plan.reason


@pytest.fixture(scope="module")
def archiving_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    env = LocalEnvironment(tmp_path_factory.mktemp("arch") / "local", archive=True)
    env.up(apply_schema=False, api=False)
    with psycopg.connect(env.facts.role_url(OWNER), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS wal_filler AS SELECT 1 AS x")
    with psycopg.connect(admin_url(env, "booking"), autocommit=True) as conn:
        conn.execute("SELECT pg_switch_wal()")  # the harness: something to archive
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = conn.execute("SELECT archived_count FROM pg_stat_archiver").fetchone()
            if row and row[0] > 0:
                break
            time.sleep(0.2)
    yield env
    env.down()


def test_restore_points_need_their_execute_grants(archiving_env: LocalEnvironment) -> None:
    """Archiving works, but neither the owner nor the migrator may create restore points
    (superuser-only functions; Neon grants them to nobody): a logical backup it is."""
    env = Environment(EnvironmentSettings(name="t", kind="postgres"))
    for role in (OWNER, MIGRATOR):
        with psycopg.connect(archiving_env.facts.role_url(role), autocommit=True) as conn:
            plan = choose(env, conn)
        assert plan.kind is BackupKind.logical_backup
        assert "may not create restore points" in plan.reason


def test_with_working_archiving_a_restore_point_is_taken(
    archiving_env: LocalEnvironment, tmp_path: Path
) -> None:
    """A self-managed server's operator granted the migrator the two functions."""
    env = Environment(EnvironmentSettings(name="t", kind="postgres"))
    with psycopg.connect(admin_url(archiving_env, "booking"), autocommit=True) as conn:
        conn.execute(
            "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal()"
            " TO booking_migrator"
        )
    try:
        with psycopg.connect(archiving_env.facts.role_url(MIGRATOR), autocommit=True) as conn:
            plan = choose(env, conn)
            assert plan.kind is BackupKind.restore_point, plan.reason
            point = take(env, conn, plan, label="up-0006")
    finally:
        with psycopg.connect(admin_url(archiving_env, "booking"), autocommit=True) as conn:
            conn.execute(
                "REVOKE EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal()"
                " FROM booking_migrator"
            )
    assert point.ref.startswith("ptool-migrate-up-0006-")
    assert f"recovery_target_name = '{point.ref}'" in point.restore_command


@pytest.fixture
def neon() -> Iterator[FakeNeon]:
    fake = FakeNeon()
    with serve(fake) as url:
        fake.url = url
        yield fake


def test_on_neon_a_branch_is_the_backup_point(
    neon: FakeNeon, booking_db: TestDatabase, tmp_path: Path
) -> None:
    from pydantic import SecretStr

    from ptool_ops.platform.neon import NeonClient

    with NeonClient(
        SecretStr("neon-test-key"), base_url=f"{neon.url}/api/v2", poll_interval=0.01
    ) as api:
        created = api.create_project(
            "ptool-mig", region_id="aws-eu-central-1", pg_version=17, history_retention_seconds=0
        )
    env = Environment(
        EnvironmentSettings(
            name="t",
            kind="neon",
            neon_project_id=created.project.id,
            neon_branch_id=created.branch.id,
            neon_api_key=SecretStr("neon-test-key"),
            neon_api_url=f"{neon.url}/api/v2",
        )
    )
    directory = migrations_copy(tmp_path)
    add_migration(
        directory,
        "0006",
        "tenant_note",
        "ALTER TABLE booking.tenants ADD COLUMN note text;\n",
        "ALTER TABLE booking.tenants DROP COLUMN note;\n",
    )
    runner = Runner(
        booking_db.url(MIGRATOR),
        directory=directory,
        options=FAST,
        backup=EnvironmentBackupStep(env),
    )
    assert runner.plan().backup is not None and runner.plan().backup.kind is BackupKind.neon_branch
    result = runner.up()
    point = result.backup_point
    assert point is not None and point.kind is BackupKind.neon_branch
    assert point.ref in neon.branches
    assert neon.branches[point.ref]["parent_id"] == created.branch.id
    assert point.restore_command.startswith(f"neonctl branches restore {created.branch.id} ")
    with booking_db.connect() as conn:
        row = conn.execute(
            "SELECT backup_point FROM ptool_ops.migration_history WHERE version = '0006'"
        ).fetchone()
    assert row == (f"neon-branch:{point.ref}",)
