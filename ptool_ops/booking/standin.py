"""A local stand-in for the booking API that honours ``openapi.yaml`` against a real database.

It serves the ``local`` environment and the tests: what ptool-ops checks before and after a
change (health, readiness, version, maintenance) and the booking endpoints the smoke checks
use. Like the real service it logs in as one of the alternating application roles
(``booking_app_a``/``_b``) and leaves tenant isolation to row-level security: every tenant
request runs in a transaction with ``app.tenant_id`` set, and no query filters by tenant.

Credentials come from the local environment's ``secrets.json`` (``app_role`` names the role in
use; its password is in ``passwords``; ``api_token`` and ``api_tokens_previous`` are the ops
tokens it accepts; ``signing_keys`` the tenant-token key set, a ``kid`` per key). ``SIGHUP``
re-reads the file and swaps the connection pool without dropping a request: the new pool
must log in before it replaces the old one, in-flight requests finish on the connections they
hold, and a request that raced the swap retries on the new pool. A reload whose credentials
do not work keeps the old pool.

``--old-pool-linger-s N`` plays a deployment whose old instances drain slowly: on a reload
the old pool is not closed at once but kept open, its idle connections still logged in as
the previous role, for N seconds (requests go to the new pool); then it is closed.

Run: ``python -m ptool_ops.booking.standin --secrets .ptool/local/secrets.json --db-port N``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolClosed
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ptool_ops import privileges

log = logging.getLogger("ptool_ops.standin")

TENANT_TOKEN_TTL = timedelta(hours=1)
MAINTENANCE_RETRY_AFTER_S = 30
READY_CACHE_S = 1.0
SMOKE_NAMESPACE = uuid.UUID("5b0f3f6e-2d1c-4c61-9a7e-70746f6f6c73")
SMOKE_SLUG = "ptool-smoke"

_BOOKING_COLUMNS = sql.SQL(
    "id, tenant_id, artist_id, project_id, lower(period) AS starts_at, "
    "upper(period) AS ends_at, status, note, created_at"
)


# --- credentials and pool ------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """What the stand-in holds: its database login, the ops tokens it accepts (the current
    one, and during a rotation's overlap the previous ones), and the tenant-token key set
    (sign with ``signing``, verify with any key of ``keys``; none: a key derived from the
    ops token, version 1 tokens)."""

    role: str
    password: str
    ops_token: str
    previous_ops_tokens: tuple[str, ...] = ()
    signing: str | None = None
    keys: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def load(cls, path: Path) -> Credentials:
        doc = json.loads(path.read_text())
        role = str(doc.get("app_role") or privileges.APP_LOGINS[0])
        keyset = doc.get("signing_keys") or {}
        keys = tuple(
            (str(kid), base64.urlsafe_b64decode(str(key) + "=" * (-len(str(key)) % 4)))
            for kid, key in sorted((keyset.get("keys") or {}).items())
        )
        signing = keyset.get("signing")
        return cls(
            role,
            str(doc["passwords"][role]),
            str(doc["api_token"]),
            tuple(str(t) for t in doc.get("api_tokens_previous") or ()),
            str(signing) if signing and any(k == signing for k, _ in keys) else None,
            keys,
        )

    def ops_tokens(self) -> tuple[str, ...]:
        return (self.ops_token, *self.previous_ops_tokens)

    def derived_keys(self) -> list[bytes]:
        """Version 1 tenant tokens: keyed by an ops token (any the stand-in accepts)."""
        return [
            hmac.new(t.encode(), b"tenant-token-v1", hashlib.sha256).digest()
            for t in self.ops_tokens()
        ]

    def key(self, kid: str) -> bytes | None:
        return next((k for name, k in self.keys if name == kid), None)


class Database:
    """The connection pool, swappable at run time."""

    def __init__(
        self,
        host: str,
        port: int,
        dbname: str,
        creds: Credentials,
        *,
        old_pool_linger_s: float = 0.0,
    ) -> None:
        self.host, self.port, self.dbname = host, port, dbname
        self.creds = creds
        self.pool: AsyncConnectionPool[Any] | None = None
        self.generation = 0
        self.old_pool_linger_s = old_pool_linger_s
        self._lingering: set[asyncio.Task[None]] = set()

    def _kwargs(self, creds: Credentials) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "dbname": self.dbname,
            "user": creds.role,
            "password": creds.password,
            "application_name": "booking-api-standin",
            "connect_timeout": 5,
        }

    async def _new_pool(self, creds: Credentials) -> AsyncConnectionPool[Any]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            kwargs={**self._kwargs(creds), "autocommit": False},
            min_size=2,
            max_size=16,
            open=False,
            timeout=10,
            name=f"{creds.role}-{self.generation + 1}",
        )
        await pool.open(wait=True, timeout=10)
        return pool

    async def start(self) -> None:
        self.pool = await self._new_pool(self.creds)
        self.generation += 1

    async def reload(self, creds: Credentials) -> bool:
        """Swap to ``creds``; keep serving with the old pool when they do not work."""
        ok, reason, _ = await self.fresh_login(creds)
        if not ok:  # fail fast: a wrong password is known after one login, not a pool timeout
            log.error(
                "reload: cannot log in as %s (%s); still serving as %s",
                creds.role,
                reason,
                self.creds.role,
            )
            return False
        try:
            fresh = await self._new_pool(creds)
        except Exception as err:  # PoolTimeout, OperationalError: the new login failed
            log.error(
                "reload: cannot log in as %s (%s); still serving as %s",
                creds.role,
                type(err).__name__,
                self.creds.role,
            )
            return False
        old, self.pool, self.creds = self.pool, fresh, creds
        self.generation += 1
        log.warning("reload: now serving as %s (pool generation %d)", creds.role, self.generation)
        if old is None:
            return True
        if self.old_pool_linger_s > 0:
            self._linger(old)
        else:
            await old.close(timeout=30)  # connections in use close as they come back
        return True

    def _linger(self, pool: AsyncConnectionPool[Any]) -> None:
        """Keep ``pool`` open, logged in as it is, for ``old_pool_linger_s``; then close it."""
        log.warning(
            "reload: the old pool %s stays open for %g s (old pool linger)",
            pool.name,
            self.old_pool_linger_s,
        )

        async def close_later() -> None:
            try:
                await asyncio.sleep(self.old_pool_linger_s)
            finally:
                await pool.close(timeout=30)
                log.warning("reload: the old pool %s is closed", pool.name)

        task = asyncio.get_running_loop().create_task(close_later())
        self._lingering.add(task)
        task.add_done_callback(self._lingering.discard)

    async def stop(self) -> None:
        for task in list(self._lingering):
            task.cancel()  # the old pools close now
        await asyncio.gather(*self._lingering, return_exceptions=True)
        if self.pool is not None:
            await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        for _ in range(3):
            pool = self.pool
            assert pool is not None
            try:
                conn = await pool.getconn()
            except PoolClosed:
                continue  # raced a reload: the next attempt sees the new pool
            try:
                yield conn
            finally:
                await pool.putconn(conn)
            return
        raise RuntimeError("no connection pool is open")

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A transaction in which row-level security sees only ``tenant_id``.

        Pipeline mode sends BEGIN, the setting and the first query in one round trip.
        """
        async with self.connection() as conn, conn.pipeline(), conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', %s, true)", (str(tenant_id),))
            yield conn

    async def fresh_login(self, creds: Credentials | None = None) -> tuple[bool, str | None, float]:
        """A new login (not a pooled connection) with ``creds``, default the current ones."""
        creds = creds or self.creds
        start = time.perf_counter()
        try:
            conn = await psycopg.AsyncConnection.connect(**self._kwargs(creds))
        except psycopg.OperationalError as err:
            reason = str(err).strip().splitlines()[-1].rsplit(" failed: ", 1)[-1]
            return False, f"database login as {creds.role} failed: {reason}", 0.0
        try:
            await conn.execute("SELECT 1")
        finally:
            await conn.close()
        return True, None, (time.perf_counter() - start) * 1000


def _mac(key: bytes, body: str) -> str:
    digest = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


# --- the application ------------------------------------------------------------------------


@dataclass
class Maintenance:
    enabled: bool = False
    reason: str | None = None
    since: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "reason": self.reason,
            "since": self.since.isoformat() if self.since else None,
        }


class Standin:
    def __init__(self, secrets_path: Path, db: Database, version: str, build: str) -> None:
        self.secrets_path = secrets_path
        self.db = db
        self.version = version
        self.build = build
        self.maintenance = Maintenance()
        self._ready_cache: tuple[float, dict[str, Any], int] | None = None

    async def reload(self) -> bool:
        try:
            creds = Credentials.load(self.secrets_path)
        except (OSError, ValueError, KeyError) as err:
            log.error("reload: cannot read %s (%s)", self.secrets_path, type(err).__name__)
            return False
        ok = await self.db.reload(creds)
        self._ready_cache = None
        return ok

    # --- helpers ---

    def problem(self, status: int, title: str, detail: str, **headers: str) -> JSONResponse:
        body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        return JSONResponse(body, status, headers=headers, media_type="application/problem+json")

    def _bearer(self, request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def ops_denied(self, request: Request) -> JSONResponse | None:
        token = self._bearer(request)
        accepted = self.db.creds.ops_tokens()
        if token is None or not any(hmac.compare_digest(token, t) for t in accepted):
            return self.problem(401, "Unauthorized", "a valid ops token is required")
        return None

    def mint(self, tenant_id: uuid.UUID) -> tuple[str, datetime]:
        """``v2.<kid>.<tenant>.<expiry>.<mac>`` with the signing key of the key set;
        ``v1.<tenant>.<expiry>.<mac>`` keyed by the ops token when there is no key set."""
        creds = self.db.creds
        expires = datetime.now(UTC) + TENANT_TOKEN_TTL
        key = creds.key(creds.signing) if creds.signing else None
        if creds.signing and key is not None:
            body = f"v2.{creds.signing}.{tenant_id}.{int(expires.timestamp())}"
        else:
            body, key = f"v1.{tenant_id}.{int(expires.timestamp())}", creds.derived_keys()[0]
        return f"{body}.{_mac(key, body)}", expires

    def tenant_denied(self, request: Request, tenant_id: uuid.UUID) -> JSONResponse | None:
        token = self._bearer(request)
        if token is None:
            return self.problem(401, "Unauthorized", "a tenant token is required")
        parts = token.split(".")
        creds = self.db.creds
        if len(parts) == 4 and parts[0] == "v1":
            keys, claims = creds.derived_keys(), parts[1:3]
        elif len(parts) == 5 and parts[0] == "v2":
            key = creds.key(parts[1])
            keys, claims = ([key] if key is not None else []), parts[2:4]
        else:
            return self.problem(401, "Unauthorized", "the tenant token is malformed")
        body = ".".join(parts[:-1])
        if not any(hmac.compare_digest(parts[-1], _mac(k, body)) for k in keys):
            return self.problem(401, "Unauthorized", "the tenant token is not valid")
        if not claims[1].isdigit() or int(claims[1]) < time.time():
            return self.problem(401, "Unauthorized", "the tenant token has expired")
        if claims[0] != str(tenant_id):
            return self.problem(403, "Forbidden", "the token belongs to another tenant")
        return None

    def paused(self) -> JSONResponse | None:
        if self.maintenance.enabled:
            return self.problem(
                503,
                "Service Unavailable",
                "maintenance mode: writes are paused, reads work",
                **{"Retry-After": str(MAINTENANCE_RETRY_AFTER_S)},
            )
        return None

    # --- endpoints ---

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        now = time.monotonic()
        if self._ready_cache is None or now - self._ready_cache[0] > READY_CACHE_S:
            ok, reason, latency = await self.db.fresh_login()
            body = {
                "status": "ready" if ok else "unavailable",
                "reason": reason,
                "checks": {
                    "database": "ok" if ok else "failed",
                    "database_role": self.db.creds.role,
                    "latency_ms": round(latency, 2) if ok else None,
                },
            }
            self._ready_cache = (now, body, 200 if ok else 503)
        _, body, status = self._ready_cache
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse(body, status, headers=headers)

    async def version_info(self, request: Request) -> Response:
        from ptool_ops.booking import MIGRATIONS_DIR
        from ptool_ops.migrate.files import load_migrations
        from ptool_ops.migrate.history import SCHEMA_VERSION_SQL

        expected = load_migrations(MIGRATIONS_DIR)[-1].version
        actual: str | None = None
        try:
            async with self.db.connection() as conn, conn.transaction():
                row = await (await conn.execute(SCHEMA_VERSION_SQL)).fetchone()
                actual = row[0] if row else None
        except psycopg.Error:  # no history table yet, or a role without the 0005 grant
            actual = None
        return JSONResponse(
            {
                "version": self.version,
                "build": self.build,
                "schema_version_expected": expected,
                "schema_version": actual,
            }
        )

    async def get_maintenance(self, request: Request) -> Response:
        return self.ops_denied(request) or JSONResponse(self.maintenance.to_dict())

    async def set_maintenance(self, request: Request) -> Response:
        denied = self.ops_denied(request)
        if denied:
            return denied
        body = await _json(request)
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            return self.problem(422, "Unprocessable Content", 'body must be {"enabled": bool}')
        reason = body.get("reason")
        if (reason is not None and not isinstance(reason, str)) or set(body) - {
            "enabled",
            "reason",
        }:
            return self.problem(422, "Unprocessable Content", "only enabled and reason (text)")
        if body["enabled"]:
            since = self.maintenance.since if self.maintenance.enabled else datetime.now(UTC)
            self.maintenance = Maintenance(True, reason, since)
        else:
            self.maintenance = Maintenance()
        log.warning("maintenance %s", "on" if body["enabled"] else "off")
        return JSONResponse(self.maintenance.to_dict())

    async def smoke_fixture(self, request: Request) -> Response:
        denied = self.ops_denied(request) or self.paused()
        if denied:
            return denied
        tenant = uuid.uuid5(SMOKE_NAMESPACE, "tenant")
        artist = uuid.uuid5(SMOKE_NAMESPACE, "artist")
        project = uuid.uuid5(SMOKE_NAMESPACE, "project")
        async with self.db.tenant(tenant) as conn:
            await conn.execute(
                "INSERT INTO booking.tenants (id, slug, name) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING",
                (tenant, SMOKE_SLUG, "ptool-ops smoke checks"),
            )
            await conn.execute(
                "INSERT INTO booking.artists (id, tenant_id, name) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING",
                (artist, tenant, "Smoke Check Artist"),
            )
            await conn.execute(
                "INSERT INTO booking.projects (id, tenant_id, name) VALUES (%s, %s, %s) "
                "ON CONFLICT (id) DO NOTHING",
                (project, tenant, "Smoke Check Project"),
            )
        token, _ = self.mint(tenant)
        return JSONResponse(
            {
                "tenant_id": str(tenant),
                "artist_id": str(artist),
                "project_id": str(project),
                "tenant_token": token,
            }
        )

    async def mint_token(self, request: Request) -> Response:
        denied = self.ops_denied(request)
        if denied:
            return denied
        tenant = _uuid(request.path_params["tenant_id"])
        if tenant is None:
            return self.problem(404, "Not Found", "no such tenant")
        async with self.db.tenant(tenant) as conn:
            found = await (await conn.execute("SELECT 1 FROM booking.tenants")).fetchone()
        if not found:
            return self.problem(404, "Not Found", "no such tenant")
        token, expires = self.mint(tenant)
        body = {"tenant_id": str(tenant), "token": token, "expires_at": expires.isoformat()}
        return JSONResponse(body, 201)

    async def list_bookings(self, request: Request) -> Response:
        tenant = _uuid(request.path_params["tenant_id"])
        if tenant is None:
            return self.problem(403, "Forbidden", "the token belongs to another tenant")
        denied = self.tenant_denied(request, tenant)
        if denied:
            return denied
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            limit = -1
        status = request.query_params.get("status")
        if not 1 <= limit <= 500 or status not in (None, "tentative", "confirmed", "cancelled"):
            return self.problem(422, "Unprocessable Content", "limit 1..500, status a known one")
        # no tenant filter here: row-level security is what isolates tenants
        where = sql.SQL("WHERE status = %s") if status else sql.SQL("")
        query = sql.SQL(
            "SELECT {} FROM booking.bookings {} ORDER BY lower(period) DESC LIMIT %s"
        ).format(_BOOKING_COLUMNS, where)
        params: list[Any] = [status, limit] if status else [limit]
        async with self.db.tenant(tenant) as conn:
            cur = conn.cursor(row_factory=dict_row)
            rows = await (await cur.execute(query, params)).fetchall()
        items = [_booking(row) for row in rows]
        return JSONResponse({"items": items, "count": len(items)})

    async def create_booking(self, request: Request) -> Response:
        tenant = _uuid(request.path_params["tenant_id"])
        if tenant is None:
            return self.problem(403, "Forbidden", "the token belongs to another tenant")
        denied = self.tenant_denied(request, tenant) or self.paused()
        if denied:
            return denied
        body = await _json(request)
        parsed = _new_booking(body)
        if isinstance(parsed, str):
            return self.problem(422, "Unprocessable Content", parsed)
        artist, project, starts, ends, status, note = parsed
        try:
            async with self.db.tenant(tenant) as conn:
                cur = conn.cursor(row_factory=dict_row)
                row = await (
                    await cur.execute(
                        sql.SQL(
                            "INSERT INTO booking.bookings "
                            "(tenant_id, artist_id, project_id, period, status, note) "
                            "VALUES (%s, %s, %s, tstzrange(%s, %s, '[)'), %s, %s) RETURNING {}"
                        ).format(_BOOKING_COLUMNS),
                        (tenant, artist, project, starts, ends, status, note),
                    )
                ).fetchone()
                assert row is not None
                events = [("booking.created", {"status": "tentative"})]
                if status == "confirmed":
                    events.append(("booking.confirmed", {}))
                for version, (kind, payload) in enumerate(events, start=1):
                    await conn.execute(
                        "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        (tenant, row["id"], version, kind, json.dumps(payload)),
                    )
        except psycopg.errors.ExclusionViolation:
            return self.problem(
                409, "Conflict", "the artist already has a confirmed booking in that period"
            )
        except psycopg.errors.ForeignKeyViolation:
            return self.problem(
                422, "Unprocessable Content", "artist or project not found for this tenant"
            )
        except psycopg.errors.CheckViolation:
            return self.problem(422, "Unprocessable Content", "the period is not valid")
        return JSONResponse(_booking(row), 201)

    async def cancel_booking(self, request: Request) -> Response:
        tenant = _uuid(request.path_params["tenant_id"])
        booking = _uuid(request.path_params["booking_id"])
        if tenant is None:
            return self.problem(403, "Forbidden", "the token belongs to another tenant")
        denied = self.tenant_denied(request, tenant) or self.paused()
        if denied:
            return denied
        if booking is None:
            return self.problem(404, "Not Found", "no such booking")
        async with self.db.tenant(tenant) as conn:
            cur = conn.cursor(row_factory=dict_row)
            before = await (
                await cur.execute(
                    "SELECT status FROM booking.bookings WHERE id = %s FOR UPDATE", (booking,)
                )
            ).fetchone()
            if before is None:
                return self.problem(404, "Not Found", "no such booking")
            if before["status"] != "cancelled":
                await conn.execute(
                    "UPDATE booking.bookings SET status = 'cancelled' WHERE id = %s", (booking,)
                )
                await conn.execute(
                    "INSERT INTO booking.events (tenant_id, stream_id, version, type, payload) "
                    "SELECT %s, %s, coalesce(max(version), 0) + 1, 'booking.cancelled', '{}' "
                    "FROM booking.events WHERE stream_id = %s",
                    (tenant, booking, booking),
                )
            row = await (
                await cur.execute(
                    sql.SQL("SELECT {} FROM booking.bookings WHERE id = %s").format(
                        _BOOKING_COLUMNS
                    ),
                    (booking,),
                )
            ).fetchone()
        assert row is not None
        return JSONResponse(_booking(row))


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        return None


def _uuid(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _when(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def _new_booking(body: Any) -> str | tuple[uuid.UUID, uuid.UUID, datetime, datetime, str, Any]:
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    allowed = {"artist_id", "project_id", "starts_at", "ends_at", "status", "note"}
    if set(body) - allowed:
        return f"unknown field(s): {', '.join(sorted(set(body) - allowed))}"
    artist, project = _uuid(str(body.get("artist_id"))), _uuid(str(body.get("project_id")))
    starts, ends = _when(body.get("starts_at")), _when(body.get("ends_at"))
    status = body.get("status", "confirmed")
    note = body.get("note")
    if artist is None or project is None:
        return "artist_id and project_id must be UUIDs"
    if starts is None or ends is None:
        return "starts_at and ends_at must be date-times with a time zone"
    if ends <= starts:
        return "ends_at must be after starts_at"
    if status not in ("tentative", "confirmed"):
        return "status must be tentative or confirmed"
    if note is not None and (not isinstance(note, str) or len(note) > 2000):
        return "note must be text of at most 2000 characters"
    return artist, project, starts, ends, status, note


def _booking(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "artist_id": str(row["artist_id"]),
        "project_id": str(row["project_id"]),
        "starts_at": row["starts_at"].isoformat(),
        "ends_at": row["ends_at"].isoformat(),
        "status": row["status"],
        "note": row["note"],
        "created_at": row["created_at"].isoformat(),
    }


def create_app(standin: Standin) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await standin.db.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(standin.reload()))
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            await standin.db.stop()

    s = standin
    routes = [
        Route("/health", s.health, methods=["GET"]),
        Route("/health/ready", s.ready, methods=["GET"]),
        Route("/version", s.version_info, methods=["GET"]),
        Route("/ops/maintenance", s.get_maintenance, methods=["GET"]),
        Route("/ops/maintenance", s.set_maintenance, methods=["PUT"]),
        Route("/ops/smoke-fixture", s.smoke_fixture, methods=["POST"]),
        Route("/ops/tenants/{tenant_id}/tokens", s.mint_token, methods=["POST"]),
        Route("/tenants/{tenant_id}/bookings", s.list_bookings, methods=["GET"]),
        Route("/tenants/{tenant_id}/bookings", s.create_booking, methods=["POST"]),
        Route(
            "/tenants/{tenant_id}/bookings/{booking_id}/cancel",
            s.cancel_booking,
            methods=["POST"],
        ),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    from importlib.metadata import version

    import uvicorn

    parser = argparse.ArgumentParser(description="Local stand-in for the booking API.")
    parser.add_argument("--secrets", type=Path, required=True, help="local secrets.json")
    parser.add_argument("--db-host", default="127.0.0.1")
    parser.add_argument("--db-port", type=int, required=True)
    parser.add_argument("--db-name", default="booking")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--build", default="local")
    parser.add_argument(
        "--old-pool-linger-s",
        type=float,
        default=0.0,
        help="on a reload, keep the old pool open (logged in as the previous role) this long",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    creds = Credentials.load(args.secrets)
    db = Database(
        args.db_host, args.db_port, args.db_name, creds, old_pool_linger_s=args.old_pool_linger_s
    )
    app = create_app(Standin(args.secrets, db, version("ptool-ops"), args.build))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
