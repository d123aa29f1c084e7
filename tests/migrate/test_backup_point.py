"""Backup points: which kind, and taking each kind against real parts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ptool_ops.environment import Environment
from ptool_ops.local.env import LocalEnvironment
from ptool_ops.migrate.backup_point import BackupKind, EnvironmentBackupStep, choose
from ptool_ops.migrate.runner import Runner
from ptool_ops.settings import EnvironmentSettings
from tests.conftest import MIGRATOR, OWNER, TestDatabase, admin_url
from tests.iac.fakes import FakeNeon, serve
from tests.migrate.runner_support import FAST, add_migration, migrations_copy


def test_without_neon_a_logical_backup_is_planned(booking_db: TestDatabase) -> None:
    env = Environment(EnvironmentSettings(name="t", kind="postgres", repo_url="file:///r"))
    with psycopg.connect(booking_db.url(MIGRATOR), autocommit=True) as conn:
        plan = choose(env, conn)
    assert plan.kind is BackupKind.logical_backup
    assert "file:///r" in plan.reason


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
        # a self-managed server's operator who granted the migrator restore points
        conn.execute(
            "GRANT EXECUTE ON FUNCTION pg_create_restore_point(text), pg_switch_wal()"
            " TO booking_migrator"
        )
    yield env
    env.down()


def test_working_wal_archiving_is_no_way_back_without_a_base_backup(
    archiving_env: LocalEnvironment, tmp_path: Path
) -> None:
    """WAL is archived and the migrator may create restore points, but nothing took a base
    backup: a restore point would lead nowhere, so the way back is a logical backup."""
    settings = EnvironmentSettings(
        name="t", kind="postgres", repo_url=f"file://{tmp_path / 'repo'}", audit_dir=tmp_path
    )
    env = Environment(settings)
    with psycopg.connect(archiving_env.facts.role_url(MIGRATOR), autocommit=True) as conn:
        row = conn.execute("SELECT archived_count > 0 FROM pg_stat_archiver").fetchone()
        assert row == (True,)
        plan = choose(env, conn)
    assert plan.kind is BackupKind.logical_backup
    assert "a restore point is no way back here" in plan.reason
    assert "holds no WAL archive of this server" in plan.reason


def test_a_base_backup_and_an_unbroken_archive_make_a_restore_point_the_way_back(
    archiving_env: LocalEnvironment, tmp_path: Path
) -> None:
    from ptool_ops.pitr import base

    settings = EnvironmentSettings(
        name="t",
        kind="postgres",
        database_url=archiving_env.facts.role_url(OWNER),
        repo_url=archiving_env.repo_url,
        audit_dir=tmp_path,
    )
    env = Environment(settings)
    with psycopg.connect(archiving_env.facts.role_url(MIGRATOR), autocommit=True) as conn:
        assert choose(env, conn).kind is BackupKind.logical_backup  # no base backup yet
        base.base_backup(env)
        plan = choose(env, conn)
        assert plan.kind is BackupKind.restore_point, plan.reason
        point = EnvironmentBackupStep(env).take(conn, plan, "up-0006")
    assert point.ref.startswith("ptool-pre-migrate-up-0006-")
    assert point.restore_command == (f"ptool-ops --env t pitr restore --restore-point {point.ref}")
    recorded = env.repository().get_json(f"pitr/points/{point.ref}.json")
    assert recorded is not None and recorded["name"] == point.ref


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
