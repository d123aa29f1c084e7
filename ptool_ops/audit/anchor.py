"""The trail's anchor: the newest event's hash, kept in the environment's database too.

``ptool_ops.audit_anchor`` holds one row per anchoring: the chain (the environment's
name), the event's seq and hash, when and by which role. Like the migration history it is
the toolkit's own table, made by ``migrate up`` as the schema owner (:func:`ensure_table`)
once migration 0001 gave it schema ``ptool_ops``. It is append-only (statement triggers
refuse UPDATE, DELETE and TRUNCATE, the owner's too, unless disabled explicitly, which is
visible; the backup role may only INSERT and SELECT), so someone who can rewrite the
repository still has to reach the database to hide it: an anchored seq beyond the stored
chain is a missing tail, an anchored hash that differs from the stored event is a
rewritten chain.

Anchoring is best effort after every finished command: a database that is down (a restore in
progress, ``local down``) leaves the newest events unanchored until the next command anchors
its own, newer, event -- which covers them, since every event links to the one before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ptool_ops.errors import ConfigError, PermissionDenied, PtoolError
from ptool_ops.privileges.model import BACKUP


class Login(Protocol):
    """What the anchor needs of a database login (:class:`ptool_ops.environment.Login`)."""

    @property
    def user(self) -> str: ...

    def connect(self, **kwargs: Any) -> Any: ...


log = logging.getLogger(__name__)

TABLE = "ptool_ops.audit_anchor"
#: seconds to wait for the database: an unreachable one must not hold a command up
CONNECT_TIMEOUT_S = 5

_INSERT = (
    "INSERT INTO ptool_ops.audit_anchor (chain, seq, hash) VALUES (%s, %s, %s)"
    " ON CONFLICT DO NOTHING"
)
_READ = (
    "SELECT seq, hash, anchored_at, anchored_by FROM ptool_ops.audit_anchor"
    " WHERE chain = %s ORDER BY seq"
)
_EXISTS = (
    "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
    " ON n.oid = c.relnamespace WHERE n.nspname = 'ptool_ops' AND c.relname = 'audit_anchor')"
)


_OWNED = (
    "SELECT pg_catalog.pg_has_role(current_user, n.nspowner, 'USAGE')"
    " FROM pg_catalog.pg_namespace n WHERE n.nspname = 'ptool_ops'"
)
_DDL = (
    """
CREATE FUNCTION ptool_ops.reject_anchor_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'ptool_ops.audit_anchor is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'Anchors are evidence: record a newer one instead.';
END
$fn$""",
    """
CREATE TABLE ptool_ops.audit_anchor (
    chain       text        NOT NULL,
    seq         bigint      NOT NULL,
    hash        text        NOT NULL,
    anchored_at timestamptz NOT NULL DEFAULT now(),
    anchored_by text        NOT NULL DEFAULT current_user,
    CONSTRAINT audit_anchor_pkey PRIMARY KEY (chain, seq),
    CONSTRAINT audit_anchor_seq_positive CHECK (seq > 0),
    CONSTRAINT audit_anchor_hash_sha256 CHECK (hash ~ '^[0-9a-f]{64}$')
)""",
    "CREATE TRIGGER audit_anchor_append_only BEFORE UPDATE OR DELETE ON ptool_ops.audit_anchor"
    " FOR EACH STATEMENT EXECUTE FUNCTION ptool_ops.reject_anchor_change()",
    "CREATE TRIGGER audit_anchor_no_truncate BEFORE TRUNCATE ON ptool_ops.audit_anchor"
    " FOR EACH STATEMENT EXECUTE FUNCTION ptool_ops.reject_anchor_change()",
    f"GRANT SELECT, INSERT ON ptool_ops.audit_anchor TO {BACKUP}",
)


def ensure_table(conn: Any) -> bool:
    """Create the anchor table if it is missing and the role in effect owns schema
    ``ptool_ops`` (the runner, as the schema owner, after 0001); whether it exists now."""
    if conn.execute(_EXISTS).fetchone()[0]:
        return True
    owned = conn.execute(_OWNED).fetchone()
    if not (owned and owned[0]):
        return False
    with conn.transaction():
        for statement in _DDL:
            conn.execute(statement)
    return True


@dataclass(frozen=True)
class AnchorRow:
    seq: int
    hash: str
    anchored_at: str
    anchored_by: str


class NoAnchorTable(ConfigError):
    """The database has not been migrated to the anchor's table yet."""

    kind = "no_anchor_table"


class Anchor:
    """Writes and reads one chain's anchor rows, as the login ``login()`` gives (None: the
    environment has no database configured)."""

    def __init__(self, chain: str, login: Callable[[], Login | None]) -> None:
        self.chain = chain
        self._login = login

    def _connect(self) -> Any:
        login = self._login()
        if login is None:
            raise ConfigError("the environment has no database configured to anchor it in.")
        return login, login.connect(connect_timeout=CONNECT_TIMEOUT_S)

    def record(self, seq: int, value: str, *, quiet: bool = False) -> bool:
        """Anchor event ``seq``; False (with a warning, ``quiet``: a note for ``-v``) when it
        could not be done now."""
        import psycopg

        say = log.info if quiet else log.warning
        try:
            login, conn = self._connect()
        except PtoolError as err:
            say("audit event %d is not anchored in the database: %s", seq, err.message)
            return False
        try:
            with conn:
                if not conn.execute(_EXISTS).fetchone()[0]:
                    log.info(
                        "audit event %d is not anchored: the database has no %s yet"
                        " ('ptool-ops migrate up' creates it)",
                        seq,
                        TABLE,
                    )
                    return False
                conn.execute(_INSERT, (self.chain, seq, value))
            return True
        except psycopg.Error as err:
            say(
                "audit event %d is not anchored in the database (role %s: %s)",
                seq,
                login.user,
                (err.diag.message_primary or type(err).__name__),
            )
            return False

    def read(self) -> list[AnchorRow]:
        """Every anchor row of the chain, oldest first; :class:`NoAnchorTable` before
        ``migrate up`` made the table; the database's own errors (unreachable, a missing
        grant) as one sentence."""
        import psycopg

        login, conn = self._connect()
        try:
            with conn:
                if not conn.execute(_EXISTS).fetchone()[0]:
                    raise NoAnchorTable(
                        f"the database has no {TABLE} yet, so the trail is not anchored.",
                        hint="'ptool-ops migrate up' creates it (as the schema owner).",
                    )
                rows = conn.execute(_READ, (self.chain,)).fetchall()
        except psycopg.errors.InsufficientPrivilege:
            raise PermissionDenied(
                f"role {login.user} may not read {TABLE}.",
                hint=f"GRANT SELECT ON {TABLE} TO {login.user}; or use the operator's login.",
            ) from None
        return [AnchorRow(int(s), str(h), a.isoformat(), str(b)) for s, h, a, b in rows]
