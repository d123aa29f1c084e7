"""The issue's acceptance, end to end: a ``kind = "postgres"`` environment pointed at the
suite's server with the roles a deployed environment has -- ``booking_owner`` (what the
operator of a Neon project holds) and ``booking_migrator`` for migrations -- runs every
command; with a role that lacks what a command needs, the command says which privilege in
one sentence and exits 11; on a server with only Neon's platform roles, migration 0001
creates the rest as the owner, and ``migrate test`` of every migration passes as it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops.booking import MIGRATIONS_DIR
from ptool_ops.booking.seed import seed
from ptool_ops.local.env import LocalEnvironment
from tests.api.conftest import Standin, standin  # noqa: F401 - the stand-in API fixture
from tests.conftest import BACKUP, MIGRATOR, OWNER, Cli, admin_url, drop_database
from tests.migrate.runner_support import add_migration

ADD_NOTE = "ALTER TABLE booking.tenants ADD COLUMN note text;\n"
DROP_NOTE = "ALTER TABLE booking.tenants DROP COLUMN note;\n"


def _configure(
    cli: Cli,
    api: Standin,
    tmp_path: Path,
    *,
    operator: str,
    migrator: str | None,
    backup: str | None = None,
) -> Path:
    directory = tmp_path / "migrations"
    if not directory.exists():
        shutil.copytree(MIGRATIONS_DIR, directory)
        add_migration(directory, "0006", "tenant_note", ADD_NOTE, DROP_NOTE)
    db = api.db
    lines = [
        "[environments.ops]",
        'kind = "postgres"',
        f'database_url = "{db.url(operator)}"',
        f'repo_url = "file://{tmp_path / "repo"}"',
        f'api_url = "{api.url}"',
        f'migrations_dir = "{directory}"',
        "lock_timeout_ms = 1000",
    ]
    if migrator:
        lines.append(f'migrator_url = "{db.url(migrator)}"')
    if backup:
        lines.append(f'backup_url = "{db.url(backup)}"')
    cli.write_config("\n".join(lines) + "\n")
    cli.env["PTOOL_API_TOKEN"] = api.ops_token
    return directory


@pytest.fixture
def seeded(standin: Standin) -> Iterator[Standin]:  # noqa: F811 - the imported fixture
    with standin.db.connect() as conn:
        seed(conn, tenants=2, bookings=300, seed=3)
    yield standin
    with psycopg.connect(admin_url(standin.db.server, "postgres"), autocommit=True) as conn:
        names = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s",
            (standin.db.name + "\\_%",),
        ).fetchall()
    for (name,) in names:
        drop_database(standin.db.server, name)


def test_every_command_works_with_the_deployed_roles(
    cli: Cli, seeded: Standin, tmp_path: Path
) -> None:
    _configure(cli, seeded, tmp_path, operator=OWNER, migrator=MIGRATOR, backup=BACKUP)
    log = seeded.db.server.paths.log
    offset = log.stat().st_size

    def ok(command: str) -> Any:
        result = cli(f"--env ops {command} -o json")
        assert result.exit_code == 0, f"{command}: {result.output}"
        assert "Traceback" not in result.output
        return result.json()

    # nothing is wrong but the backup the repository does not hold yet
    first = cli("--env ops status -o json")
    assert first.exit_code == 1, first.output
    assert [p.split(":")[0] for p in first.json()["problems"]] == ["backup.age", "drill.age"]
    assert ok("migrate status")["counts"]["pending"] == 1
    assert ok("migrate plan")["pending"][0]["version"] == "0006"
    tested = ok("migrate test")
    assert tested["ok"] is True and [m["version"] for m in tested["migrations"]] == ["0006"]
    up = ok("--yes migrate up")
    assert [m["version"] for m in up["migrations"]] == ["0006"]
    assert up["backup_point"]["kind"] == "logical-backup"
    created = ok("backup create")
    listed = ok("backup list")
    assert [b["id"] for b in listed][-1] == created["id"]
    assert ok("backup verify latest --restore")["ok"] is True
    target = f"{seeded.db.name}_copy"
    assert ok(f"backup restore latest --target-db {target}")["ok"] is True
    in_place = ok("--yes backup restore latest --in-place")
    assert in_place["ok"] is True and in_place["previous_database"]
    drilled = ok("drill run")
    assert drilled["ok"] is True and drilled["parts"][0]["rto_s"] > 0
    assert ok("status")["ok"] is True
    assert ok("--yes backup prune --keep-last 1")["kept"]
    assert ok("api smoke")["ok"] is True

    # the backup point and the backups were dumped by the backup role (the stacks' backup
    # URL), as nightly runs them; nothing else logged in as it
    with log.open("rb") as handle:
        handle.seek(offset)
        logins = [
            line
            for line in handle.read().decode(errors="replace").splitlines()
            if "connection authorized: user=booking_backup " in line
        ]
    assert logins and all(f"database={seeded.db.name} " in line for line in logins)

    with seeded.db.connect() as conn:
        # the migrator applied 0006 and owns what it made
        row = conn.execute(
            "SELECT applied_by FROM ptool_ops.migration_history WHERE version = '0006'"
        ).fetchone()
        owner = conn.execute(
            "SELECT datdba::regrole::text FROM pg_database WHERE datname = current_database()"
        ).fetchone()
        grants = conn.execute(
            "SELECT has_database_privilege('booking_migrator', current_database(), 'CREATE')"
        ).fetchone()
    assert row is not None and row[0].endswith(f"({MIGRATOR})")
    assert owner == (OWNER,)  # the restored database took the place and the owner
    assert grants == (True,)  # and the database grants of the one it replaced


@pytest.mark.parametrize(
    ("command", "privilege"),
    [
        ("status", "SELECT on every table of schemas booking and ptool_ops, not filtered"),
        ("--yes migrate up", "ownership of the migration history"),
        ("migrate test", "CREATEDB"),
        ("backup create", "SELECT on every table and sequence of the database"),
        ("backup verify latest --restore", "CREATEDB"),
        ("backup restore latest", "CREATEDB"),
        ("--yes backup restore latest --in-place", "CREATEDB"),
    ],
)
def test_a_role_that_lacks_a_privilege_gets_one_sentence(
    cli: Cli, seeded: Standin, tmp_path: Path, command: str, privilege: str
) -> None:
    _configure(cli, seeded, tmp_path, operator=OWNER, migrator=None)
    assert cli("--env ops backup create").exit_code == 0  # something to restore
    _configure(cli, seeded, tmp_path, operator="booking_app_a", migrator=None)
    result = cli(f"--env ops {command}")
    assert result.exit_code == 11, result.output
    assert "Traceback" not in result.output
    # status reports on its one screen (stdout); every other command says it on stderr
    said = result.stdout if command == "status" else result.stderr
    first = next(line for line in said.splitlines() if "role booking_app_a" in line)
    assert first.startswith(("error: ", "problem: ")), said
    assert "role booking_app_a lacks" in first and privilege in said
    assert "grant" in said.lower()
    as_json = cli(f"--env ops {command} -o json")
    assert as_json.exit_code == 11
    body = as_json.json()
    if command == "status":
        assert body["exit_code"] == 11 and "lacks" in body["database"]["error"]
    else:
        assert body["error"] == "permission_denied" and body["exit_code"] == 11


@pytest.fixture(scope="module")
def platform_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    """A server as a new Neon project is: neon_superuser and booking_owner, nothing else."""
    env = LocalEnvironment(tmp_path_factory.mktemp("neonlike") / "local", archive=False)
    env.up(apply_schema=False, api=False, stack=False)
    yield env
    env.server.stop("immediate")


def test_0001_creates_the_roles_as_a_non_superuser_owner(
    platform_only: LocalEnvironment,
) -> None:
    from ptool_ops import privileges
    from ptool_ops.migrate.runner import Runner, RunOptions
    from ptool_ops.migrate.testing import run_migration_tests

    url = platform_only.facts.role_url(OWNER)
    with psycopg.connect(url, autocommit=True) as conn:
        facts = conn.execute(
            "SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        before = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
            ([r.name for r in privileges.STACK_ROLES],),
        ).fetchone()
    assert facts == (False, True) and before == (0,)

    options = RunOptions(actor="tests", run_lock_wait_s=5)
    # migrate test first (a scratch copy of the empty database: every migration, 0001
    # included, up, down to the same catalog, up again), then for real
    report = run_migration_tests(url, directory=MIGRATIONS_DIR, options=options, source="dump")
    assert report.ok, [m.error for m in report.migrations if not m.ok]
    assert len(report.migrations) == len(list(MIGRATIONS_DIR.glob("*.up.sql")))
    run = Runner(url, directory=MIGRATIONS_DIR, options=options).up()
    assert run.migrations[-1].version == "0005"
    with psycopg.connect(url, autocommit=True) as conn:
        roles = conn.execute(
            "SELECT rolname, rolcanlogin, rolbypassrls FROM pg_roles WHERE rolname = ANY(%s)"
            " ORDER BY 1",
            ([r.name for r in privileges.STACK_ROLES],),
        ).fetchall()
        check = privileges.check(conn, "status")
    assert [r[0] for r in roles] == sorted(r.name for r in privileges.STACK_ROLES)
    assert ("booking_backup", True, True) in roles
    assert check.ok
