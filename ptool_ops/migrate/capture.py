"""``migrate capture``: the booking API's statements from ``pg_stat_statements`` (and
``--from FILE``) merged into the repository's query set (:mod:`ptool_ops.migrate.queryset`).

It reads as the operator, who needs ``pg_read_all_stats`` to see other roles' query text
(on Neon through ``neon_superuser``'s ``pg_monitor``), and keeps the statements whose
``userid`` is one of the application roles of the privilege model (the logins
``booking_app_a``/``_b`` and their group), top-level only, of the environment's database.

The extension is looked for in the environment's database (Neon: the owner runs ``CREATE
EXTENSION pg_stat_statements`` there), then in the maintenance database ``postgres``
(the local environment's server makes it there); ``pg_stat_statements`` is cluster-wide,
so either shows every database's statements (filtered here by ``dbid``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from ptool_ops import pg, privileges
from ptool_ops.errors import PermissionDenied, ToolMissing
from ptool_ops.migrate import queryset
from ptool_ops.migrate.queryset import Capture, QuerySet, now

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.repo.repository import Repository

__all__ = [
    "CaptureResult",
    "app_roles",
    "capture",
    "capture_env",
    "read_statistics",
    "version_string",
]

#: the maintenance database a self-managed server (the local one) keeps the extension in
MAINTENANCE_DB = "postgres"

_ROWS = """
SELECT s.userid::regrole::text, s.dbid::text, s.queryid::text, s.query, s.calls,
       to_jsonb(s) ->> 'stats_since'
  FROM {schema}.pg_stat_statements s
 WHERE s.dbid = (SELECT oid FROM pg_catalog.pg_database WHERE datname = %(db)s)
   AND s.userid IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = ANY(%(roles)s))
   AND coalesce((to_jsonb(s) ->> 'toplevel')::boolean, true)
"""


def app_roles() -> list[str]:
    """The roles whose statements are the API's: its logins and their group."""
    return [*privileges.APP_LOGINS, privileges.APP_GROUP]


@dataclass
class Row:
    role: str
    dbid: str
    queryid: str
    query: str
    calls: int
    stats_since: str | None


@dataclass
class Statistics:
    database: str  # whose statements
    read_in: str  # the database the extension was read in
    rows: list[Row]
    stats_reset: str | None
    hidden: int = 0  # rows whose text the role may not see


@dataclass
class CaptureResult:
    repository: str
    captures: list[dict[str, Any]] = field(default_factory=list)
    statements: int = 0  # in the set after the merge
    app_version: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _with_db(url: SecretStr | str, dbname: str) -> SecretStr:
    from psycopg.conninfo import make_conninfo

    raw = url.get_secret_value() if isinstance(url, SecretStr) else url
    return SecretStr(make_conninfo(raw, dbname=dbname))


def _reach(url: SecretStr | str) -> psycopg.Connection[Any] | None:
    from ptool_ops.errors import PtoolError

    try:
        return pg.connect(url)
    except (PtoolError, psycopg.Error):
        return None


def _extension_schema(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute(
        "SELECT quote_ident(n.nspname) FROM pg_catalog.pg_extension e"
        " JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace"
        " WHERE e.extname = 'pg_stat_statements'"
    ).fetchone()
    return str(row[0]) if row else None


def _not_loaded(database: str) -> ToolMissing:
    return ToolMissing(
        f"pg_stat_statements is installed in database {database} but the server has not"
        " loaded it: add shared_preload_libraries = 'pg_stat_statements' to its configuration"
        " and restart it ('ptool-ops local up' does so for the local server).",
    )


def read_statistics(
    url: SecretStr | str, *, roles: list[str], databases: tuple[str, ...] | None = None
) -> Statistics:
    """The application roles' statements of the database ``url`` names. ``databases``:
    where to look for the extension (default: that database, then ``postgres``)."""
    with pg.connect(url) as conn:
        privileges.require(conn, "migrate.capture")
        database = str(conn.info.dbname)
        login = privileges.duties.current_user(conn)
    places = databases or (database, MAINTENANCE_DB)
    for place in dict.fromkeys(places):
        target = url if place == database else _with_db(url, place)
        reached = _reach(target)
        if reached is None:  # a database we may not reach is not the place
            continue
        with reached as conn:
            schema = _extension_schema(conn)
            if schema is None:
                continue
            try:
                rows = conn.execute(
                    sql.SQL(_ROWS).format(schema=sql.SQL(schema)),
                    {"db": database, "roles": roles},
                ).fetchall()
                info = conn.execute(
                    sql.SQL("SELECT stats_reset::text FROM {}.pg_stat_statements_info").format(
                        sql.SQL(schema)
                    )
                ).fetchone()
            except psycopg.errors.ObjectNotInPrerequisiteState:
                raise _not_loaded(place) from None
            except psycopg.errors.InsufficientPrivilege as err:
                raise PermissionDenied(
                    f"role {login} may not read pg_stat_statements in database"
                    f" {place}: {(err.diag.message_primary or str(err)).strip()}.",
                    hint=f"Grant it with: GRANT pg_read_all_stats TO {login}.",
                ) from None
        out = [Row(str(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), r[5]) for r in rows]
        hidden = [r for r in out if r.query == "<insufficient privilege>"]
        if hidden and len(hidden) == len(out):
            raise PermissionDenied(
                f"the statements of {', '.join(sorted({r.role for r in hidden}))} in"
                f" pg_stat_statements are hidden from role {login}: it lacks the privileges"
                " of pg_read_all_stats.",
                hint=f"Grant it with: GRANT pg_read_all_stats TO {login} (on Neon the owner has"
                f" it through {privileges.PLATFORM_SUPERUSER}).",
            )
        return Statistics(
            database,
            place,
            [r for r in out if r.query != "<insufficient privilege>"],
            info[0] if info else None,
            len(hidden),
        )
    where = " or ".join(dict.fromkeys(places))
    raise ToolMissing(
        f"pg_stat_statements is not installed in database {where}: run CREATE EXTENSION"
        f" pg_stat_statements in {database} as its owner (Neon offers it to the owner; a"
        " self-managed server also needs shared_preload_libraries = 'pg_stat_statements' and a"
        " restart).",
    )


def _utility(text: str) -> bool:
    """Statements the API's driver issues around its queries, which no schema change can
    break: BEGIN/COMMIT/ROLLBACK/SAVEPOINT/SET/SHOW/DEALLOCATE/DISCARD."""
    head = text.lstrip().split(None, 1)[0].upper().rstrip(";") if text.strip() else ""
    return head in {
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "START",
        "END",
        "SAVEPOINT",
        "RELEASE",
        "SET",
        "RESET",
        "SHOW",
        "DEALLOCATE",
        "DISCARD",
    }


def capture(
    repo: Repository,
    *,
    url: SecretStr | str | None,
    from_file: Path | None = None,
    app_version: str | None = None,
    databases: tuple[str, ...] | None = None,
    log: Callable[[str], None] | None = None,
) -> CaptureResult:
    """Read the statistics (``url``: the operator's login; None: only ``from_file``) and
    merge them, and the file's statements, into ``repo``'s query set."""
    say = log or (lambda message: None)
    stats = (
        read_statistics(url, roles=app_roles(), databases=databases) if url is not None else None
    )
    statements = queryset.read_statement_file(from_file) if from_file is not None else []
    result = CaptureResult(repo.url, app_version=app_version)
    if stats is not None and stats.hidden:
        result.notes.append(
            f"{stats.hidden} statement(s) hidden from this role (insufficient privilege)"
        )

    def merge(qs: QuerySet) -> None:
        result.captures.clear()
        at = now()
        if stats is not None:
            previous = qs.previous_capture(stats.database)
            reset = queryset._time(stats.stats_reset)
            starts = [t for t in (previous.captured_at if previous else None, reset) if t]
            seen = new = 0
            for row in stats.rows:
                if _utility(row.query):
                    continue
                hit, fresh = qs.add(
                    row.query,
                    at=at,
                    calls=row.calls,
                    version=app_version,
                    role=row.role,
                    source=f"pg_stat_statements:{stats.database}",
                    counter=(f"{row.dbid}:{row.role}:{row.queryid}", row.calls, row.stats_since),
                )
                seen += hit
                new += fresh
            capture = Capture(
                at,
                "pg_stat_statements",
                stats.database,
                max(starts) if starts else None,
                app_version,
                seen,
                new,
            )
            qs.record(capture)
            result.captures.append(capture.to_dict())
        if from_file is not None:
            seen = new = 0
            for s in statements:
                hit, fresh = qs.add(
                    s.text,
                    at=s.last_seen or at,
                    calls=s.calls,
                    version=s.app_version or app_version,
                    role=None,
                    source=f"file:{from_file.name}",
                )
                seen += hit
                new += fresh
            capture = Capture(at, "file", str(from_file), None, app_version, seen, new)
            qs.record(capture)
            result.captures.append(capture.to_dict())
        result.statements = len(qs.statements)

    queryset.update(repo, merge)
    for c in result.captures:
        say(f"{c['kind']} {c['source']}: {c['statements']} statement(s) seen, {c['new']} new")
    return result


def deployed_version(env: Environment) -> str | None:
    """The version the environment's API reports on /version (``version`` and ``build``),
    or None when it has none or does not answer."""
    from ptool_ops.errors import PtoolError

    if not env.has_api:
        return None
    try:
        with env.api(ops_token=False) as api:
            doc = api.version()
    except PtoolError:
        return None
    return version_string(doc)


def version_string(doc: dict[str, Any]) -> str | None:
    """An API's /version document as one string: ``version+build`` (None: no version)."""
    version = doc.get("version")
    build = doc.get("build")
    if not version:
        return None
    return f"{version}+{build}" if build else str(version)


def capture_env(
    env: Environment,
    *,
    from_file: Path | None = None,
    app_version: str | None = None,
    statistics: bool = True,
    log: Callable[[str], None] | None = None,
) -> CaptureResult:
    """:func:`capture` for an environment: its operator login, repository and API."""
    version = app_version or deployed_version(env)
    result = capture(
        env.repository(),
        url=env.database("migrate.capture").url if statistics else None,
        from_file=from_file,
        app_version=version,
        databases=tuple(env.settings.migrate_stats_databases) or None,
        log=log,
    )
    if version is None:
        result.notes.append(
            "the API reported no version (GET /version): a deploy is seen only through"
            " --app-version"
        )
    return result
