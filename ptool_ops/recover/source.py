"""Where recovered rows come from: a copy of the environment's database as of the point.

* On a self-managed server (and ``local``): a copy restored beside live by
  :func:`ptool_ops.pitr.restore.restore` (paused at the target, read-only), or one made
  before (``--from ID``, the id ``pitr restore`` printed).
* On Neon: a branch of the environment's branch at the point, with its own compute
  (:func:`ptool_ops.pitr.neon.inspect`), or one made before (``--from BRANCH_ID``).

A copy made here is removed when recovery is done (``pitr drop`` / the branch deleted)
unless it is kept; one given with ``--from`` is never removed. When recovery fails, a copy
made here is kept and the error says how to reuse or remove it: restoring one again can
take long.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from ptool_ops import pg, tracing
from ptool_ops.errors import ConfigError, OperationFailed, PtoolError, Refused, UsageError
from ptool_ops.pitr.target import Target, parse_lsn

if TYPE_CHECKING:
    import psycopg

    from ptool_ops.environment import Environment

Progress = Callable[[str, str], None]


@dataclass
class Source:
    kind: str  # "pitr copy" | "neon branch"
    id: str
    target: Target
    url: SecretStr
    #: made by this recovery (and so removed after it, unless kept)
    made: bool
    state: str | None = None
    kept: bool = False
    removed: bool = False
    #: seconds spent making and removing the copy
    elapsed_s: dict[str, float] = field(default_factory=dict)

    @property
    def as_of(self) -> str:
        if self.target.kind == "time" and self.target.time is not None:
            return self.target.time.isoformat()
        return self.target.describe()

    def describe(self) -> str:
        return f"{self.kind} {self.id} ({self.target.describe()})"

    def connect(self) -> psycopg.Connection[Any]:
        conn = pg.connect(self.url, autocommit=False)
        conn.read_only = True
        return conn

    def drop_command(self) -> str:
        return f"ptool-ops pitr drop {self.id}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "as_of": self.as_of,
            "target": self.target.to_dict(),
            "made": self.made,
            "state": self.state,
            "kept": self.kept,
            "removed": self.removed,
            "connection": pg.describe(self.url),
            "elapsed_s": self.elapsed_s,
        }


def _target_of(data: dict[str, Any]) -> Target:
    kind = data.get("kind")
    if kind == "time" and data.get("time"):
        return Target("time", time=datetime.fromisoformat(str(data["time"])))
    if kind == "lsn" and data.get("lsn"):
        return Target("lsn", lsn=parse_lsn(str(data["lsn"])))
    if kind == "xid" and data.get("xid") is not None:
        return Target("xid", xid=int(data["xid"]))
    return Target("name", name=str(data.get("name")))


def _same_point(given: Target | None, found: Target, what: str) -> None:
    """Refuse a copy of another point than --as-of (times within a second are the same:
    Neon keeps a branch's point in whole seconds)."""
    if given is None or given == found:
        return
    if (
        given.kind == found.kind == "time"
        and given.time
        and found.time
        and abs((given.time - found.time).total_seconds()) < 1
    ):
        return
    raise UsageError(
        f"{what} holds {found.describe()}, not {given.describe()} (--as-of).",
        hint="Leave --as-of out to recover to the copy's own point, or make a copy at"
        " --as-of (without --from).",
    )


def _attach_copy(env: Environment, restore_id: str, as_of: Target | None) -> Source:
    from ptool_ops.local.cluster import LocalServer
    from ptool_ops.pitr import restore

    root, data = restore.find_copy(env, restore_id)
    if not LocalServer(root).state().running:
        raise OperationFailed(
            f"the restored copy {restore_id} is not running.",
            hint=f"Start it (pg_ctl -D {root / 'pgdata'} start), or make a new one: leave"
            " --from out.",
        )
    target = _target_of(data.get("plan", {}).get("target", {}))
    _same_point(as_of, target, f"the restored copy {restore_id}")
    url = restore._copy_url(env, int(data["port"]))
    env.mark_secret(url.get_secret_value())
    return Source("pitr copy", restore_id, target, url, made=False, state=data.get("state"))


@tracing.span("make the copy")
def _make_copy(env: Environment, target: Target, say: Progress) -> Source:
    from ptool_ops.pitr import restore

    say("source", f"restoring a copy at {target.describe()} beside live (pitr restore)")
    result = restore.restore(env, target, compare_live=False, progress=say)
    env.mark_secret(result.url.get_secret_value())
    source = Source("pitr copy", result.id, target, result.url, made=True, state=result.state)
    if not result.ok:
        raise _kept(
            OperationFailed(
                f"the restored copy {result.id} violates the booking invariants, so its rows"
                " are not copied back."
            ),
            source,
        )
    return source


def _operator(env: Environment) -> tuple[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    from ptool_ops import privileges

    params = conninfo_to_dict(env.login(privileges.OPERATOR).url.get_secret_value())
    role = str(params.get("user") or "")
    return role, str(params.get("dbname") or role)


def _attach_branch(env: Environment, branch_id: str, as_of: Target | None) -> Source:
    from ptool_ops.platform.neon import NotFound

    project, parent = env.settings.neon_project_id, env.settings.neon_branch_id
    if not project or not parent:
        raise ConfigError(
            f"environment {env.name!r} is a Neon environment without neon_project_id and"
            " neon_branch_id.",
            hint="Set both in ptool-ops.toml (or PTOOL_NEON_PROJECT_ID/_BRANCH_ID).",
        )
    if branch_id == parent:
        raise Refused(
            f"branch {branch_id} is the environment's own branch (live), not a copy.",
            hint="Give the id of a branch made at the point ('pitr restore --to TIME').",
        )
    role, database = _operator(env)
    with env.neon() as neon:
        try:
            branch = neon.get_branch(project, branch_id)
        except NotFound:
            raise ConfigError(
                f"Neon has no branch {branch_id} in project {project}.",
                hint="The branch id is printed by 'ptool-ops pitr restore --to TIME'.",
            ) from None
        if branch.parent_id != parent:
            raise Refused(
                f"branch {branch.name} ({branch_id}) is not a branch of the environment's branch"
                f" {parent}.",
                hint="Give a branch made from live at the point ('pitr restore --to TIME').",
            )
        if branch.parent_timestamp is not None:
            target = Target("time", time=branch.parent_timestamp)
        elif branch.parent_lsn:
            target = Target("lsn", lsn=parse_lsn(branch.parent_lsn))
        elif as_of is not None:
            target = as_of
        else:
            raise UsageError(
                f"branch {branch_id} does not say which point it was made at.",
                hint="Give --as-of TIME.",
            )
        if as_of is not None and branch.parent_timestamp is not None:
            _same_point(as_of, target, f"branch {branch_id}")
        url = neon.connection_uri(
            project, branch_id=branch_id, database_name=database, role_name=role
        )
    env.mark_secret(url.get_secret_value())
    return Source("neon branch", branch_id, target, url, made=False)


@tracing.span("make the branch")
def _make_branch(env: Environment, target: Target, say: Progress) -> Source:
    from ptool_ops.pitr import neon

    say("source", f"creating a Neon branch at {target.describe()}")
    inspection = neon.inspect(env, target, progress=say, compare_live=False)
    env.mark_secret(inspection.connection.get_secret_value())
    source = Source("neon branch", inspection.branch_id, target, inspection.connection, made=True)
    if not inspection.ok:
        raise _kept(
            OperationFailed(
                f"branch {inspection.branch_id} violates the booking invariants, so its rows are"
                " not copied back."
            ),
            source,
        )
    return source


def _kept(err: PtoolError, source: Source) -> PtoolError:
    source.kept = True
    err.message = (
        f"{err.message.rstrip('.')} (the {source.kind} {source.id} is kept: rerun with --from"
        f" {source.id}, or remove it with '{source.drop_command()}')."
    )
    err.args = (err.message,)
    return err


@tracing.span("remove the copy")
def remove(env: Environment, source: Source, say: Progress) -> None:
    started = time.monotonic()
    say("cleanup", f"removing the {source.kind} {source.id}")
    if source.kind == "neon branch":
        from ptool_ops.pitr import neon

        neon.delete_clone(env, source.id, progress=say)
    else:
        from ptool_ops.pitr import restore

        restore.drop(env, source.id)
    source.removed = True
    source.elapsed_s["removed"] = round(time.monotonic() - started, 3)


@contextmanager
def opened(
    env: Environment,
    *,
    as_of: Target | None,
    from_id: str | None,
    keep: bool = False,
    progress: Progress | None = None,
) -> Iterator[Source]:
    """The copy to recover from, for the block: given (``from_id``) or made at ``as_of``;
    a copy made here is removed after a block that succeeded, unless ``keep``."""
    say = progress or (lambda phase, detail: None)
    if as_of is not None and as_of.kind != "time":
        raise UsageError("--as-of is a time with a zone.", hint="Like 2026-12-01T14:01:00+01:00.")
    neon = env.kind == "neon"
    if from_id is not None:
        source = _attach_branch(env, from_id, as_of) if neon else _attach_copy(env, from_id, as_of)
    elif as_of is None:
        raise UsageError(
            "give --as-of TIME (the point to recover to), or --from COPY (a copy made before).",
            hint="For example --as-of 2026-12-01T14:01:00+01:00.",
        )
    else:
        started = time.monotonic()
        source = _make_branch(env, as_of, say) if neon else _make_copy(env, as_of, say)
        source.elapsed_s["made"] = round(time.monotonic() - started, 3)
    try:
        yield source
    except PtoolError as err:
        if source.made and not keep:
            raise _kept(err, source) from None
        source.kept = source.made
        raise
    except BaseException:
        source.kept = source.made
        raise
    if source.made and not keep:
        remove(env, source, say)
    else:
        source.kept = source.made
