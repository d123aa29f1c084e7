"""``backup restore``: a plan of small steps, each one a function; printing it is the dry run.

Into a new database by default. ``in_place`` restores into a new database too, validates it,
and only then swaps names: the current database is kept as ``<db>_before_<id>`` — the way
back — and the restored one takes its name, under the migration run lock and with the API
in maintenance mode, in one transaction (:mod:`ptool_ops.backup.swap`). A failure before
the swap drops what was created, so nothing changes. A database being restored is marked
(its comment) and locked, so a killed restore's leftover is recognised and dropped by
the next run.

Steps: check-key → checksums → create-database → restore-data (pg_restore from the streams)
→ restore-post-data (indexes and constraints) → validate (invariants, row counts against the
manifest) → swap (in place only). The middle three run as one schedule on ``jobs`` workers
(:mod:`ptool_ops.backup.restore_plan`): a table's indexes are built, and its rows counted, as
soon as its rows are in, while other tables still load — as ``pg_restore -j N`` does.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ptool_ops import pg, privileges, tracing
from ptool_ops.audit import audited
from ptool_ops.backup import restore_plan, swap, tools
from ptool_ops.backup.listing import must_exist, resolve
from ptool_ops.backup.models import BackupManifest, RestoreResult, Step, TableInfo
from ptool_ops.errors import (
    Conflict,
    ManualActionRequired,
    OperationFailed,
    PtoolError,
    UsageError,
)
from ptool_ops.repo.manifest import ObjectEntry
from ptool_ops.repo.repository import Repository

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

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
        Step(
            "restore-post-data",
            "build each table's indexes and constraints as soon as its rows are in, "
            f"{jobs} at a time, then the rest (pg_restore -j {jobs})",
        ),
        Step(
            "validate",
            "compare row counts with the manifest and run the booking invariants, each as "
            "soon as what it reads is restored",
        ),
    ]
    if in_place:
        steps.append(
            Step(
                "swap",
                f"give {target} the settings and owner of {current_db}; under the migration "
                "lock, with the API in maintenance mode, rename "
                f"{current_db} to {keep_name(current_db, manifest)} (kept) and {target} to "
                f"{current_db} in one transaction",
            )
        )
    return steps


def keep_name(current: str, manifest: BackupManifest) -> str:
    """What an in-place restore keeps the replaced database as."""
    return f"{current}_before_{suffix(manifest.id)}"[:MAX_IDENTIFIER]


@contextmanager
def _step(steps: list[Step], name: str) -> Iterator[Step]:
    step = next(s for s in steps if s.name == name)
    started = time.monotonic()
    try:
        with tracing.span(name):
            yield step
    except BaseException as err:
        step.status = "failed"
        step.detail = err.message if isinstance(err, PtoolError) else type(err).__name__
        raise
    finally:
        step.elapsed_s = round(time.monotonic() - started, 3)
    step.status = "done"


def create_database(url: SecretStr, name: str, comment: str | None = None) -> None:
    """Create ``name`` with the database-level grants of the login's database (the roles
    that may connect to, and create in, the current one may do so in the restored one),
    and ``comment`` (the mark of a restore in progress)."""
    from psycopg import errors, sql

    with pg.connect(url) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except errors.DuplicateDatabase:
            raise Conflict(
                f"database {name} already exists.",
                hint=f"Drop it if nobody needs it (DROP DATABASE {name}), or give 'backup"
                " restore' another --target-db.",
            ) from None
        try:
            if comment is not None:
                conn.execute(
                    sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        sql.Identifier(name), sql.Literal(comment)
                    )
                )
            pg.copy_database_grants(conn, str(conn.info.dbname), name)
        except BaseException:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
            raise


def drop_database(url: SecretStr, name: str) -> None:
    from psycopg import sql

    with pg.connect(url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


#: invariants that read rows only: each runs as soon as the rows it reads are in, beside
#: the index builds; the others (catalog checks: row security, invalid objects) run last
DATA_CHECKS = (
    "no_overlapping_bookings",
    "tenant_rows_exist",
    "event_streams_contiguous",
    "foreign_keys_hold",
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
) -> tuple[dict[str, Any], list[str]]:
    """create-database → restore-data → restore-post-data → validate, as one schedule of
    ``jobs`` workers (see :mod:`ptool_ops.backup.restore_plan`); returns the invariants and the
    row count mismatches. The target carries the in-progress mark until the caller clears
    it. Drops the target on failure."""
    with pg.connect(url) as conn:
        facts = pg.server_facts(conn)
    tool = pg.find_tool(
        "pg_restore",
        server_major=max(facts.major, manifest.server_version_num // 10000),
        need_tls=pg.needs_tls(url),
        pg_bin_dir=pg_bin_dir,
    )
    with _step(steps, "create-database"):
        create_database(url, target, swap.INCOMPLETE.format(id=manifest.id))
    target_url = url_for(url, target)
    work = Path(tempfile.mkdtemp(prefix="ptool-restore-"))  # 0700: the post-data archive
    try:
        with _step(steps, "restore-post-data"):  # reads and splits the post-data archive
            tasks, outcome, stop = _tasks(repo, manifest, tool, target_url, work, jobs, progress)
        with tracing.span("schedule", tasks=len(tasks), jobs=jobs):
            _run_schedule(tasks, steps, jobs, stop)  # restore-data, -post-data, validate
        return outcome.invariants(), outcome.mismatches()
    except BaseException:
        drop_database(url, target)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _Outcome:
    """Validation results gathered from the tasks that produce them."""

    def __init__(self, tables: list[TableInfo]) -> None:
        self._order = {f"{t.schema_name}.{t.name}": n for n, t in enumerate(tables)}
        self._mismatches: dict[str, str] = {}
        self._results: list[Any] = []
        self._unavailable: str | None = None
        self._lock = threading.Lock()

    def mismatch(self, table: str, message: str) -> None:
        with self._lock:
            self._mismatches[table] = message

    def checks(self, conn: Any, names: list[str]) -> None:
        from ptool_ops.booking.invariants import InvariantsUnavailable
        from ptool_ops.booking.invariants import run_invariants as check

        try:
            report = check(conn, only=names)
        except InvariantsUnavailable as err:
            with self._lock:
                self._unavailable = str(err)
            return
        with self._lock:
            self._results.extend(report.results)

    def mismatches(self) -> list[str]:
        return [
            self._mismatches[t]
            for t in sorted(self._mismatches, key=lambda t: self._order.get(t, 0))
        ]

    def invariants(self) -> dict[str, Any]:
        from ptool_ops.booking.invariants import CHECKS, InvariantReport

        if self._unavailable is not None:
            return {
                "available": False,
                "ok": True,
                "violation_count": 0,
                "reason": self._unavailable,
            }
        rank = {check.name: n for n, check in enumerate(CHECKS)}
        report = InvariantReport(sorted(self._results, key=lambda r: rank[r.name]))
        return {
            "available": True,
            **report.to_dict(),
            "ok": bool(report.ok),
            "violation_count": int(report.violation_count),
        }


def _tasks(
    repo: Repository,
    manifest: BackupManifest,
    tool: pg.Tool,
    target_url: SecretStr,
    work: Path,
    jobs: int,
    progress: Progress,
) -> tuple[list[restore_plan.Task], _Outcome, threading.Event]:
    """The restore as tasks: load the data object, then each big table's stream, build
    the post-data entries per table as their rows arrive, validate as soon as possible."""
    from ptool_ops.booking.invariants import CHECKS, SCHEMA

    data = entry(manifest, "data")
    streams = {
        manifest.table_objects[o.key]: o
        for o in manifest.objects
        if o.key in manifest.table_objects
    }
    total = data.raw_size + sum(o.raw_size for o in streams.values())
    sizes = {f"{t.schema_name}.{t.name}": t.bytes for t in manifest.tables}
    lock = threading.Lock()
    done: dict[str, int] = {}
    stop = threading.Event()
    progress("restoring data", 0, total)

    def load(item: ObjectEntry) -> Callable[[], None]:
        def update(raw: int, _stored: int) -> None:
            with lock:
                done[item.key] = raw
                now = sum(done.values())
            progress("restoring data", now, total)

        def chunks() -> Iterator[bytes]:
            for chunk in repo.read_object(item, progress=update):
                if stop.is_set():
                    raise OperationFailed("stopped because another part of the restore failed.")
                yield chunk

        return lambda: tools.restore(tool, target_url, [], chunks())

    # post-data: the small archive on disk (0600, in our 0700 directory), split per table
    archive = work / "post-data.pgdump"
    with archive.open("wb") as handle:
        for chunk in repo.read_object(entry(manifest, "post-data")):
            handle.write(chunk)
    post = restore_plan.split_post_data(
        tools.describe(tool, ["--list", str(archive)]),
        tools.describe(tool, ["--file=-", str(archive)]),
        set(sizes) | set(streams),
    )

    tasks = [restore_plan.Task(restore_plan.DATA, "restore-data", run=load(data))]
    loads = restore_plan.load_tasks({t: o.raw_size for t, o in streams.items()}, post, sizes)
    objects = {restore_plan.load_name(t): o for t, o in streams.items()}
    for task in loads:
        task.run = load(objects[task.name])
    tasks += loads
    posts = restore_plan.post_tasks(post, set(streams), sizes)
    started = threading.Event()

    def build(args: list[str]) -> Callable[[], None]:
        def run() -> None:
            if not started.is_set():
                started.set()
                progress("building indexes", 0, 0)
            tools.restore(tool, target_url, [*args, str(archive)])

        return run

    for n, task in enumerate(posts):
        if task.name == restore_plan.REST:
            args = [f"--jobs={jobs}"]
            if not post.whole:
                listed = work / "rest.list"
                listed.write_text("\n".join(post.rest) + "\n")
                args.append(f"--use-list={listed}")
        else:
            listed = work / f"post-{n}.list"
            listed.write_text(post.items[n].line + "\n")
            args = [f"--use-list={listed}"]
        task.run = build(args)
    tasks += posts

    # validation: row counts once a table's rows are in, each row-only invariant once the
    # rows it reads are in, the catalog invariants at the very end
    outcome = _Outcome(manifest.tables)
    every = {t: restore_plan.ACCESS_SHARE for t in sizes}

    def loaded(tables: set[str]) -> frozenset[str]:
        return frozenset(
            {restore_plan.DATA, *(restore_plan.load_name(t) for t in tables & set(streams))}
        )

    for info in manifest.tables:
        if info.rows is None:
            continue
        name = f"{info.schema_name}.{info.name}"
        tasks.append(
            restore_plan.Task(
                f"count:{name}",
                "validate",
                frozenset({restore_plan.load_name(name) if name in streams else restore_plan.DATA}),
                {name: restore_plan.ACCESS_SHARE},
                (2, 0, -info.bytes),
                run=_counter(target_url, info, outcome),
            )
        )
    late = [c.name for c in CHECKS if c.name not in DATA_CHECKS]
    for n, check in enumerate(c for c in CHECKS if c.name in DATA_CHECKS):
        # the tables a check reads (a lock wait would only idle a worker); a tenant-wide
        # check reads every table of the schema
        reads = {f"{SCHEMA}.{name}" for name in check.requires}
        if check.name == "tenant_rows_exist" or not reads <= set(sizes):
            reads = {t for t in sizes if t.startswith(f"{SCHEMA}.")} or set(sizes)
        tasks.append(
            restore_plan.Task(
                f"check:{check.name}",
                "validate",
                loaded(reads),
                dict.fromkeys(reads, restore_plan.ACCESS_SHARE),
                (3, n, 0),
                run=_checker(target_url, [check.name], outcome),
            )
        )
    if late:
        tasks.append(
            restore_plan.Task(
                "check:catalog",
                "validate",
                loaded(set(streams)) | {t.name for t in posts},
                every,
                (4, 0, 0),
                run=_checker(target_url, late, outcome),
            )
        )

    return tasks, outcome, stop


def _run_schedule(
    tasks: list[restore_plan.Task], steps: list[Step], jobs: int, stop: threading.Event
) -> None:
    """Run ``tasks`` on ``jobs`` workers; each plan step's time runs from its first task's
    start to its last task's end (steps overlap). The first failure stops the streams,
    cancels what has not started and is raised (dropping the database ends the rest)."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    pending = list(tasks)
    running: dict[Future[None], restore_plan.Task] = {}
    done: set[str] = set()
    first: dict[str, float] = {}
    last: dict[str, float] = {}

    def timed(task: restore_plan.Task) -> None:
        assert task.run is not None
        first.setdefault(task.step, time.monotonic())
        task.run()

    pool = ThreadPoolExecutor(max(jobs, 1), thread_name_prefix="restore")
    failed: restore_plan.Task | None = None
    try:
        while pending or running:
            while len(running) < max(jobs, 1):
                task = restore_plan.pick(pending, running.values(), done)
                if task is None:
                    break
                pending.remove(task)
                running[pool.submit(timed, task)] = task
            if not running:
                names = ", ".join(t.name for t in pending)
                raise OperationFailed(f"the restore schedule cannot proceed ({names}).")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                err = future.exception()
                if err is not None:
                    failed = task
                    raise err
                done.add(task.name)
                last[task.step] = time.monotonic()
    except BaseException as err:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        name = failed.step if failed is not None else "restore-data"
        for step in steps:
            if step.name == name:
                step.status = "failed"
                step.detail = err.message if isinstance(err, PtoolError) else type(err).__name__
        raise
    pool.shutdown(wait=True)
    for step in steps:
        if step.name in first:
            step.elapsed_s = round(last.get(step.name, first[step.name]) - first[step.name], 3)
            step.status = "done"


def _counter(url: SecretStr, table: TableInfo, outcome: _Outcome) -> Callable[[], None]:
    from psycopg import sql

    def run() -> None:
        with pg.connect(url) as conn:
            conn.execute("SET row_security = off")
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(table.schema_name), sql.Identifier(table.name)
                )
            ).fetchone()
        found = int(row[0]) if row else -1
        if found != table.rows:
            name = f"{table.schema_name}.{table.name}"
            outcome.mismatch(name, f"{name}: {found} rows, expected {table.rows}")

    return run


def _checker(url: SecretStr, names: list[str], outcome: _Outcome) -> Callable[[], None]:
    def run() -> None:
        with pg.connect(url) as conn:
            outcome.checks(conn, names)

    return run


def restore(
    env: Environment,
    backup_id: str,
    *,
    target_db: str | None = None,
    in_place: bool = False,
    jobs: int = 2,
    dry_run: bool = False,
    progress: Progress | None = None,
    lock_wait_s: float | None = None,
    source: Environment | None = None,
) -> RestoreResult:
    """Restore a backup into a new database (default) or in place of the current one.
    ``lock_wait_s``: how long the swap waits for a running migration (default: the
    environment's ``migrate_lock_wait_s``). ``source``: the environment whose repository
    holds the backup (disaster recovery: prod's backup into dr's server); audited in
    ``env``'s trail, with the source named."""
    report: Progress = progress or (lambda stage, done, total: None)
    if in_place and target_db:
        raise UsageError(
            "--in-place and --target-db exclude each other.",
            hint="Use --in-place to replace the environment's database, or --target-db NAME.",
        )
    origin = source or env
    repo = origin.repository()
    manifest = resolve(repo, backup_id, must_exist=must_exist(origin))
    duty = "backup.restore_in_place" if in_place else "backup.restore"
    url = env.database(duty).url
    current = str(pg._params(url).get("dbname") or manifest.database)
    target = (
        default_target(manifest, "restoring") if in_place else target_db or default_target(manifest)
    )
    steps = plan(manifest, target, in_place=in_place, jobs=jobs, current_db=current)
    result = RestoreResult(manifest.id, current if in_place else target, in_place, dry_run, steps)
    if dry_run:
        return result
    with pg.connect(url) as conn:
        privileges.require(conn, duty)
    keep_as = keep_name(current, manifest)
    if in_place and swap.database_exists(url, keep_as):
        raise Conflict(
            f"backup {manifest.id} was already restored in place here: {keep_as}, the database "
            f"that swap replaced, still exists; nothing was changed.",
            hint=f"To restore it again, rename or drop {keep_as} first (ALTER DATABASE "
            f"{keep_as} RENAME TO ...). If the API is still in maintenance mode: "
            "ptool-ops api maintenance off",
        )
    if in_place:
        swap.check_maintenance(env)
    wait_s = env.settings.migrate_lock_wait_s if lock_wait_s is None else lock_wait_s
    clock = time.monotonic()

    def done() -> str:
        if in_place:
            return (
                f"backup {manifest.id} was restored in place of {current} (the previous "
                f"database is kept as {keep_as})"
            )
        return f"backup {manifest.id} was restored into {target}"

    with audited(
        env,
        "backup.restore",
        {
            "backup_id": manifest.id,
            "target": result.target_database,
            "in_place": in_place,
            "source_environment": origin.name,
            "source_repository": repo.url,
        },
        done=done,
    ) as record:
        with swap.target_lock(url, target, in_place_of=current if in_place else None):
            note = swap.clear_leftover(url, target, manifest.id)
            if note:
                result.notes.append(note)
            try:
                _run(env, repo, manifest, url, target, current, result, jobs, report, wait_s)
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
                "notes": result.notes,
            }
        )
    return result


def _run(
    env: Environment,
    repo: Repository,
    manifest: BackupManifest,
    url: SecretStr,
    target: str,
    current: str,
    result: RestoreResult,
    jobs: int,
    report: Progress,
    lock_wait_s: float,
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
    invariants, mismatches = restore_into(
        repo,
        manifest,
        url,
        target,
        steps,
        jobs=jobs,
        pg_bin_dir=env.pg_bin_dir,
        progress=report,
    )
    try:
        step = next(s for s in steps if s.name == "validate")
        result.invariants, result.row_count_mismatches = invariants, mismatches
        result.row_counts_match = not result.row_count_mismatches
        result.ok = bool(result.invariants.get("ok")) and result.row_counts_match
        if not result.ok:
            step.detail = "; ".join(
                result.row_count_mismatches
                or [f"{result.invariants.get('violation_count')} invariant violation(s)"]
            )
        if not result.in_place:
            comment = None if result.ok else swap.FAILED.format(id=manifest.id)
            swap.set_comment(url, target, comment)
            return
        if not result.ok:
            raise OperationFailed(
                f"the restored copy failed validation ({step.detail}); the current database "
                "was not touched",
                hint="Inspect the backup with 'ptool-ops backup verify --restore ID'.",
            )
        keep_as = keep_name(current, manifest)
        with _step(steps, "swap"):
            _swap(env, url, current, target, keep_as, manifest.id, lock_wait_s, result)
        result.previous_database = keep_as
    except ManualActionRequired:
        raise
    except BaseException:
        if result.in_place:
            drop_database(url, target)
        raise


def _swap(
    env: Environment,
    url: SecretStr,
    current: str,
    target: str,
    keep_as: str,
    backup_id: str,
    lock_wait_s: float,
    result: RestoreResult,
) -> None:
    from ptool_ops.migrate.run_lock import run_lock

    carried = swap.carry_over(url, current, target)
    if carried:
        result.notes.append("carried over: " + ", ".join(carried))
    swapped = False
    try:
        with (
            run_lock(
                url,
                wait_s=lock_wait_s,
                application_name=swap.SWAP_APPLICATION + " (migration lock)",
            ) as lock,
            swap.maintenance(env, f"restoring backup {backup_id} in place", result.notes),
        ):
            swap.rename_pair(url, current, target, keep_as, let_go=[lock])
            swapped = True
    except PtoolError as err:
        if not swapped:
            raise
        # the swap is committed: whatever failed after it (maintenance off) does not undo it
        raise ManualActionRequired(
            f"backup {backup_id} was restored in place of {current} (the previous database "
            f"is kept as {keep_as}), but {err.message.rstrip('.')}.",
            hint=err.hint,
        ) from None
