"""A database credential as a secret store holds it, and what the rotation does with one:
make a password, log in with it, probe what the login may do.

A version's value is JSON in the shape AWS uses for database secrets (``username``,
``password``, optionally ``host``/``port``/``dbname``), so an ``aws-sm:`` reference elsewhere in
the settings reads it as a URL; a ``rotation`` key records which run made the version.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import SecretStr

from ptool_ops.errors import ConfigError, DatabaseUnavailable

if TYPE_CHECKING:
    import psycopg

#: URL-unreserved characters only (RFC 3986): the password goes into DATABASE_URL as it is,
#: and no shell, libpq conninfo or URL parser reads any of them specially
PASSWORD_ALPHABET = string.ascii_letters + string.digits + "-_.~"
#: the SQLSTATEs of a login the server refused: wrong password, role may not log in
_REFUSED = {"28P01", "28000"}
#: what ptool-ops writes into the versions it makes, to tell its own runs from others'
MAKER = "ptool-ops"


def new_password(length: int) -> str:
    """A random password of ``length`` characters (≥ 20: over 110 bits; Neon asks for 60)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


@dataclass(frozen=True)
class Credential:
    username: str
    password: SecretStr
    host: str | None = None
    port: int | None = None
    dbname: str | None = None
    rotation: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, *, where: str) -> Credential:
        """``where`` names the version for the error (never the value)."""
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not doc.get("username") or not doc.get("password"):
            raise ConfigError(
                f"{where} is not a database credential: it needs JSON with username and password.",
                hint="Put the credential in that shape (the stacks do), then run the command"
                " again.",
            )
        port = doc.get("port")
        return cls(
            username=str(doc["username"]),
            password=SecretStr(str(doc["password"])),
            host=str(doc["host"]) if doc.get("host") else None,
            port=int(port) if port not in (None, "") else None,
            dbname=str(doc["dbname"]) if doc.get("dbname") else None,
            rotation=dict(doc.get("rotation") or {}),
        )

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "engine": "postgres",
            "username": self.username,
            "password": self.password.get_secret_value(),
        }
        for key in ("host", "port", "dbname"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        if self.rotation:
            doc["rotation"] = self.rotation
        return json.dumps(doc, sort_keys=True)

    def successor(self, username: str, password: str, token: str) -> Credential:
        """The next version: another login (or the same one) on the same server."""
        return Credential(
            username,
            SecretStr(password),
            self.host,
            self.port,
            self.dbname,
            {"token": token, "by": MAKER, "started_at": datetime.now(UTC).isoformat()},
        )

    @property
    def ours(self) -> bool:
        return self.rotation.get("by") == MAKER

    def url(self, base: SecretStr) -> SecretStr:
        """A URL that logs in as this credential: ``base`` (the operator's login, so the same
        server and options) with this user and password, and this host/port/database
        where the credential names them."""
        from psycopg.conninfo import conninfo_to_dict

        params = conninfo_to_dict(base.get_secret_value())
        params["user"] = self.username
        params["password"] = self.password.get_secret_value()
        if self.host:
            params["host"] = self.host
            params["port"] = self.port or 5432
        if self.dbname:
            params["dbname"] = self.dbname
        host = params.get("host") or "localhost"
        netloc = f"{quote(self.username, safe='')}:{quote(str(params['password']), safe='')}@"
        netloc += f"[{host}]" if ":" in str(host) else str(host)
        if params.get("port"):
            netloc += f":{params['port']}"
        rest = {
            k: v
            for k, v in params.items()
            if k not in {"user", "password", "host", "port", "dbname"}
        }
        query = "&".join(f"{quote(k)}={quote(str(v), safe='')}" for k, v in sorted(rest.items()))
        dbname = quote(str(params.get("dbname") or "postgres"), safe="")
        return SecretStr(f"postgresql://{netloc}/{dbname}" + (f"?{query}" if query else ""))


def logs_in(url: SecretStr) -> bool:
    """Whether the server takes this login. A server that cannot be reached is no answer:
    :class:`DatabaseUnavailable`, never "the password is wrong"."""
    import psycopg

    from ptool_ops import pg

    params = pg._params(url)
    params.setdefault("connect_timeout", pg.CONNECT_TIMEOUT_S)
    params["application_name"] = "ptool-ops secrets"
    try:
        conn = psycopg.connect(**params, autocommit=True)
    except psycopg.OperationalError as err:
        if err.sqlstate in _REFUSED or _refused_text(str(err)):
            return False
        raise DatabaseUnavailable(
            f"cannot reach {pg.describe(url)} to check a credential: {pg._first_line(str(err))}.",
            hint="Check that the database is up, then run the command again; nothing was"
            " changed by this check.",
        ) from None
    conn.close()
    return True


def _refused_text(text: str) -> bool:
    """libpq reports a refused login without SQLSTATE when it fails before the session."""
    lowered = text.lower()
    return "password authentication failed" in lowered or "not permitted to log in" in lowered


def _privileges(conn: psycopg.Connection[Any]) -> set[str]:
    rows = conn.execute(
        "SELECT format('%%s on %%s', p, c.oid::regclass) FROM pg_catalog.pg_class c"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) AS p"
        " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p')"
        " AND pg_catalog.has_table_privilege(c.oid, p)",
        (["booking", "ptool_ops"],),
    ).fetchall()
    return {str(r[0]) for r in rows}


def probe(new: SecretStr, reference: SecretStr) -> str | None:
    """Log in with ``new`` and check it may do what ``reference`` (the credential in use)
    may: every table privilege on the booking schemas, and a real read of one table. None
    when it may; otherwise what it lacks, in a clause."""
    from ptool_ops import pg

    with pg.connect(reference) as conn:
        wanted = _privileges(conn)
    with pg.connect(new, autocommit=False) as conn:
        have = _privileges(conn)
        missing = sorted(wanted - have)
        if missing:
            extra = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            return f"it lacks {', '.join(missing[:3])}{extra}, which the login in use has"
        readable = sorted(p.removeprefix("SELECT on ") for p in have if p.startswith("SELECT "))
        if readable:
            from psycopg import sql

            # a real statement through row-level security, inside a transaction undone
            conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(_nil_tenant()),))
            conn.execute(
                sql.SQL("SELECT 1 FROM {} LIMIT 1").format(
                    sql.SQL(".").join(sql.Identifier(p) for p in readable[0].split("."))
                )
            )
        conn.rollback()
    return None


def _nil_tenant() -> str:
    return "00000000-0000-0000-0000-000000000000"
