"""``RolePasswords`` (how a preview gets its credentials without creating a role), run as the
Pulumi engine would call it against a real PostgreSQL 18 whose roles were made by the
privilege model as the database owner -- what a Neon branch of staging holds."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import dill
import psycopg
import pytest
from pulumi.dynamic.dynamic import serialize_provider

from components.providers import postgres
from components.providers.postgres import RolePasswordsProvider
from ptool_ops import privileges
from ptool_ops.errors import OperationFailed
from tests.conftest import TestDatabase, add_canaries, reset_passwords
from tests.iac.conftest import PASSWORDS

NEW = {name: f"{value}-preview" for name, value in PASSWORDS.items()}
add_canaries(*NEW.values())


@pytest.fixture
def branch(booking_db: TestDatabase) -> Iterator[dict[str, Any]]:
    """Inputs for the database, as the preview's program passes them (the owner's login)."""
    url = urlsplit(booking_db.url(privileges.OWNER))
    assert url.password is not None and url.hostname is not None
    yield {
        "host": url.hostname,
        "port": url.port,
        "database": booking_db.name,
        "owner_role": privileges.OWNER,
        "owner_password": unquote(url.password),
        "sslmode": "disable",  # loopback; the program passes "require" for Neon
        "passwords": dict(NEW),
    }
    reset_passwords(booking_db.server)  # roles are cluster-wide: give the suite its own back


def checked(provider: RolePasswordsProvider, inputs: dict[str, Any]) -> dict[str, Any]:
    result = provider.check({}, inputs)
    assert result.failures == [], result.failures
    return dict(result.inputs)


def can_log_in(db: TestDatabase, role: str, password: str) -> bool:
    url = urlsplit(db.url(privileges.OWNER))
    try:
        with psycopg.connect(
            host=url.hostname, port=url.port, dbname=db.name, user=role, password=password
        ) as conn:
            return conn.execute("SELECT current_user").fetchone() == (role,)
    except psycopg.OperationalError:
        return False


def old_password(db: TestDatabase, role: str) -> str:
    password = urlsplit(db.url(role)).password
    assert password is not None
    return unquote(password)


def test_sets_the_preview_passwords_on_the_existing_roles(
    booking_db: TestDatabase, branch: dict[str, Any]
) -> None:
    provider = RolePasswordsProvider()
    before = {role: old_password(booking_db, role) for role in NEW}
    with booking_db.connect() as conn:
        roles_before = conn.execute("SELECT count(*) FROM pg_roles").fetchone()
    created = provider.create(checked(provider, branch))
    assert created.id == f"{branch['host']}:{branch['port']}/{booking_db.name}"
    for role, password in NEW.items():
        assert can_log_in(booking_db, role, password), role
        assert not can_log_in(booking_db, role, before[role]), role  # the parent's: no more
    with booking_db.connect() as conn:  # nothing created, attributes untouched
        assert conn.execute("SELECT count(*) FROM pg_roles").fetchone() == roles_before
        backup = conn.execute(
            "SELECT rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname = 'booking_backup'"
        ).fetchone()
    assert backup == (True, True)
    # the outputs keep the inputs for later diffs; the engine marks the secrets
    assert created.outs is not None and created.outs["passwords"] == NEW
    provider.delete(created.id, created.outs)  # a no-op: the roles are the branch's
    assert can_log_in(booking_db, "booking_migrator", NEW["booking_migrator"])


def test_an_update_sets_the_new_passwords(booking_db: TestDatabase, branch: dict[str, Any]) -> None:
    provider = RolePasswordsProvider()
    created = provider.create(checked(provider, branch))
    news = {**branch, "passwords": {**NEW, "booking_readonly": NEW["booking_readonly"] + "-2"}}
    diff = provider.diff(created.id, created.outs or {}, checked(provider, news))
    assert diff.changes and not diff.replaces  # a password: in place
    provider.update(created.id, created.outs or {}, checked(provider, news))
    assert can_log_in(booking_db, "booking_readonly", NEW["booking_readonly"] + "-2")
    # a new branch (new host) is a new database: replaced, so create runs there
    moved = provider.diff(created.id, created.outs or {}, {**news, "host": "ep-new.example"})
    assert moved.replaces == ["host"]


def test_a_missing_role_is_named_and_nothing_changes(
    booking_db: TestDatabase, branch: dict[str, Any]
) -> None:
    provider = RolePasswordsProvider()
    inputs = {**branch, "passwords": {**NEW, "booking_nobody": "nobody-Pa55word-012345"}}
    with pytest.raises(OperationFailed) as caught:
        provider.create(checked(provider, inputs))
    assert "has no role booking_nobody; a preview creates no roles" in str(caught.value)
    assert can_log_in(booking_db, "booking_app_a", old_password(booking_db, "booking_app_a"))
    assert not can_log_in(booking_db, "booking_app_a", NEW["booking_app_a"])


def test_a_group_role_gets_no_password(branch: dict[str, Any]) -> None:
    provider = RolePasswordsProvider()
    inputs = {**branch, "passwords": {**NEW, privileges.APP_GROUP: "group-Pa55word-0123456"}}
    with pytest.raises(OperationFailed, match=r"role booking_app on \S+ cannot log in"):
        provider.create(checked(provider, inputs))


def test_a_refused_login_fails_at_once_without_the_password(branch: dict[str, Any]) -> None:
    provider = RolePasswordsProvider()
    wrong = {**branch, "owner_password": "not-the-Owner-password-0"}
    started = time.monotonic()
    with pytest.raises(OperationFailed) as caught:
        provider.create(checked(provider, wrong))
    assert time.monotonic() - started < 5  # 28P01 is not retried
    message = str(caught.value)
    assert message.startswith(f"cannot log in as booking_owner@{branch['host']}:")
    assert "not-the-Owner-password-0" not in message
    assert not any(value in message for value in NEW.values())


def test_an_unreachable_endpoint_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new branch's compute may still be starting: connecting retries, then gives up."""
    slept: list[float] = []
    monkeypatch.setattr(postgres, "_sleep", slept.append)
    monkeypatch.setattr(postgres, "CONNECT_ATTEMPTS", 3)
    provider = RolePasswordsProvider()
    inputs = {
        "host": "127.0.0.1",
        "port": 1,  # nothing listens there
        "database": "booking",
        "owner_role": "booking_owner",
        "owner_password": "pw",
        "sslmode": "disable",
        "passwords": dict(NEW),
    }
    with pytest.raises(OperationFailed, match=r"cannot log in as booking_owner@127\.0\.0\.1:1/"):
        provider.create(checked(provider, inputs))
    assert slept == [1.0, 2.0]


def test_check_rejects_bad_inputs() -> None:
    provider = RolePasswordsProvider()
    base = {
        "host": "h",
        "database": "booking",
        "owner_role": "booking_owner",
        "owner_password": "pw",
        "passwords": dict(NEW),
    }
    assert provider.check({}, base).failures == []
    bad = provider.check({}, {**base, "passwords": {"Robert'); DROP": "x"}, "sslmode": "off"})
    assert sorted(f.property for f in bad.failures) == ["passwords", "sslmode"]
    assert provider.check({}, {**base, "passwords": {}}).failures[0].reason == (
        "no role to set a password for"
    )


def test_the_pickled_provider_is_a_reference() -> None:
    blob = base64.b64decode(serialize_provider(RolePasswordsProvider()))
    assert b"components.providers.postgres" in blob and len(blob) < 200
    clone = dill.loads(blob)  # noqa: S301 - our own blob, as the provider process loads it
    assert type(clone).__name__ == "RolePasswordsProvider"
