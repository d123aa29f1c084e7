"""``migrate test``: prove every pending migration reversible on a scratch copy.

1. A scratch database is made from the current one on the same server: ``CREATE
   DATABASE ... TEMPLATE`` when nobody else is connected to it (fast, includes the data),
   else a schema-only ``pg_dump`` restored with ``pg_restore`` plus the history rows (the
   ``template`` / ``dump`` sources can be forced).
2. For each pending migration, in order: catalog snapshot; ``up`` (verify and invariants
   inside, as for real); ``down``; the catalog must equal the snapshot (roles, schemas,
   relations, columns, constraints, indexes, triggers, policies, functions, types, ACLs
   -- :mod:`ptool_ops.migrate.snapshot`; the history schema is left out); ``up`` again.
   Each ``up`` passes the compatibility gate when one is given
   (:mod:`ptool_ops.migrate.compat`: the API's captured statements, prepared as the app
   role against the migrated copy).
3. The scratch database is dropped, whatever happened.

The first failure stops the test (later migrations build on the failed one).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from ptool_ops import pg, privileges
from ptool_ops.errors import OperationFailed, PtoolError
from ptool_ops.migrate import history
from ptool_ops.migrate.history import HISTORY_TABLE
from ptool_ops.migrate.runner import Runner, RunOptions

if TYPE_CHECKING:
    from ptool_ops.migrate.compat import Gate

__all__ = ["MigrationTest", "TestReport", "run_migration_tests"]


@dataclass
class MigrationTest:
    __test__ = False
    version: str
    name: str
    up_ms: int = 0
    down_ms: int = 0
    reapply_ms: int = 0
    changed: list[str] = field(default_factory=list)  # catalog aspects the up changed
    reversible: bool = False
    diff: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    compatibility: dict[str, Any] | None = None  # the gate's report of the first up

    @property
    def ok(self) -> bool:
        return self.reversible and self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


@dataclass
class TestReport:
    __test__ = False
    scratch_database: str
    source: str  # template | dump
    migrations: list[MigrationTest]
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.migrations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "scratch_database": self.scratch_database,
            "source": self.source,
            "elapsed_s": self.elapsed_s,
            "migrations": [m.to_dict() for m in self.migrations],
        }


def _with_db(url: SecretStr | str, dbname: str) -> SecretStr:
    from psycopg.conninfo import make_conninfo

    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    return SecretStr(make_conninfo(raw, dbname=dbname))


def _jsonable(changes: dict[str, dict[str, list[tuple[Any, ...]]]]) -> dict[str, Any]:
    return {
        key: {side: [[str(v) for v in row] for row in rows] for side, rows in value.items()}
        for key, value in changes.items()
    }


def _dump_restore(
    url: SecretStr | str, scratch: str, with_history: bool, pg_bin_dir: Path | None
) -> None:
    with pg.connect(url) as conn:
        major = pg.server_facts(conn).major
    dump = pg.find_tool(
        "pg_dump", server_major=major, need_tls=pg.needs_tls(url), pg_bin_dir=pg_bin_dir
    )
    restore = pg.find_tool(
        "pg_restore", server_major=major, need_tls=pg.needs_tls(url), pg_bin_dir=pg_bin_dir
    )
    source, env = pg.tool_invocation(url)
    target, target_env = pg.tool_invocation(_with_db(url, scratch))
    passes = [["--schema-only"]]
    if with_history:
        passes.append(["--data-only", f"--table={HISTORY_TABLE}"])
    for args in passes:
        dumped = subprocess.run(
            [str(dump.path), "--format=custom", *args, "-d", source],
            env=env,
            capture_output=True,
            check=False,
        )
        if dumped.returncode != 0:
            raise OperationFailed(
                f"pg_dump of the schema failed: {dumped.stderr.decode(errors='replace')[:300]}"
            )
        restored = subprocess.run(
            [str(restore.path), "--exit-on-error", "-d", target],
            input=dumped.stdout,
            env=target_env,
            capture_output=True,
            check=False,
        )
        if restored.returncode != 0:
            raise OperationFailed(
                "pg_restore into the scratch database failed:"
                f" {restored.stderr.decode(errors='replace')[:300]}"
            )


def run_migration_tests(
    url: SecretStr | str,
    *,
    directory: Path,
    options: RunOptions | None = None,
    source: str = "auto",
    pg_bin_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
    gate: Gate | None = None,
) -> TestReport:
    """Apply, revert and re-apply every pending migration on a scratch copy."""
    from ptool_ops.migrate.snapshot import diff, snapshot

    say = log or (lambda message: None)
    started = time.monotonic()
    options = replace(options or RunOptions(), lint=False)
    with pg.connect(url) as conn:
        skip = () if gate is not None and gate.needs_app_role else ("probe_as_app",)
        privileges.require(conn, "migrate.test", skip=skip)
        dbname = str(conn.info.dbname)
        has_history = history.history_exists(conn)
    scratch = f"{dbname[:30]}_ptool_mtest_{uuid.uuid4().hex[:8]}"
    used = source
    with pg.connect(url, dbname="postgres") as admin:
        try:
            if source in ("auto", "template"):
                try:
                    admin.execute(
                        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                            sql.Identifier(scratch), sql.Identifier(dbname)
                        )
                    )
                    used = "template"
                except psycopg.errors.ObjectInUse:
                    if source == "template":
                        raise OperationFailed(
                            f"database {dbname} has other sessions, so it cannot be a template.",
                            hint="Use --source dump (schema-only dump and restore).",
                        ) from None
                    used = "dump"
            if used != "template":
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
                say(f"copying the schema of {dbname} into {scratch} (pg_dump --schema-only)")
                _dump_restore(url, scratch, has_history, pg_bin_dir)
            else:
                say(f"scratch database {scratch} made from template {dbname}")
            pg.copy_database_grants(admin, dbname, scratch)
        except psycopg.Error as err:
            raise OperationFailed(
                f"cannot create the scratch database {scratch}: {err}".rstrip(".") + ".",
                hint="migrate test needs a login that may CREATE DATABASE on the server.",
            ) from None
        try:
            report = TestReport(scratch, used, [])
            _run(_with_db(url, scratch), directory, options, report, say, diff, snapshot, gate)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch))
            )
    report.elapsed_s = round(time.monotonic() - started, 2)
    return report


def _run(
    url: SecretStr,
    directory: Path,
    options: RunOptions,
    report: TestReport,
    say: Callable[[str], None],
    diff: Callable[..., dict[str, dict[str, list[tuple[Any, ...]]]]],
    snapshot: Callable[..., dict[str, list[tuple[Any, ...]]]],
    gate: Gate | None = None,
) -> None:
    runner = Runner(url, directory=directory, options=options, gate=gate, anchor_table=False)
    pending = [s for s in runner.status().pending if s.migration is not None]
    for s in pending:
        test = MigrationTest(s.version, s.name)
        report.migrations.append(test)
        step = "up"
        try:
            with pg.connect(url) as conn:
                before = snapshot(conn, exclude_schemas=("ptool_ops",))
            say(f"{s.label}: up")
            clock = time.monotonic()
            test.compatibility = _gate_of(runner.up(to=s.version))
            test.up_ms = round((time.monotonic() - clock) * 1000)
            with pg.connect(url) as conn:
                test.changed = sorted(diff(before, snapshot(conn, exclude_schemas=("ptool_ops",))))
            step = "down"
            say(f"{s.label}: down")
            clock = time.monotonic()
            runner.down(steps=1)
            test.down_ms = round((time.monotonic() - clock) * 1000)
            with pg.connect(url) as conn:
                changes = diff(before, snapshot(conn, exclude_schemas=("ptool_ops",)))
            test.diff = _jsonable(changes)
            test.reversible = not changes
            if changes:
                test.error = "after down the schema differs from before in " + ", ".join(
                    sorted(changes)
                )
                break
            step = "up again"
            say(f"{s.label}: up again")
            clock = time.monotonic()
            runner.up(to=s.version)
            test.reapply_ms = round((time.monotonic() - clock) * 1000)
        except PtoolError as err:
            test.error = f"{step}: {err.message}"
            if gate is not None and gate.reports and step == "up":
                test.compatibility = gate.reports[-1].to_dict()
            break


def _gate_of(result: Any) -> dict[str, Any] | None:
    for m in result.migrations:
        if m.compatibility is not None:
            return dict(m.compatibility)
    return None
