"""``backup restore``: a plan of small steps, each one a function; printing it is the dry run.

Into a new database by default. ``in_place`` restores into a new database too, validates it,
and only then swaps names: the current database is kept as ``<db>_before_<id>`` — the way
back — and the restored one takes its name. A failure before the swap drops what was
created, so nothing changes.

Steps: check-key → checksums → create-database → restore-data (pg_restore from the stream)
→ restore-post-data (indexes and constraints, ``pg_restore -j N``) → validate (invariants,
row counts against the manifest) → swap (in place only).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ptool_ops import audit, pg
from ptool_ops.backup import tools
from ptool_ops.backup.catalog import resolve
from ptool_ops.backup.models import BackupManifest, RestoreResult, Step, TableInfo
from ptool_ops.errors import Conflict, ManualActionRequired, OperationFailed, PtoolError
from ptool_ops.repo.manifest import ObjectEntry
from ptool_ops.repo.repository import Repository
from ptool_ops.settings import EnvironmentSettings

#: (stage, done bytes, total bytes)
Progress = Callable[[str, int, int], None]

MAX_IDENTIFIER = 63


def url_for(url: SecretStr | str, dbname: str) -> SecretStr:
    """The same server and credentials, another database."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    params = conninfo_to_dict(raw)
    params["dbname"] = dbname
    return SecretStr(make_conninfo("", **params))


def suffix(backup_id: str) -> str:
    return backup_id.lower().replace("-", "_")


def default_target(manifest: BackupManifest, purpose: str = "restore") -> str:
    return f"{manifest.database}_{purpose}_{suffix(manifest.id)}"[:MAX_IDENTIFIER]


def entry(manifest: BackupManifest, name: str) -> ObjectEntry:
    for item in manifest.objects:
        if item.key.rsplit("/", 1)[-1].startswith(name):
            return item
    raise OperationFailed(f"backup {manifest.id} has no {name} object in its manifest.")


def offset_progress(
    report: Progress, stage: str, base: int, total: int
) -> Callable[[int, int], None]:
    """A per-object progress callback that reports against the whole backup."""

    def update(done: int, _stored: int) -> None:
        report(stage, base + done, total)

    return update


def plan(
    manifest: BackupManifest, target: str, *, in_place: bool, jobs: int, current_db: str
) -> list[Step]:
    stored = sum(o.size for o in manifest.objects)
    steps = []
    if manifest.encrypted:
        steps.append(Step("check-key", "check that the configured key opens the backup"))
    steps += [
        Step(
            "checksums",
            f"re-read {len(manifest.objects)} objects ({stored / 2**20:.1f} MiB) and compare "
            "their SHA-256 with the manifest",
        ),
        Step("create-database", f"create database {target}"),
        Step(
            "restore-data",
            f"stream schema and data into {target} (pg_restore; "
            f"{len(manifest.table_objects)} big table(s) {jobs} at a time)",
        ),
        Step("restore-post-data", f"build indexes and constraints (pg_restore -j {jobs})"),
        Step("validate", "run the booking invariants and compare row counts with the manifest"),
    ]
    if in_place:
        steps.append(
            Step(
                "swap",
                f"rename {current_db} to {current_db}_before_{suffix(manifest.id)} (kept) and "
                f"{target} to {current_db}",
            )
        )
    return steps


@contextmanager
def _step(steps: list[Step], name: str) -> Iterator[Step]:
    step = next(s for s in steps if s.name == name)
    started = time.monotonic()
    try:
        yield step
    except BaseException as err:
        step.status = "failed"
        step.detail = err.message if isinstance(err, PtoolError) else type(err).__name__
        raise
    finally:
        step.elapsed_s = round(time.monotonic() - started, 3)
    step.status = "done"


def run_invariants(conn: Any) -> dict[str, Any]:
    """The booking invariants as data. ``available: false`` (and ``ok``) when they cannot
    be checked with this role (row-level security would hide rows from it)."""
    from ptool_ops.booking.invariants import InvariantsUnavailable
    from ptool_ops.booking.invariants import run_invariants as check

    try:
        report = check(conn)
    except InvariantsUnavailable as err:
        return {"available": False, "ok": True, "violation_count": 0, "reason": str(err)}
    return {
        "available": True,
        **report.to_dict(),
        "ok": bool(report.ok),
        "violation_count": int(report.violation_count),
    }


def count_rows(url: SecretStr, manifest: BackupManifest, jobs: int = 1) -> list[str]:
    """Tables whose exact row count differs from the one counted at backup time
    (``jobs`` connections at a time, biggest tables first)."""
    from concurrent.futures import ThreadPoolExecutor

    from psycopg import sql

    tables = sorted((t for t in manifest.tables if t.rows is not None), key=lambda t: -t.bytes)

    def count(table: TableInfo) -> str | None:
        with pg.connect(url) as conn:
            conn.execute("SET row_security = off")
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(table.schema_name), sql.Identifier(table.name)
                )
            ).fetchone()
        found = int(row[0]) if row else -1
        if found == table.rows:
            return None
        return f"{table.schema_name}.{table.name}: {found} rows, expected {table.rows}"

    with ThreadPoolExecutor(max(jobs, 1), thread_name_prefix="count") as pool:
        return [m for m in pool.map(count, tables) if m is not None]


def create_database(url: SecretStr, name: str) -> None:
    from psycopg import errors, sql

    with pg.connect(url) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except errors.DuplicateDatabase:
            raise Conflict(
                f"database {name} already exists.",
                hint="Choose another --target-db, or drop it first.",
            ) from None


def drop_database(url: SecretStr, name: str) -> None:
    from psycopg import sql

    with pg.connect(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def restore_into(
    repo: Repository,
    manifest: BackupManifest,
    url: SecretStr,
    target: str,
    steps: list[Step],
    *,
    jobs: int,
    pg_bin_dir: Path | None,
    progress: Progress,
) -> None:
    """create-database → restore-data → restore-post-data (drops the target on failure)."""
    with pg.connect(url) as conn:
        facts = pg.server_facts(conn)
    tool = pg.find_tool(
        "pg_restore",
        server_major=max(facts.major, manifest.server_version_num // 10000),
        need_tls=pg.needs_tls(url),
        pg_bin_dir=pg_bin_dir,
    )
    with _step(steps, "create-database"):
        create_database(url, target)
    target_url = url_for(url, target)
    try:
        data = entry(manifest, "data")
        tables = [o for o in manifest.objects if o.key in manifest.table_objects]
        total = data.raw_size + sum(o.raw_size for o in tables)
        with _step(steps, "restore-data"):
            progress("restoring data", 0, total)
            # the schema and the small tables first (they create every table) ...
            chunks = repo.read_object(
                data, progress=offset_progress(progress, "restoring data", 0, total)
            )
            tools.restore(tool, target_url, [], chunks)
            # ... then each big table's rows, ``jobs`` streams at a time
            if tables:
                _parallel_tables(
                    repo, tool, target_url, tables, jobs, data.raw_size, total, progress
                )
        with _step(steps, "restore-post-data"):
            progress("building indexes", 0, 0)
            post = entry(manifest, "post-data")
            fd, name = tempfile.mkstemp(prefix="ptool-post-data-", suffix=".pgdump")
            try:
                with os.fdopen(fd, "wb") as handle:
                    for chunk in repo.read_object(post):
                        handle.write(chunk)
                tools.restore(tool, target_url, [f"--jobs={jobs}", name])
            finally:
                os.unlink(name)
    except BaseException:
        drop_database(url, target)
        raise


def _parallel_tables(
    repo: Repository,
    tool: pg.Tool,
    target_url: SecretStr,
    tables: list[ObjectEntry],
    jobs: int,
    base: int,
    total: int,
    progress: Progress,
) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    done: dict[str, int] = {}
    stop = threading.Event()

    def load(item: ObjectEntry) -> None:
        def update(raw: int, _stored: int) -> None:
            with lock:
                done[item.key] = raw
                now = base + sum(done.values())
            progress("restoring data", now, total)

        def chunks() -> Iterator[bytes]:
            for chunk in repo.read_object(item, progress=update):
                if stop.is_set():
                    raise OperationFailed("stopped because another table failed to restore.")
                yield chunk

        tools.restore(tool, target_url, [], chunks())

    with ThreadPoolExecutor(max(jobs, 1), thread_name_prefix="restore") as pool:
        futures = [pool.submit(load, item) for item in tables]
        try:
            for future in futures:
                future.result()
        except BaseException:
            stop.set()
            raise


def validate(
    url: SecretStr, target: str, manifest: BackupManifest, jobs: int = 1
) -> tuple[dict[str, Any], list[str]]:
    """Invariants on one connection while row counts run on ``jobs`` others."""
    from concurrent.futures import ThreadPoolExecutor

    target_url = url_for(url, target)

    def invariants() -> dict[str, Any]:
        with pg.connect(target_url) as conn:
            return run_invariants(conn)

    with ThreadPoolExecutor(1, thread_name_prefix="invariants") as pool:
        checked = pool.submit(invariants)
        mismatches = count_rows(target_url, manifest, jobs)
        return checked.result(), mismatches


def swap(url: SecretStr, current: str, restored: str, keep_as: str) -> None:
    """Put ``restored`` in place of ``current``, keeping ``current`` as ``keep_as``."""
    from psycopg import sql

    ident = sql.Identifier
    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
    allow = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}")
    with pg.connect(url, dbname="postgres") as conn:
        conn.execute(allow.format(ident(current), sql.SQL("false")))
        try:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (current,),
            )
            conn.execute(rename.format(ident(current), ident(keep_as)))
        except Exception:
            conn.execute(allow.format(ident(current), sql.SQL("true")))
            raise
        try:
            conn.execute(rename.format(ident(restored), ident(current)))
        except Exception as err:
            raise ManualActionRequired(
                f"the current database was renamed {keep_as}, but {restored} could not take "
                f"its name ({type(err).__name__}).",
                hint=f"Run ALTER DATABASE {restored} RENAME TO {current}; or, to go back, "
                f"ALTER DATABASE {keep_as} RENAME TO {current}; ALTER DATABASE {current} "
                "ALLOW_CONNECTIONS true;",
            ) from None
        conn.execute(allow.format(ident(keep_as), sql.SQL("true")))


def restore(
    settings: EnvironmentSettings,
    backup_id: str,
    *,
    target_db: str | None = None,
    in_place: bool = False,
    jobs: int = 2,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore a backup into a new database (default) or in place of the current one."""
    from ptool_ops.repo import for_settings
    from ptool_ops.targets import database_url

    report: Progress = progress or (lambda stage, done, total: None)
    repo = for_settings(settings)
    manifest = resolve(repo, backup_id)
    url = database_url(settings)
    current = str(pg._params(url).get("dbname") or manifest.database)
    if in_place and target_db:
        raise OperationFailed(
            "--in-place and --target-db exclude each other.",
            hint="Use --in-place to replace the environment's database, or --target-db NAME.",
        )
    target = (
        default_target(manifest, "restoring") if in_place else target_db or default_target(manifest)
    )
    steps = plan(manifest, target, in_place=in_place, jobs=jobs, current_db=current)
    result = RestoreResult(manifest.id, current if in_place else target, in_place, dry_run, steps)
    if dry_run:
        return result
    clock = time.monotonic()
    with audit.record(
        settings,
        "backup.restore",
        {"backup_id": manifest.id, "target": result.target_database, "in_place": in_place},
    ) as record:
        try:
            _run(repo, manifest, url, target, current, result, jobs, report, settings.pg_bin_dir)
        except ManualActionRequired:
            raise
        except PtoolError as err:
            failed = next((st.name for st in steps if st.status == "failed"), "a step")
            raise type(err)(
                f"restoring backup {manifest.id} failed at {failed}: "
                f"{err.message.rstrip('.')}; nothing was changed.",
                hint=err.hint,
            ) from None
        result.elapsed_s = round(time.monotonic() - clock, 3)
        record.details.update(
            {
                "ok": result.ok,
                "previous_database": result.previous_database,
                "elapsed_s": result.elapsed_s,
            }
        )
    return result


def _run(
    repo: Repository,
    manifest: BackupManifest,
    url: SecretStr,
    target: str,
    current: str,
    result: RestoreResult,
    jobs: int,
    report: Progress,
    pg_bin_dir: Path | None,
) -> None:
    """The plan's steps in order. A failure before the swap leaves nothing behind but a
    restored copy that failed validation (kept for inspection unless in place)."""
    steps = result.steps
    if manifest.encrypted:
        with _step(steps, "check-key"):
            for item in manifest.objects:
                repo.check_key(item)
    with _step(steps, "checksums"):
        total = sum(o.size for o in manifest.objects)
        done = 0
        for item in manifest.objects:
            repo.checksum(item, offset_progress(report, "checking", done, total))
            done += item.size
    restore_into(
        repo,
        manifest,
        url,
        target,
        steps,
        jobs=jobs,
        pg_bin_dir=pg_bin_dir,
        progress=report,
    )
    try:
        with _step(steps, "validate") as step:
            report("validating", 0, 0)
            result.invariants, result.row_count_mismatches = validate(url, target, manifest, jobs)
            result.row_counts_match = not result.row_count_mismatches
            result.ok = bool(result.invariants.get("ok")) and result.row_counts_match
            if not result.ok:
                step.detail = "; ".join(
                    result.row_count_mismatches
                    or [f"{result.invariants.get('violation_count')} invariant violation(s)"]
                )
        if not result.in_place:
            return
        if not result.ok:
            raise OperationFailed(
                f"the restored copy failed validation ({step.detail}); the current database "
                "was not touched",
                hint="Inspect the backup with 'ptool-ops backup verify --restore ID'.",
            )
        keep_as = f"{current}_before_{suffix(manifest.id)}"[:MAX_IDENTIFIER]
        with _step(steps, "swap"):
            swap(url, current, target, keep_as)
        result.previous_database = keep_as
    except ManualActionRequired:
        raise
    except BaseException:
        if result.in_place:
            drop_database(url, target)
        raise
