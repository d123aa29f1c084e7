"""``backup create``: pg_dump → zstd → (AES-256-GCM) → SHA-256 → repository, manifest last.

The fixed sequence (each step named in errors):

1. preflight — the login's privileges (:mod:`ptool_ops.privileges`: every row of every
   table, unfiltered), server facts and a pg_dump that fits (major ≥ server's, TLS for
   remote targets); the repository marker on a thread, which every object waits for before it
   first touches the repository, so the dump need not wait for it. The first object to be
   stored also takes the backup's **lease** (``backups/<id>/lease.json``,
   :mod:`ptool_ops.repo.lease`), refreshed on a thread until the end: ``prune`` leaves a
   leased backup alone however long it runs;
2. snapshot — on the same connection, a REPEATABLE READ transaction exports its snapshot,
   the start LSN and the schema version, and records per-table row estimates (and exact
   counts, on a thread, while the dump runs);
3. post-data — ``pg_dump -Fc --section=post-data`` (indexes, constraints, policies: small),
   stored as its own object so restore can run it with ``pg_restore -j``; on a thread,
   beside step 4;
4. data — ``pg_dump -Fc -Z0 --section=pre-data --section=data`` without the data of tables
   of ``split_bytes`` or more, and one ``pg_dump --section=data --table=T`` per such table,
   ``jobs`` streams at a time, so a restore can load them in parallel too;
5. the snapshot transaction ends (``finally``);
6. check — the lease is still ours and every object is in the repository with the size
   written (nothing pruned it meanwhile), else the backup fails unlisted;
7. manifest — written last: until then the backup is not listed anywhere; then the lease
   is deleted (also when anything failed: the leftovers become prune's).

Both dumps use the exported snapshot, so together they are one consistent image.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ptool_ops import pg, privileges, tracing
from ptool_ops.audit import audited
from ptool_ops.backup import tools
from ptool_ops.backup.listing import new_id
from ptool_ops.backup.models import (
    BackupManifest,
    CreateResult,
    TableInfo,
    backup_dir,
    lease_key,
    manifest_key,
)
from ptool_ops.errors import OperationFailed, PtoolError
from ptool_ops.repo.lease import Lease
from ptool_ops.repo.manifest import ObjectEntry
from ptool_ops.repo.repository import Repository
from ptool_ops.repo.storage import close_stream

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

#: (stage, raw bytes dumped, estimated total)
Progress = Callable[[str, int, int], None]

DUMP_ARGS = ["--format=custom", "--compress=0", "--no-sync"]

#: tables at least this big (heap + TOAST) get their own data object, dumped and restored
#: in parallel with the rest (``jobs`` streams at a time)
SPLIT_TABLE_BYTES = 32 * 1024 * 1024

_TABLES = """
SELECT n.nspname, c.relname, greatest(c.reltuples, 0)::bigint, pg_table_size(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r'
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1, 2
"""


def _ptool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ptool-ops")
    except PackageNotFoundError:
        return "unknown"


def _count_rows(conn: Any, tables: list[TableInfo], errors: list[BaseException]) -> None:
    from psycopg import sql

    try:
        for table in tables:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(table.schema_name), sql.Identifier(table.name)
                )
            ).fetchone()
            table.rows = int(row[0]) if row else None
    except BaseException as err:  # reported by the caller, on its thread
        errors.append(err)


def _pattern(table: TableInfo) -> str:
    """A pg_dump pattern matching exactly this table (quoted: no wildcards, any case)."""

    def quote(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    return f"{quote(table.schema_name)}.{quote(table.name)}"


def _stoppable(chunks: Iterator[bytes], stop: threading.Event) -> Iterator[bytes]:
    """Stop a stream (and so its pg_dump) when another stream of the backup failed."""
    try:
        for chunk in chunks:
            if stop.is_set():
                raise OperationFailed("stopped because another part of the backup failed.")
            yield chunk
    finally:
        close_stream(chunks)


class _RepoReady:
    """The repository's preflight (an S3 client, the marker), read-only, on its own thread
    while the dump starts. Every writer calls :meth:`wait` before it first touches the
    repository (``before_store``): nothing is stored unless the check passed, and a new
    repository gets its marker from the first writer, once, then the backup's lease. A
    backup that fails before it stores anything (an unreachable database, say) leaves the
    location as it was."""

    def __init__(self, repo: Repository, lease: Lease) -> None:
        self._repo = repo
        self._lease = lease
        checker = ThreadPoolExecutor(1, thread_name_prefix="repo-preflight")
        self._checked = checker.submit(repo.check_marker)
        checker.shutdown(wait=False)
        self._lock = threading.Lock()
        self._marked = False
        self._failed = False  # the marker could not be written

    def wait(self) -> None:
        present = self._checked.result()
        with self._lock:
            if self._marked:
                return
            try:
                if not present:
                    self._repo.write_marker()
                self._lease.create()  # before the first object: prune sees it running
            except BaseException:
                self._failed = True
                raise
            self._marked = True

    def failed(self) -> bool:
        """Whether the repository refused: its check or its marker failed."""
        return self._failed or (self._checked.done() and self._checked.exception() is not None)


class _Meter:
    """Sums the progress of concurrent streams."""

    def __init__(self, report: Callable[[int], None]) -> None:
        self._report = report
        self._done: dict[str, int] = {}
        self._lock = threading.Lock()

    def track(self, key: str) -> Callable[[int, int], None]:
        def update(raw: int, _stored: int) -> None:
            with self._lock:
                self._done[key] = raw
                total = sum(self._done.values())
            self._report(total)

        return update


def _check_stored(repo: Repository, lease: Lease, prefix: str, objects: list[ObjectEntry]) -> None:
    """Right before the manifest: the lease is still ours, and every object is there with
    the size written -- a backup whose objects went (a prune, an operator) is not listed."""
    lease.check()
    stored = {o.key: o.size for o in repo.storage.list(f"{prefix}/")}
    for item in objects:
        found = stored.get(item.key)
        if found != item.size:
            what = "is gone" if found is None else f"has {found} bytes, not {item.size}"
            raise OperationFailed(
                f"{item.key} {what} since it was written; the backup is not listed",
                hint="Something deleted or changed it (a prune without leases, an operator); "
                "run the backup again.",
            )


def create(
    env: Environment,
    *,
    progress: Progress | None = None,
    exact_counts: bool = True,
    jobs: int = 2,
    split_bytes: int = SPLIT_TABLE_BYTES,
) -> CreateResult:
    """Take a logical backup of the environment's database into its repository."""
    from ptool_ops.migrate.history import schema_version

    repo = env.repository()
    url = env.database("backup.create").url
    backup_id = new_id()
    report: Progress = progress or (lambda stage, done, total: None)
    step = "preflight"
    stop = threading.Event()  # set: every stream stops (a failure, a lost lease)
    lease = Lease(
        repo.storage, lease_key(backup_id), "backup create", on_lost=lambda _why: stop.set()
    )
    with (
        audited(
            env,
            "backup.create",
            {"backup_id": backup_id, "repository": repo.url},
            done=lambda: f"backup {backup_id} was created in {repo.url}",
        ) as entry,
        tracing.steps(step) as traced,
    ):
        try:
            started = datetime.now(UTC)
            clock = time.monotonic()
            repo_ready = _RepoReady(repo, lease)
            # one connection (a remote one costs a TLS handshake) serves the preflight and
            # then holds the snapshot
            snap = pg.connect(url, autocommit=False)
            counter: threading.Thread | None = None
            counter_errors: list[BaseException] = []
            try:
                privileges.require(snap, "backup.create")
                facts = pg.server_facts(snap)
                snap.rollback()
                tool = pg.find_tool(
                    "pg_dump",
                    server_major=facts.major,
                    need_tls=pg.needs_tls(url),
                    pg_bin_dir=env.pg_bin_dir,
                )

                step = traced("exporting the snapshot")
                snap.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                snap.execute("SET LOCAL row_security = off")
                row = snap.execute(
                    "SELECT pg_export_snapshot(), (CASE WHEN pg_is_in_recovery() "
                    "THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text"
                ).fetchone()
                assert row is not None
                snapshot, lsn = str(row[0]), row[1]
                schema = schema_version(snap)  # the dump's own, read in its snapshot
                tables = [
                    TableInfo(schema_name=s, name=n, row_estimate=int(r), bytes=int(b))
                    for s, n, r, b in snap.execute(_TABLES).fetchall()
                ]
                prefix = backup_dir(backup_id)
                snap_args = [*DUMP_ARGS, f"--snapshot={snapshot}"]

                step = traced("dumping")
                big = [t for t in tables if t.bytes >= split_bytes] if jobs > 1 else []
                big.sort(key=lambda t: -t.bytes)
                streams: list[tuple[str, list[str], str | None]] = [
                    (
                        f"{prefix}/data.pgdump.zst",
                        [
                            *snap_args,
                            "--section=pre-data",
                            "--section=data",
                            *(f"--exclude-table-data={_pattern(t)}" for t in big),
                        ],
                        None,
                    )
                ]
                streams += [
                    (
                        f"{prefix}/table-{n:03d}.pgdump.zst",
                        [*snap_args, "--section=data", f"--table={_pattern(t)}"],
                        f"{t.schema_name}.{t.name}",
                    )
                    for n, t in enumerate(big)
                ]
                # the biggest stream first (longest-processing-time order keeps the streams'
                # ends close together); the manifest keeps the order of ``streams``
                in_data = sum(t.bytes for t in tables) - sum(t.bytes for t in big)
                sizes = [in_data, *(t.bytes for t in big)]
                order = sorted(range(len(streams)), key=lambda i: -sizes[i])
                if exact_counts:
                    counter = threading.Thread(
                        target=_count_rows, args=(snap, tables, counter_errors), daemon=True
                    )
                    counter.start()
                report("dumping", 0, facts.size_bytes)
                meter = _Meter(lambda done: report("dumping", done, facts.size_bytes))

                def store(key: str, args: list[str]) -> ObjectEntry:
                    return repo.write_object(
                        key,
                        _stoppable(tools.dump(tool, url, args), stop),
                        progress=meter.track(key),
                        before_store=repo_ready.wait,
                    )

                # post-data (small) on its own thread; the data streams ``jobs`` at a time
                with (
                    ThreadPoolExecutor(1, thread_name_prefix="post-data") as side,
                    ThreadPoolExecutor(max(jobs, 1), thread_name_prefix="dump") as pool,
                ):
                    post_future = side.submit(
                        store, f"{prefix}/post-data.pgdump.zst", [*snap_args, "--section=post-data"]
                    )
                    submitted = {i: pool.submit(store, *streams[i][:2]) for i in order}
                    futures = [submitted[i] for i in range(len(streams))]
                    try:
                        step = traced("dumping the data")
                        data_objects = [f.result() for f in futures]
                        step = traced("dumping the post-data section")
                        post = post_future.result()
                    except BaseException:
                        stop.set()
                        if repo_ready.failed():
                            step = "preflight"  # the repository refused: say so, not "dumping"
                        raise
                table_objects = {key: table for (key, _, table) in streams if table is not None}
                if counter is not None:
                    step = traced("counting rows")
                    counter.join()
                    if counter_errors:
                        raise counter_errors[0]
            finally:
                if counter is not None and counter.is_alive():
                    snap.cancel_safe()  # a failed dump: stop counting, end the snapshot
                    counter.join()
                snap.rollback()
                snap.close()

            step = traced("checking the stored objects")
            repo_ready.wait()  # passed already: every object waited for it
            objects = [*data_objects, post]
            _check_stored(repo, lease, prefix, objects)

            step = traced("writing the manifest")
            manifest = BackupManifest(
                id=backup_id,
                environment=env.name,
                started_at=started,
                finished_at=datetime.now(UTC),
                tool_version=_ptool_version(),
                objects=objects,
                database=facts.database,
                server_version=facts.version,
                server_version_num=facts.version_num,
                pg_dump_version=tool.version,
                schema_version=schema,
                start_lsn=lsn,
                size_bytes=facts.size_bytes,
                tables=tables,
                table_objects=table_objects,
            )
            repo.storage.put_bytes(manifest_key(backup_id), manifest.to_json())
        except PtoolError as err:
            if lease.lost is not None:  # the root cause of every stream stopping
                err = OperationFailed(f"its lease was lost: {lease.lost}", hint=err.hint)
            raise type(err)(
                f"backup {backup_id} failed while {step}: {err.message.rstrip('.')}.",
                hint=err.hint,
            ) from None
        finally:
            lease.release()
        elapsed = round(time.monotonic() - clock, 3)
        result = CreateResult(
            id=backup_id,
            repository=repo.url,
            database=facts.database,
            raw_bytes=sum(o.raw_size for o in manifest.objects),
            stored_bytes=manifest.stored_bytes,
            elapsed_s=elapsed,
            encrypted=manifest.encrypted,
            pg_dump=tool.describe(),
            manifest=manifest_key(backup_id),
        )
        entry.details.update(
            {"database": facts.database, "stored_bytes": result.stored_bytes, "elapsed_s": elapsed}
        )
        return result
