"""Credentials reloaded twice under 200 requests/s for 20 s: not one request fails."""

from __future__ import annotations

import secrets
import time

from ptool_ops import pg
from ptool_ops.booking import load

from .conftest import Standin

RATE_PER_S = 200
DURATION_S = 20.0


def rotate(standin: Standin, role: str) -> None:
    """What a rotation does: new password on the role, secrets file updated, then SIGHUP."""
    password = secrets.token_urlsafe(24)
    with standin.db.connect() as conn:
        pg.set_password(conn, role, password)
    doc = standin.secrets_doc()
    doc["passwords"][role] = password
    doc["app_role"] = role
    standin.write_secrets(doc)
    standin.reload()


def test_two_credential_reloads_under_load_fail_no_request(standin: Standin) -> None:
    fixture = standin.client().smoke_fixture()
    target = load.Target(standin.url, fixture["tenant_id"], fixture["tenant_token"])
    result = load.run(
        target,
        rate=RATE_PER_S,
        duration_s=DURATION_S,
        actions={
            int(RATE_PER_S * 6): lambda: rotate(standin, "booking_app_b"),
            int(RATE_PER_S * 13): lambda: rotate(standin, "booking_app_a"),
        },
    )
    print("load:", result.summary())  # the achieved rate depends on the machine
    assert result.sent == int(RATE_PER_S * DURATION_S), result.summary()
    assert result.failures == [], f"{len(result.failures)} failed, first: {result.failures[:3]}"
    # the API really switched logins: a, then b, then a again
    roles = result.roles_seen
    collapsed = [r for i, r in enumerate(roles) if i == 0 or roles[i - 1] != r]
    assert collapsed == ["booking_app_a", "booking_app_b", "booking_app_a"], collapsed
    assert standin.log.read_text().count("reload: now serving as") == 2


def test_a_reload_with_wrong_credentials_keeps_serving(standin: Standin) -> None:
    doc = standin.secrets_doc()
    doc["app_role"] = "booking_app_b"
    doc["passwords"]["booking_app_b"] = "definitely-not-the-password"
    standin.write_secrets(doc)
    standin.reload()
    deadline = time.monotonic() + 15
    while "cannot log in as booking_app_b" not in standin.log.read_text():
        assert time.monotonic() < deadline, standin.log.read_text()
        time.sleep(0.1)
    with standin.client() as api:
        assert api.ready().role == "booking_app_a"
        assert api.smoke(write=True).ok
    assert "definitely-not-the-password" not in standin.log.read_text()
