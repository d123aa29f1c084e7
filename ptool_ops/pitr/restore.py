"""A point-in-time restore into a new data directory, started beside live, checked, and
left running -- live is not touched.

Before anything is created (:func:`plan`): the base backup (or incremental chain) is the
newest one that *ends* before the target -- by recorded LSN, time or transaction id, never
by name -- and the WAL from its start to the target is proven present on its timeline.
A target before the window, before every backup's end, after the newest WAL or on another
timeline is refused with one sentence.

Then (:func:`restore`): the chain is unpacked (``pg_combinebackup`` for an incremental
chain) into ``<restores>/<id>/pgdata``, the copy gets ``wal fetch`` from the live archive
as its restore_command and ``wal push`` into an archive of its own
(``pitr/restores/<id>/wal``) -- a restored cluster never writes into the live archive --
and starts on a free port with ``recovery_target_action = pause`` (``promote`` with
``--promote``). We watch it replay (LSN reached / target) until it pauses at the target;
a server that stops instead (the target not reached, a WAL file that failed its checks)
is reported with the server's own reason, never as a hang. The booking invariants and a
comparison with live run on the copy; its connection string is printed.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ptool_ops import pg, tracing
from ptool_ops.audit import audited
from ptool_ops.console import human_size
from ptool_ops.errors import (
    ConfigError,
    DatabaseUnavailable,
    OperationFailed,
    Refused,
    UsageError,
)
from ptool_ops.pitr import archive, base, commands, locks, wal, window
from ptool_ops.pitr.target import Target, format_lsn
from ptool_ops.repo.lease import Lease, holding

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.local.cluster import LocalServer
    from ptool_ops.repo.repository import Repository

#: called with (phase, detail)
Progress = Callable[[str, str], None]

STATE_FILE = "restore.json"
POINTS = "pitr/points"


def point_key(name: str) -> str:
    return f"{POINTS}/{name}.json"


@dataclass
class Plan:
    target: Target
    chain: list[str]
    backup_end_lsn: str
    backup_end_time: str
    timeline: int
    wal_from: str
    wal_to: str
    segments: int
    #: the LSN recovery must reach, when the target names one (an LSN, a restore point)
    target_lsn: str | None
    #: the archive's WAL segment size
    segment_size: int = 16 * 1024 * 1024
    #: the chain's manifests, full first (read once, by the plan)
    backups: list[base.BaseBackupManifest] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "backups"}
        return {**data, "target": self.target.to_dict()}


def _points(repo: Repository, name: str) -> dict[str, Any] | None:
    return repo.get_json(point_key(name))


def plan(repo: Repository, target: Target, *, now: datetime | None = None) -> Plan:
    """Choose the base backup and prove the WAL; raise :class:`Refused` with the reason."""
    listing = window.list_archive(repo)
    # only this archive's cluster: a repository can hold base backups of an earlier one
    system = listing.identity.system_identifier if listing.identity else None
    backups = [b for b in base.list_base_backups(repo) if b.system_identifier == system]
    if not backups:
        raise Refused(
            f"there is no base backup in {repo.url}, so no point can be restored.",
            hint="Take one with 'ptool-ops pitr base-backup'; it covers the time after it.",
        )
    size = listing.segment_size
    target_lsn: int | None = None
    if target.kind == "name":
        point = _points(repo, str(target.name))
        if point is None:
            raise Refused(
                f"restore point {target.name!r} is not recorded in {repo.url}.",
                hint="List them with 'ptool-ops pitr window'; a point made outside "
                "'ptool-ops pitr mark' can be reached with --lsn.",
            )
        target_lsn = int(point["lsn"])
    elif target.kind == "lsn":
        target_lsn = target.lsn
    moment = now or datetime.now(UTC)
    if target.kind == "time" and target.time is not None and target.time > moment:
        raise Refused(f"the target {target.describe()} is in the future.")

    def ends_before(b: base.BaseBackupManifest) -> bool:
        if target_lsn is not None:
            return b.end <= target_lsn
        if target.kind == "time" and target.time is not None:
            return b.end_time < target.time
        return target.xid is not None and b.next_xid <= target.xid

    usable = [b for b in backups if ends_before(b)]
    if not usable:
        first = backups[0]
        raise Refused(
            f"the target {target.describe()} is before the end of the oldest base backup "
            f"{first.id} (LSN {first.end_lsn}, {first.end_time.isoformat()}); PostgreSQL "
            "would ignore it.",
            hint="Nothing can be restored to before the oldest base backup's end; pick a "
            "later target.",
        )
    chosen = usable[-1]
    by_id = {b.id: b for b in backups}
    missing = [i for i in chosen.chain if i not in by_id]
    if missing:
        raise Refused(
            f"base backup {chosen.id} needs {', '.join(missing)}, which is not in {repo.url}.",
            hint="Its chain is broken; choose an older target or take a new full base backup.",
        )
    timeline = chosen.timeline
    have = listing.segments.get(timeline, {})
    start_segment = chosen.start // size
    if target_lsn is not None:
        last = target_lsn // size
        if not have or max(have) < last:
            newest = listing.name(timeline, max(have)) if have else "none"
            raise Refused(
                f"the target {target.describe()} is after the newest archived WAL on "
                f"timeline {timeline} (newest segment: {newest}).",
                hint="Wait for the archive to catch up (see 'ptool-ops pitr window'), or "
                "pick an earlier target.",
            )
    elif target.kind == "time" and target.time is not None:
        after = sorted(n for n, stamp in have.items() if n >= start_segment and stamp > target.time)
        if not after:
            newest_at = max(have.values()).isoformat() if have else "never"
            raise Refused(
                f"the target {target.describe()} is after the newest archived WAL on "
                f"timeline {timeline} (archived {newest_at}).",
                hint="Wait for the next segment to be archived (archive_timeout), or pick an "
                "earlier target.",
            )
        last = after[0]
    else:
        last = max(have) if have else start_segment
    if any(t > timeline for t in listing.segments) and target.kind != "lsn":
        later = max(listing.segments)
        if later > timeline and listing.segments[later] and min(listing.segments[later]) <= last:
            raise Refused(
                f"the archive holds timeline {later}, which branched before the target; "
                f"the target is on another timeline than base backup {chosen.id} "
                f"({timeline}).",
                hint="Take a base backup on the current timeline, or give --lsn on "
                f"timeline {timeline}.",
            )
    gaps = window.missing_between(listing, timeline, start_segment, last)
    if gaps:
        raise Refused(
            f"the WAL from base backup {chosen.id} to the target has a gap on timeline "
            f"{timeline}: {gaps[0].describe()}.",
            hint="No point after the gap can be restored from this archive; pick a target "
            "before it, or take a new base backup after it.",
        )
    return Plan(
        target=target,
        chain=chosen.chain,
        backup_end_lsn=chosen.end_lsn,
        backup_end_time=chosen.end_time.isoformat(),
        timeline=timeline,
        wal_from=listing.name(timeline, start_segment),
        wal_to=listing.name(timeline, last),
        segments=last - start_segment + 1,
        target_lsn=format_lsn(target_lsn) if target_lsn is not None else None,
        segment_size=size,
        backups=[by_id[i] for i in chosen.chain],
    )


@dataclass
class RestoreResult:
    id: str
    plan: Plan
    data_dir: str
    port: int
    url: SecretStr
    state: str  # paused (at the target) | promoted
    reached_lsn: str | None
    invariants: dict[str, Any]
    comparison: dict[str, Any] | None
    elapsed_s: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.invariants.get("ok"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ok": self.ok,
            "plan": self.plan.to_dict(),
            "data_dir": self.data_dir,
            "port": self.port,
            "connection": pg.describe(self.url),
            "state": self.state,
            "reached_lsn": self.reached_lsn,
            "invariants": self.invariants,
            "comparison": self.comparison,
            "elapsed_s": self.elapsed_s,
        }


def restores_dir(env: Environment) -> Path:
    """Where restored copies live: beside the local directory (``.ptool/restores``)."""
    return env.settings.local_dir.parent / "restores"


def _server(root: Path) -> LocalServer:
    from ptool_ops.local.cluster import LocalServer

    return LocalServer(root)


def _share_archive(repo: Repository, server: LocalServer) -> None:
    """A file repository's ``pitr/restores`` must be the server's to write (its archive
    goes there); a prune that removed the last restored archive removed the directory."""
    from ptool_ops.repo.file import FileStorage

    if isinstance(repo.storage, FileStorage):
        server.share_with_server(repo.storage.root / locks.RESTORES)


def _key_file(env: Environment, root: Path, server: LocalServer) -> Path | None:
    key = env.backup_key()
    return server.write_key_file(root / "wal.key", key) if key is not None else None


_FATAL = re.compile(r"(FATAL|PANIC):\s+(.*)")


def _server_reason(log: Path) -> str:
    """The server's own reason for stopping (its last FATAL line, and the WAL command's
    complaint before it)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no server log"
    fatal = [m.group(2) for line in lines if (m := _FATAL.search(line))]
    ours = [line.split("ptool-ops wal fetch: ", 1)[1] for line in lines if "wal fetch: " in line]
    reason = fatal[-1] if fatal else (lines[-1] if lines else "no message")
    if ours:
        reason += f" (the restore command said: {ours[-1]})"
    return reason.rstrip(".")


def _copy_url(env: Environment, port: int) -> SecretStr:
    """The operator's login, pointed at the copy (same roles and passwords as at the target)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    login = env.database("pitr.restore")
    params = conninfo_to_dict(login.url.get_secret_value())
    params.update(host="127.0.0.1", port=str(port), sslmode="disable")
    params.pop("hostaddr", None)
    params.setdefault("application_name", "ptool-ops pitr")
    return SecretStr(make_conninfo("", **{k: v for k, v in params.items() if v is not None}))


class _QuietAfterTarget(Exception):
    """Recovery to a time ended at the archive's end without seeing a commit after the
    target: nothing committed between the last transaction and the target, so the end of
    the archived WAL is the state at the target."""

    def __init__(self, lsn: str) -> None:
        super().__init__(lsn)
        self.lsn = lsn


_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")


def _ended_quietly(log: Path, target: Target) -> str | None:
    """The LSN replay ended at, when a time target was not reached only because no
    transaction committed after it (PostgreSQL stops a time target at the first commit
    after it; an idle database never writes one)."""
    if target.kind != "time":
        return None
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    tail = text[text.rfind("starting point-in-time recovery") :]
    if "recovery ended before configured recovery target was reached" not in tail:
        return None
    if "wal fetch: " in tail:  # a WAL file failed its checks: never a quiet end
        return None
    done = _REDO_DONE.findall(tail)
    return done[-1] if done else None


def _check_replayed_all(repo: Repository, plan_: Plan, lsn: str, log: Path) -> None:
    """A quiet end is the target's state only if replay used the whole archive: it ended
    in the newest archived segment of its timeline, with no gap before it."""
    from ptool_ops.pitr.target import parse_lsn

    listing = window.list_archive(repo)
    have = listing.segments.get(plan_.timeline, {})
    ended = parse_lsn(lsn) // listing.segment_size
    first = archive.Segment.parse(plan_.wal_from, listing.segment_size)
    gaps = window.missing_between(listing, plan_.timeline, first.number, ended) if first else []
    if not have or ended < max(have) or gaps:
        newest = listing.name(plan_.timeline, max(have)) if have else "-"
        where = gaps[0].describe() if gaps else f"the archive goes on to {newest}"
        raise OperationFailed(
            f"the restored server's recovery ended at {lsn} before {plan_.target.describe()}, "
            f"short of the archive ({where}).",
            hint=f"Live was not touched. See 'ptool-ops pitr window' and the copy's log {log}; "
            "remove the copy with 'ptool-ops pitr drop'.",
        )


def _watch(
    server: LocalServer, url: SecretStr, plan_: Plan, timeout_s: float, report: Progress
) -> tuple[str, str | None]:
    """Wait for the copy to pause at the target (or end recovery when promoting)."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    last_lsn: str | None = None
    want = plan_.target_lsn or plan_.target.describe()
    born = time.monotonic()
    seen_running = False
    while time.monotonic() < deadline:
        running = server.state().running
        seen_running = seen_running or running
        if not running and not seen_running and time.monotonic() - born < 30:
            time.sleep(0.2)  # pg_ctl returned before the postmaster wrote its pid file
            continue
        if not running:
            quiet = _ended_quietly(server.paths.log, plan_.target)
            if quiet is not None:
                raise _QuietAfterTarget(quiet)
            raise OperationFailed(
                f"the restored server stopped before reaching {plan_.target.describe()}: "
                f"{_server_reason(server.paths.log)}.",
                hint=f"Live was not touched. The copy's log is {server.paths.log}; remove the "
                "copy with 'ptool-ops pitr drop'.",
            )
        try:
            conn = pg.connect(url, connect_timeout=3)
        except (DatabaseUnavailable, psycopg.OperationalError) as err:
            if "password authentication failed" in str(err) or "does not exist" in str(err):
                raise OperationFailed(
                    f"the restored server refuses the operator's login: {err}",
                    hint="The role or its password differed at the target; connect with "
                    "the credentials of that time.",
                ) from None
            report("starting", "waiting for the restored server to reach a consistent state")
            time.sleep(0.2)
            continue
        with conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery()"
                " THEN pg_get_wal_replay_pause_state() END, pg_last_wal_replay_lsn()::text"
            ).fetchone()
        assert row is not None
        in_recovery, pause_state, lsn = bool(row[0]), str(row[1]), row[2]
        last_lsn = lsn or last_lsn
        if not in_recovery:
            return "promoted", last_lsn
        if pause_state == "paused":
            return "paused", last_lsn
        report("replaying", f"WAL replayed to {lsn or '?'} (target {want})")
        time.sleep(0.2)
    raise OperationFailed(
        f"the restored server did not reach {plan_.target.describe()} within "
        f"{int(timeout_s)} s (replayed to {last_lsn or 'nothing yet'}).",
        hint="It is still running; watch its log, or give a longer --timeout.",
    )


def restore(
    env: Environment,
    target: Target,
    *,
    promote: bool = False,
    timeout_s: float = 3600.0,
    compare_live: bool = True,
    progress: Progress | None = None,
    restore_id: str | None = None,
) -> RestoreResult:
    """Restore the environment's server to ``target`` into a new data directory (named
    ``restore_id``, a new id by default: a caller that must clean up after a failure
    chooses it)."""
    from ptool_ops.backup.listing import new_id

    report: Progress = progress or (lambda phase, detail: None)
    repo = env.repository()
    restore_id = restore_id or new_id()
    root = restores_dir(env) / restore_id
    if root.exists():
        raise UsageError(f"{root} already exists.", hint="Run the command again.")
    # held until the copy has reached its target: a prune deletes nothing meanwhile (the
    # plan's chain and WAL); written before the plan is made, so the plan stays true
    lease = Lease(repo.storage, locks.restore_lease_key(restore_id), "pitr restore")
    with holding(lease.create()):
        locks.wait_for_prune(repo, f"restore {restore_id}")
        return _restore(
            env, repo, target, restore_id, root, promote, timeout_s, compare_live, report
        )


def _prefetch_first_segments(
    server: LocalServer, repo: Repository, plan_: Plan, key_file: Path | None, spool: Path
) -> None:
    """Start the restore command's prefetcher while the base backup unpacks, so recovery
    finds its first segments in the spool (each segment it does not find there costs an
    interpreter's start-up). Only a speed-up: a prefetcher that cannot start is ignored."""
    first = archive.Segment.parse(plan_.wal_from, plan_.segment_size)
    if first is None or first.number == 0:
        return
    before = archive.Segment(first.timeline, first.number - 1).name(plan_.segment_size)
    with contextlib.suppress(OSError):
        server.spawn(
            commands.prefetch_command(repo.url, after=before, spool=spool, key_file=key_file)
        )


def _restore(
    env: Environment,
    repo: Repository,
    target: Target,
    restore_id: str,
    root: Path,
    promote: bool,
    timeout_s: float,
    compare_live: bool,
    report: Progress,
) -> RestoreResult:
    from ptool_ops.booking.invariants import run_invariants_concurrently
    from ptool_ops.local.cluster import _free_port
    from ptool_ops.pitr.compare import compare

    with tracing.span("plan"):
        the_plan = plan(repo, target)
    clocks: dict[str, float] = {}
    with (
        audited(
            env,
            "pitr.restore",
            {"restore_id": restore_id, "plan": the_plan.to_dict(), "data_dir": str(root)},
            done=lambda: f"the copy {restore_id} was restored to {target.describe()}",
        ) as entry,
        tracing.steps("fetch") as traced,
    ):
        started = time.monotonic()
        chain = the_plan.backups
        server = _server(root)
        server.paths.root.mkdir(parents=True)
        _write_state(root, restore_id, env, the_plan, 0, "fetching")  # 'pitr drop' finds it
        key_file = _key_file(env, root, server)
        spool = root / "spool"
        server.share_with_server(spool)  # the prefetcher runs as the server's user
        _prefetch_first_segments(server, repo, the_plan, key_file, spool)
        report("fetching", f"base backup {' + '.join(the_plan.chain)}")
        base.materialise(
            repo,
            chain,
            server.paths.pgdata,
            progress=lambda phase, done, total: report(
                phase,
                f"{human_size(done)} of {human_size(total)} unpacked"
                if phase == "fetching"
                else "the incremental chain (pg_combinebackup)",
            ),
        )
        clocks["fetch"] = round(time.monotonic() - started, 3)
        traced("start")
        _share_archive(repo, server)
        server.archive_command = commands.archive_command(
            repo.url, key_file=key_file, archive_name=archive.restore_archive(restore_id)
        )
        server.extra_settings = {
            "restore_command": commands.restore_command(repo.url, key_file=key_file, spool=spool),
            **target.server_settings(),
            "recovery_target_action": "promote" if promote else "pause",
            "recovery_target_timeline": str(the_plan.timeline),
            "hot_standby": "on",
        }
        server.adopt()
        (server.paths.pgdata / "recovery.signal").touch()
        server.give_to_server(server.paths.pgdata / "recovery.signal")
        port = _free_port()
        url = _copy_url(env, port)
        _write_state(root, restore_id, env, the_plan, port, "recovering")
        report("starting", f"restored server on 127.0.0.1:{port}")
        traced("replay")
        replay_clock = time.monotonic()
        server.start("", port, wait=False)
        try:
            state, reached = _watch(server, url, the_plan, timeout_s, report)
        except _QuietAfterTarget as quiet:
            _check_replayed_all(repo, the_plan, quiet.lsn, server.paths.log)
            # the same state, at an LSN PostgreSQL can stop at: restart to it (the copy
            # shut down still in recovery, so it picks up where it stopped)
            report("replaying", f"no commit after the target; stopping at {quiet.lsn}")
            for key in list(server.extra_settings):
                if key.startswith("recovery_target_") and key not in (
                    "recovery_target_action",
                    "recovery_target_timeline",
                ):
                    del server.extra_settings[key]
            server.extra_settings["recovery_target_lsn"] = quiet.lsn
            server.start("", port, wait=False)
            the_plan.target_lsn = quiet.lsn
            state, reached = _watch(server, url, the_plan, timeout_s, report)
        clocks["replay"] = round(time.monotonic() - replay_clock, 3)
        report("checking", "booking invariants and the comparison with live")
        traced("check")
        check_clock = time.monotonic()
        # the copy is paused at its target: nothing writes, so the checks may run side by
        # side, one on each core, each on a connection of its own
        invariants = run_invariants_concurrently(lambda: pg.connect(url)).to_dict()
        comparison = None
        if compare_live:
            with pg.connect(url) as copy, env.database("pitr.restore").connect() as live:
                comparison = compare(live, copy).to_dict()
        clocks["check"] = round(time.monotonic() - check_clock, 3)
        clocks["total"] = round(time.monotonic() - started, 3)
        _write_state(root, restore_id, env, the_plan, port, state)
        result = RestoreResult(
            id=restore_id,
            plan=the_plan,
            data_dir=str(server.paths.pgdata),
            port=port,
            url=url,
            state=state,
            reached_lsn=reached,
            invariants=invariants,
            comparison=comparison,
            elapsed_s=clocks,
        )
        entry.details.update(
            {"state": state, "reached_lsn": reached, "ok": result.ok, "elapsed_s": clocks}
        )
        return result


def _write_state(
    root: Path, restore_id: str, env: Environment, plan_: Plan, port: int, state: str
) -> None:
    from ptool_ops.files import atomic_write

    data = {
        "id": restore_id,
        "environment": env.name,
        "port": port,
        "state": state,
        "plan": plan_.to_dict(),
        "archive": archive.restore_archive(restore_id),
        "updated_at": datetime.now(UTC).isoformat(),
    }
    atomic_write(root / STATE_FILE, json.dumps(data, indent=2) + "\n", mode=0o644)


def find_copy(env: Environment, restore_id: str) -> tuple[Path, dict[str, Any]]:
    root = restores_dir(env) / restore_id
    try:
        data = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"there is no restored copy {restore_id!r} in {restores_dir(env)}.",
            hint="The id is printed by 'ptool-ops pitr restore'.",
        ) from None
    return root, data


def refuse_while_replaying(conn: Any, restore_id: str) -> None:
    """A copy still replaying towards its target (not paused there) must not be promoted:
    recovery would end short of the target."""
    row = conn.execute(
        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_get_wal_replay_pause_state() END"
    ).fetchone()
    if row is not None and row[0] is not None and row[0] != "paused":
        raise Refused(
            f"the restored copy {restore_id} is still replaying WAL towards its target; "
            "ending recovery now would stop it short.",
            hint="Wait until 'ptool-ops pitr restore' reports it paused at the target.",
        )


def promote(env: Environment, restore_id: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
    """End recovery of a restored copy: it becomes a writable server on a new timeline
    (archiving into its own archive). Live is not touched."""
    root, data = find_copy(env, restore_id)
    server = _server(root)
    if not server.state().running:
        raise OperationFailed(
            f"the restored copy {restore_id} is not running.",
            hint=f"Start it with pg_ctl -D {server.paths.pgdata} start, or restore again.",
        )
    url = _copy_url(env, int(data["port"]))
    with pg.connect(url) as conn:
        refuse_while_replaying(conn, restore_id)
    with audited(
        env,
        "pitr.promote",
        {"restore_id": restore_id, "data_dir": str(server.paths.pgdata)},
        done=lambda: f"the copy {restore_id} was promoted",
    ):
        server._pg_ctl("promote", "-w", "-t", str(int(timeout_s)))
        with pg.connect(url) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            timeline = archive.current_timeline(conn)
        assert row is not None
        data["state"] = "promoted" if not row[0] else "recovering"
        data["timeline"] = timeline
        from ptool_ops.files import atomic_write

        atomic_write(root / STATE_FILE, json.dumps(data, indent=2) + "\n", mode=0o644)
    return data


def retire(repo: Repository, restore_id: str, reason: str) -> bool:
    """Mark a restored copy's archive ``pitr/restores/<id>/`` as no longer needed, so
    'pitr prune' may delete it; False when the repository could not be written."""
    from ptool_ops.errors import PtoolError

    try:
        repo.put_json(
            locks.retired_key(restore_id),
            {"id": restore_id, "reason": reason, "at": datetime.now(UTC).isoformat()},
        )
    except PtoolError:
        return False
    return True


_RESTORE_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{4}$")


def drop(env: Environment, restore_id: str) -> dict[str, Any]:
    """Stop a restored copy, mark its archive prefix retired (prune deletes it then) and
    delete its directory. A copy that is not on this machine but whose archive prefix is
    in the repository only gets the mark: the operator says it is gone."""
    repo = env.repository()
    try:
        root, data = find_copy(env, restore_id)
    except ConfigError:
        if not _RESTORE_ID.match(restore_id) or not any(
            repo.storage.list(f"{locks.restore_prefix(restore_id)}/")
        ):
            raise
        with audited(
            env,
            "pitr.drop",
            {"restore_id": restore_id, "data_dir": None},
            done=lambda: f"the archive of copy {restore_id} was marked for prune",
        ):
            if not retire(repo, restore_id, "dropped"):
                raise OperationFailed(
                    f"cannot mark {repo.url}/{locks.restore_prefix(restore_id)}/ as retired.",
                    hint="Check the repository and run 'ptool-ops pitr drop' again.",
                ) from None
        return {"id": restore_id, "removed": None, "archive_retired": True}
    server = _server(root)
    with audited(
        env,
        "pitr.drop",
        {"restore_id": restore_id, "data_dir": str(root)},
        done=lambda: f"the copy {restore_id} was removed",
    ) as entry:
        server.stop("immediate")
        # after the stop: nothing archives into the prefix any more (a copy that replaced
        # live was retired then)
        retired = data.get("state") == "replaced" or retire(repo, restore_id, "dropped")
        entry.details["archive_retired"] = retired
        # the copy's restore_command may have left a prefetcher filling its spool
        if not wal.stop_prefetch(root / "spool"):
            raise OperationFailed(
                f"the copy {restore_id} was stopped, but the WAL prefetcher of its restore"
                f" command still writes into {root / 'spool'}, so it was not removed.",
                hint="Run 'ptool-ops pitr drop' again in a minute.",
            )
        shutil.rmtree(root)
    return {"id": restore_id, "removed": str(root), "archive_retired": retired}


def mark(env: Environment, name: str) -> dict[str, Any]:
    """``pg_create_restore_point(name)``, then close its WAL segment so the archive holds
    it; the point (LSN, time, timeline) is recorded in the repository."""
    from ptool_ops import privileges

    if not name or len(name) > 63 or not name.isprintable():
        raise UsageError(
            f"{name!r} is not a restore point name.", hint="Use at most 63 printable characters."
        )
    repo = env.repository()
    if repo.get_json(point_key(name)) is not None:
        raise Refused(
            f"restore point {name!r} already exists in {repo.url}.",
            hint="Restore point names must be unique (PostgreSQL recovers to the first one).",
        )
    login = env.database("pitr.mark")
    with audited(
        env, "pitr.mark", {"name": name}, done=lambda: f"restore point {name!r} was made"
    ) as entry:
        # the WAL is the server's: in the maintenance database, where the grants are
        with login.connect(autocommit=True, dbname="postgres") as conn:
            privileges.require(conn, "pitr.mark")
            row = conn.execute(
                "SELECT pg_create_restore_point(%s)::text, now()", (name,)
            ).fetchone()
            assert row is not None
            timeline = archive.current_timeline(conn)
            conn.execute("SELECT pg_switch_wal()")
        from ptool_ops.pitr.target import parse_lsn

        point = {
            "name": name,
            "lsn": parse_lsn(str(row[0])),
            "lsn_text": str(row[0]),
            "time": row[1].isoformat(),
            "timeline": timeline,
        }
        repo.put_json(point_key(name), point)
        entry.details.update(point)
    return point
