"""``pitr promote ID --replace``: a restored copy, checked beside live, becomes live.

Only where ptool-ops drives the server (the ``local`` environment); a server we do not
manage is its administrator's to replace (:func:`plan_replace` refuses and says how).

Preflight, before anything changes (:func:`plan_replace`): the copy runs and belongs to
the archive's cluster, live has a data directory on the same file system (the move is a
rename), and the copy's timeline is new to the live archive. Then (:func:`replace`), each
step named so a failure says where it happened:

1. the copy is promoted if it is still in recovery (paused at its target), then stopped
   (its last segments archived into its own prefix);
2. live is stopped; its data directory is renamed ``pgdata.replaced-<time>`` (kept);
3. the copy's data directory is moved into live's place and started on live's port with
   archiving *held* (``archive_mode = on``, an empty ``archive_command``: PostgreSQL keeps
   every finished segment until a command is set); the login, the timeline and the booking
   invariants are checked;
4. the new timeline's WAL -- its history file (from the copy's ``pg_wal``) and what the
   copy archived into its own prefix -- is copied into the live archive (identical copies
   pass, different ones refuse), and the server is restarted archiving there: the new
   timeline continues the live archive;
5. the copy's prefix is marked retired (prune deletes it), its state says "replaced".

A failure after live was stopped puts it back: the new server stopped, the copy's data
directory moved back, the new timeline's segments this attempt put into the live archive
removed (its history file stays: history is never deleted), the old data directory renamed
back and started -- and says so (exit 8). If putting it back fails too, the error says
what to do by hand (exit 9).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptool_ops import pg
from ptool_ops.audit import audited
from ptool_ops.errors import (
    ManualActionRequired,
    OperationFailed,
    PtoolError,
    Refused,
    UsageError,
)
from ptool_ops.pitr import archive, restore
from ptool_ops.pitr.wal import read_identity
from ptool_ops.repo.errors import ObjectMissing

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.local.cluster import LocalServer
    from ptool_ops.local.env import LocalEnvironment
    from ptool_ops.repo.repository import Repository

#: called with (phase, detail)
Progress = Callable[[str, str], None]


@dataclass
class ReplacePlan:
    restore_id: str
    copy_data_dir: Path
    copy_port: int
    #: paused / recovering (promoted by the step) or promoted
    copy_state: str
    copy_timeline: int
    live_data_dir: Path
    live_port: int
    live_running: bool
    live_timeline: int | None
    #: where live's data directory is kept
    keep_as: Path
    system_identifier: str

    def describe(self) -> str:
        if self.copy_state == "promoted":
            what = f"make the restored copy {self.restore_id} live"
        else:
            what = f"end recovery of the restored copy {self.restore_id} and make it live"
        return (
            f"{what}: live ({self.live_data_dir}, port {self.live_port}) is stopped and kept "
            f"as {self.keep_as}; what live wrote after the copy's target is not in the copy"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


@dataclass
class ReplaceResult:
    restore_id: str
    data_dir: str
    old_data_dir: str
    port: int
    timeline: int
    promoted_now: bool
    wal_copied: list[str]
    invariants: dict[str, Any]
    elapsed_s: float
    next_steps: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.invariants.get("ok"))

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _live(env: Environment) -> LocalEnvironment:
    from ptool_ops.local.env import LocalEnvironment

    return LocalEnvironment(
        env.settings.local_dir, repo_url=env.repo_url, backup_key=env.backup_key()
    )


def _copy_facts(env: Environment, restore_id: str, port: int) -> tuple[bool, int, str]:
    """(in recovery, timeline, system identifier) of the running copy; refused while it
    still replays towards its target."""
    with pg.connect(restore._copy_url(env, port)) as conn:
        restore.refuse_while_replaying(conn, restore_id)
        row = conn.execute(
            "SELECT pg_is_in_recovery(),"
            " (SELECT system_identifier::text FROM pg_catalog.pg_control_system())"
        ).fetchone()
        timeline = archive.current_timeline(conn)
    assert row is not None
    return bool(row[0]), timeline, str(row[1])


def _refuse_unmanaged(env: Environment) -> Refused:
    return Refused(
        f"ptool-ops does not run the server of {env.name!r} (kind {env.kind!r}), so it cannot "
        "replace its data directory; its administrator must do that step.",
        hint="Promote the copy ('ptool-ops pitr promote ID'); then either point the "
        "application at it, or stop the server, keep its data directory, move the copy's "
        "data directory into its place, set archive_command to what 'ptool-ops pitr "
        "archive-command' prints, start it and take a base backup ('ptool-ops pitr "
        "base-backup').",
    )


def plan_replace(env: Environment, restore_id: str) -> ReplacePlan:
    """Everything :func:`replace` needs, checked; nothing is changed."""
    if env.kind == "neon":
        raise UsageError(
            "on Neon a branch is restored in place with 'pitr restore --to TIME --apply'; "
            "--replace is for a self-managed server's restored copy."
        )
    if not env.is_local:
        raise _refuse_unmanaged(env)
    root, data = restore.find_copy(env, restore_id)
    if data.get("state") == "replaced":
        raise Refused(f"the restored copy {restore_id} has replaced live already.")
    copy = restore._server(root)
    if not copy.state().running:
        raise OperationFailed(
            f"the restored copy {restore_id} is not running, so it cannot be checked.",
            hint=f"Start it with pg_ctl -D {copy.paths.pgdata} start, or restore again.",
        )
    live = _live(env)
    state = live.server.state()
    if not state.initialised or state.port is None:
        raise Refused(
            f"there is no live data directory in {live.paths.pgdata} to replace.",
            hint="Start the local environment first ('ptool-ops local up').",
        )
    if os.stat(copy.paths.pgdata).st_dev != os.stat(live.paths.root).st_dev:
        raise Refused(
            f"the copy's data directory {copy.paths.pgdata} is on another file system than "
            f"{live.paths.root}; it cannot be moved into place by a rename.",
        )
    in_recovery, timeline, system = _copy_facts(env, restore_id, int(data["port"]))
    repo = env.repository()
    identity = read_identity(repo)
    if identity is None or identity.system_identifier != system:
        raise Refused(
            f"the copy {restore_id} is system {system}, but the live archive "
            f"belongs to {identity.describe() if identity else 'no cluster'}.",
            hint="Restore again from this archive.",
        )
    live_timeline = None
    if state.running:
        with env.database("pitr.restore").connect() as conn:
            live_timeline = archive.current_timeline(conn)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    keep_as = live.paths.pgdata.with_name(f"{live.paths.pgdata.name}.replaced-{stamp}")
    the_plan = ReplacePlan(
        restore_id=restore_id,
        copy_data_dir=copy.paths.pgdata,
        copy_port=int(data["port"]),
        copy_state="recovering" if in_recovery else "promoted",
        copy_timeline=timeline,
        live_data_dir=live.paths.pgdata,
        live_port=state.port,
        live_running=state.running,
        live_timeline=live_timeline,
        keep_as=keep_as,
        system_identifier=system,
    )
    if not in_recovery:
        _check_timeline(repo, the_plan)
    return the_plan


def _check_timeline(repo: Repository, plan: ReplacePlan) -> None:
    """The copy's timeline must be new to the live archive (two copies promoted from one
    archive both take the next timeline: only one can become live)."""
    timeline = plan.copy_timeline
    if plan.live_timeline is not None and plan.live_timeline >= timeline:
        raise Refused(
            f"the copy {plan.restore_id} is on timeline {timeline}, live on "
            f"{plan.live_timeline}: the copy's would not continue the live archive.",
            hint="Restore again from the current timeline and replace with that copy.",
        )
    if any(repo.storage.list(f"{archive.prefix()}/{timeline:08X}/")):
        raise Refused(
            f"the live archive already holds WAL of timeline {timeline}, written by another "
            f"server; the copy {plan.restore_id} cannot continue it.",
            hint="Restore again (a new copy takes the next free timeline) and replace with "
            "that one.",
        )
    name = f"{timeline:08X}.history"
    ours = plan.copy_data_dir / "pg_wal" / name
    try:
        stored = repo.unpack(repo.storage.get_bytes(archive.object_key(name)), name)
    except ObjectMissing:
        return
    if not ours.exists() or ours.read_bytes() != stored:
        raise Refused(
            f"the live archive holds another history of timeline {timeline} than the copy "
            f"{plan.restore_id}'s (another copy of it became live first).",
            hint="Restore again and replace with the new copy.",
        )


def _copy_wal(
    repo: Repository, restore_id: str, pgdata: Path, timeline: int, created: list[str]
) -> None:
    """The new timeline's history (from ``pg_wal``) and what the copy archived on it into
    its own prefix, into the live archive; ``created`` gets each key this call wrote."""
    from ptool_ops.pitr import wal

    for path in sorted((pgdata / "pg_wal").glob("*.history")):
        pushed = wal.push(repo, path, data_dir=pgdata)
        if not pushed.already_archived:
            created.append(pushed.key)
    source = f"{archive.prefix(archive.restore_archive(restore_id))}/{timeline:08X}/"
    for item in list(repo.storage.list(source)):
        name = item.key.rsplit("/", 1)[-1].removesuffix(archive.SUFFIX)
        key = archive.object_key(name)
        blob = repo.storage.get_bytes(item.key)
        data = repo.unpack(blob, name)  # checked before it joins the live archive
        if repo.storage.create_exclusive(key, blob) is not None:
            created.append(key)
            continue
        stored = repo.unpack(repo.storage.get_bytes(key), name)
        if hashlib.sha256(stored).digest() != hashlib.sha256(data).digest():
            raise wal.DifferentSegment(f"{name} is already in the live archive with other bytes.")


def _hand_over(repo: Repository, keys: list[str], server: LocalServer) -> None:
    """Files this process (root) wrote into a file repository's live archive become the
    server's, with their new directories: its archive_command adds to them, and a later
    restore's restore_command (run as the server's user) reads them."""
    from ptool_ops.repo.file import FileStorage

    if not isinstance(repo.storage, FileStorage) or os.geteuid() != 0:
        return
    for key in keys:
        path = repo.storage.root / key
        server.give_to_server(path)
        server.give_to_server(path.parent)


@dataclass
class _Undo:
    """What the replacement has changed so far, to put back in reverse."""

    old_kept: bool = False
    copy_moved: bool = False
    wal_touched: bool = False
    wal_created: list[str] = field(default_factory=list)


def replace(
    env: Environment, plan: ReplacePlan, *, progress: Progress | None = None
) -> ReplaceResult:
    """Replace live by the restored copy (see the module's steps)."""
    from ptool_ops.booking.invariants import run_invariants
    from ptool_ops.local.cluster import LocalServer as Server

    report: Progress = progress or (lambda phase, detail: None)
    repo = env.repository()
    live = _live(env)
    clock = time.monotonic()
    root, data = restore.find_copy(env, plan.restore_id)
    copy = restore._server(root)
    step = "promoting the copy"
    undo = _Undo()
    with (
        live.server.locked(),
        audited(
            env,
            "pitr.replace",
            {"restore_id": plan.restore_id, **plan.to_dict()},
            done=lambda: f"the copy {plan.restore_id} replaced live",
        ) as entry,
    ):
        promoted_now = plan.copy_state != "promoted"
        if promoted_now:
            report("promoting", f"ending recovery of copy {plan.restore_id}")
            promoted = restore.promote(env, plan.restore_id)
            plan.copy_timeline = int(promoted["timeline"])
            if promoted["state"] != "promoted":
                raise OperationFailed(f"the copy {plan.restore_id} did not end recovery.")
            _check_timeline(repo, plan)
        if plan.keep_as.exists():
            raise Refused(f"{plan.keep_as} exists; nothing was changed.", hint="Run it again.")
        step = "stopping the copy"
        report("stopping", f"copy {plan.restore_id} (its last WAL into its own archive)")
        copy.stop("fast")
        new = Server(live.paths.root, archive_command="")  # archiving held
        try:
            step = "stopping live"
            report("stopping", f"live on port {plan.live_port}")
            live.server.stop("fast")
            step = "keeping the old data directory"
            os.rename(plan.live_data_dir, plan.keep_as)
            undo.old_kept = True
            step = "moving the copy into place"
            os.rename(plan.copy_data_dir, plan.live_data_dir)
            undo.copy_moved = True
            step = "starting the copy as live"
            report("starting", f"the copy on port {plan.live_port}, archiving held")
            new.adopt()
            new.start("", plan.live_port)
            step = "checking it"
            report("checking", "timeline, system identifier, booking invariants")
            with env.database("pitr.restore").connect() as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery(),"
                    " (SELECT system_identifier::text FROM pg_catalog.pg_control_system())"
                ).fetchone()
                assert row is not None
                timeline = archive.current_timeline(conn)
                if row[0] or timeline != plan.copy_timeline or row[1] != plan.system_identifier:
                    raise OperationFailed(
                        f"the server now on port {plan.live_port} is not the promoted copy "
                        f"(in recovery: {row[0]}, timeline {timeline}, system {row[1]})."
                    )
                invariants = run_invariants(conn).to_dict()
            if not invariants.get("ok"):
                raise OperationFailed(
                    f"the copy violates {invariants.get('violation_count')} booking "
                    "invariant(s) on live's port."
                )
            step = "copying the new timeline's WAL into the live archive"
            report("archiving", f"timeline {plan.copy_timeline} into the live archive")
            undo.wal_touched = True
            _copy_wal(
                repo, plan.restore_id, plan.live_data_dir, plan.copy_timeline, undo.wal_created
            )
            _hand_over(repo, undo.wal_created, new)
            step = "restarting it archiving into the live archive"
            new.stop("fast")
            live.server.start("", plan.live_port)
            with env.database("pitr.restore").connect() as conn:
                conn.execute("SELECT 1")
        except BaseException as err:
            _put_back(env, live, new, plan, undo, step, err)
            raise  # _put_back raises; this is for the type checker
        retired = restore.retire(repo, plan.restore_id, "replaced")
        _mark_replaced(root, data, plan)
        result = ReplaceResult(
            restore_id=plan.restore_id,
            data_dir=str(plan.live_data_dir),
            old_data_dir=str(plan.keep_as),
            port=plan.live_port,
            timeline=plan.copy_timeline,
            promoted_now=promoted_now,
            wal_copied=[
                k.rsplit("/", 1)[-1].removesuffix(archive.SUFFIX) for k in undo.wal_created
            ],
            invariants=invariants,
            elapsed_s=round(time.monotonic() - clock, 3),
            next_steps=[
                f"take a base backup now ('ptool-ops pitr base-backup'): until one exists on "
                f"timeline {plan.copy_timeline}, 'pitr window' exits 1 and no point after "
                "the switch can be restored",
                f"the old data directory {plan.keep_as} holds live as it was (writes after "
                "the target included); delete it once nothing in it is needed",
            ],
        )
        if not retired:
            result.next_steps.append(
                f"its own archive pitr/restores/{plan.restore_id}/ could not be marked for "
                f"prune: 'ptool-ops pitr drop {plan.restore_id}' marks it"
            )
        if env.local is not None and env.local.api() is not None:
            result.next_steps.append(
                "the booking API stand-in kept running across the restart: check it "
                "('ptool-ops status')"
            )
        entry.details.update(
            {"timeline": result.timeline, "wal_copied": len(undo.wal_created), "ok": result.ok}
        )
        return result


def _mark_replaced(root: Path, data: dict[str, Any], plan: ReplacePlan) -> None:
    from ptool_ops.files import atomic_write

    data.update(
        state="replaced",
        timeline=plan.copy_timeline,
        replaced_live_at=datetime.now(UTC).isoformat(),
        old_data_dir=str(plan.keep_as),
        data_dir=str(plan.live_data_dir),
    )
    atomic_write(root / restore.STATE_FILE, json.dumps(data, indent=2) + "\n", mode=0o644)


def _put_back(
    env: Environment,
    live: LocalEnvironment,
    new: LocalServer,
    plan: ReplacePlan,
    undo: _Undo,
    step: str,
    err: BaseException,
) -> None:
    """Undo what the replacement did, in reverse; raise what happened."""
    reason = err.message.rstrip(".") if isinstance(err, PtoolError) else f"{err!r}"
    started = False
    try:
        if undo.copy_moved:
            if new.state().running:  # the copy, in live's place (not live: it is kept aside)
                new.stop("immediate")
            os.rename(plan.live_data_dir, plan.copy_data_dir)
        if undo.wal_touched:
            # the new timeline's segments (ours, and what the restarted server archived)
            # would make it read as live's; its history file stays (history is never
            # deleted, and a retry finds the same one)
            repo = env.repository()
            timeline_dir = f"{archive.prefix()}/{plan.copy_timeline:08X}/"
            for item in list(repo.storage.list(timeline_dir)):
                repo.storage.delete(item.key)
        if undo.old_kept:
            os.rename(plan.keep_as, plan.live_data_dir)
        if plan.live_running and not live.server.state().running:
            live.server.start("", plan.live_port)
            started = True
    except Exception as second:
        detail = second.message if isinstance(second, PtoolError) else repr(second)
        where = plan.keep_as if undo.old_kept else plan.live_data_dir
        raise ManualActionRequired(
            f"replacing live with copy {plan.restore_id} failed while {step} ({reason}), and "
            f"putting live back failed too: {detail.rstrip('.')}.",
            hint=f"Live's data directory is {where}. Stop any server on {plan.live_data_dir}; "
            f"if {plan.keep_as} exists, move {plan.live_data_dir} aside and rename "
            f"{plan.keep_as} to {plan.live_data_dir}; then 'ptool-ops local up'.",
        ) from err
    back = " and started" if started else ""
    raise OperationFailed(
        f"replacing live with copy {plan.restore_id} failed while {step}: {reason}; live was "
        f"put back ({plan.live_data_dir}){back} on port {plan.live_port}.",
        hint=f"The copy's data directory is {plan.copy_data_dir} (promoted, stopped); see "
        f"the server log {live.paths.log}.",
    ) from (None if isinstance(err, PtoolError) else err)
