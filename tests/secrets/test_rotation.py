"""``ptool-ops secrets`` on the local environment, as the deployed roles: passwords over TCP
with scram, the stand-in API as consumer, a prober logging in throughout.

The tests of this module follow each other on the same logins (module-scoped environment):
each starts from whatever rotation state the previous one left, as operators do."""

from __future__ import annotations

import json
import signal
import time

import pytest

from ptool_ops import pg, privileges
from ptool_ops.local import api as local_api
from tests.conftest import Cli, add_canaries

from .conftest import Prober, RotationEnv


def current(rot: RotationEnv, name: str = "app-db") -> dict[str, object]:
    doc = rot.store(name)
    for version in doc["versions"]:
        if "AWSCURRENT" in version["labels"]:
            return dict(json.loads(version["value"]), id=version["id"])
    raise AssertionError("no current version")


def labels(rot: RotationEnv, name: str = "app-db") -> dict[str, list[str]]:
    return {v["id"]: sorted(v["labels"]) for v in rot.store(name)["versions"] if v["labels"]}


def assert_consistent(rot: RotationEnv) -> None:
    """Store, database, consumers and API agree: the store's current login works, the
    consumers hold it, the API serves as it, and no rotation is half-finished."""
    now = current(rot)
    doc = rot.secrets_doc()
    assert doc["app_role"] == now["username"]
    assert doc["passwords"][now["username"]] == now["password"]
    assert rot.login(str(now["username"]), str(now["password"]))
    assert not any("AWSPENDING" in ls and vid != now["id"] for vid, ls in labels(rot).items())
    deadline = time.monotonic() + 10
    import httpx

    while True:
        body = httpx.get(f"{rot.api_url()}/health/ready", timeout=5).json()
        if body["checks"]["database_role"] == now["username"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body["checks"]["database_role"] == now["username"]


def test_rotate_alternates_and_the_old_login_works_until_revoked(
    rot_env: RotationEnv, cli: Cli, prober: Prober
) -> None:
    rot_env.configure(cli)
    before = rot_env.secrets_doc()
    old_role = before["app_role"]
    old_password = before["passwords"][old_role]

    result = cli("secrets rotate app-db --output json")
    assert result.exit_code == 0, result.output
    report = result.json()
    new_role = report["role_after"]
    assert {old_role, new_role} == set(privileges.APP_LOGINS)
    assert [s["name"] for s in report["steps"]] == [
        "create",
        "set",
        "test",
        "propagate",
        "verify",
        "finish",
    ]
    assert_consistent(rot_env)
    assert rot_env.login(old_role, old_password), "the previous login is the way back"

    status = cli("secrets status app-db --output json")
    assert status.exit_code == 0, status.output
    entry = status.json()["secrets"][0]
    assert entry["current_role"] == new_role and entry["previous_valid"] is True

    # the old pool's sessions end as their requests finish; then revoke
    deadline = time.monotonic() + 10
    while True:
        result = cli("secrets revoke-previous app-db --output json")
        if result.exit_code != 7 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert result.exit_code == 0, result.output
    assert result.json()["role"] == old_role
    assert not rot_env.login(old_role, old_password), "revoked: the old password is gone"
    status = cli("secrets status app-db --output json").json()["secrets"][0]
    assert status["previous_role"] is None and status["ok"], status
    prober.stop()
    assert prober.checks > 5 and prober.failures == [], prober.failures[:3]
    rot_env.canaries()


def test_revoke_refuses_within_grace_and_while_sessions_remain(
    rot_env: RotationEnv, cli: Cli
) -> None:
    rot_env.configure(cli, "")
    assert cli("secrets rotate app-db").exit_code == 0
    previous = current(rot_env)
    # a consumer that has not drained: a session as the previous login
    doc = rot_env.secrets_doc()
    prev_role = next(r for r in privileges.APP_LOGINS if r != doc["app_role"])
    import psycopg

    held = psycopg.connect(rot_env.url(prev_role, doc["passwords"][prev_role]))
    try:
        result = cli("secrets revoke-previous app-db")
        assert result.exit_code == 7, result.output
        assert "session(s) still use" in result.output and prev_role in result.output
        assert rot_env.login(prev_role, doc["passwords"][prev_role]), "nothing was revoked"
    finally:
        held.close()
    cli.write_config(rot_env.config().replace("secret_revoke_grace_s = 0", ""))
    result = cli("secrets revoke-previous app-db")
    assert result.exit_code == 7 and "grace period" in result.output, result.output
    assert current(rot_env)["id"] == previous["id"]
    rot_env.canaries()


@pytest.mark.parametrize("after", ["set", "test", "propagate", "verify"])
def test_a_rotation_killed_after_any_step_is_finished_by_running_it_again(
    rot_env: RotationEnv, cli: Cli, prober: Prober, after: str
) -> None:
    rot_env.configure(cli)
    steps = ["create", "set", "test", "propagate", "verify", "finish"]
    kill_at = steps[steps.index(after) + 1]
    if not (rot_env.local / "secret-store" / "app-db.json").exists():
        assert cli("secrets rotate app-db").exit_code == 0  # run alone: the store starts
    before = current(rot_env)
    process = rot_env.run("secrets", "rotate", "app-db")
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if line.strip() == f"{kill_at}…":
            process.send_signal(signal.SIGKILL)
            break
    process.wait(30)
    assert process.returncode == -signal.SIGKILL, "".join(lines)
    pending = next(vid for vid, ls in labels(rot_env).items() if "AWSPENDING" in ls)

    result = cli("secrets rotate app-db --output json")
    assert result.exit_code == 0, result.output
    report = result.json()
    assert current(rot_env)["id"] != before["id"]
    # killed after 'set': the database has the pending password, so the run is carried on
    assert report["recovered"] and report["recovered"].startswith("carried on"), report
    assert report["token"] == pending, "the same run, by its token"
    assert_consistent(rot_env)
    prober.stop()
    assert prober.failures == [], prober.failures[:3]
    rot_env.canaries()


def test_failing_verification_rolls_back(rot_env: RotationEnv, cli: Cli, prober: Prober) -> None:
    rot_env.configure(cli)
    before = current(rot_env)
    prober.stop()  # the API goes away on purpose
    local_api.stop(rot_env.env.paths)
    try:
        result = cli("secrets rotate app-db --output json")
    finally:
        local_api.start(rot_env.env.paths, rot_env.env.facts.require_running().port)
    assert result.exit_code == 8, result.output
    assert "rolled back" in result.output
    assert current(rot_env)["id"] == before["id"]
    assert_consistent(rot_env)
    rot_env.canaries()


def test_drift_is_reported_never_rotated_over(rot_env: RotationEnv, cli: Cli) -> None:
    rot_env.configure(cli)
    now = current(rot_env)
    role = str(now["username"])
    with rot_env.owner() as conn:
        pg.set_password(conn, role, "someone-changed-it-by-hand-0123456789")
    try:
        result = cli("secrets rotate app-db")
        assert result.exit_code == 7, result.output
        assert "does not log in" in result.output and "nothing was rotated" in result.output
        assert current(rot_env)["id"] == now["id"]
        assert cli("secrets status app-db").exit_code == 1
    finally:
        with rot_env.owner() as conn:
            pg.set_password(conn, role, str(now["password"]))
    rot_env.canaries()


def test_someone_elses_half_finished_rotation_is_cleared(rot_env: RotationEnv, cli: Cli) -> None:
    from ptool_ops.secrets.store import FileSecretStore

    rot_env.configure(cli)
    now = current(rot_env)
    other = next(r for r in privileges.APP_LOGINS if r != now["username"])
    store = FileSecretStore(rot_env.local / "secret-store" / "app-db.json")
    stray = "aborted-lambda-run-0000000000000000000000"
    store.put_pending(stray, json.dumps({"username": other, "password": "never-set-0123456789"}))
    status = cli("secrets status app-db --output json")
    assert status.exit_code == 1 and status.json()["secrets"][0]["half_finished"] == stray

    result = cli("secrets rotate app-db --output json")
    assert result.exit_code == 0, result.output
    assert result.json()["recovered"].startswith(f"cleared the half-finished rotation {stray}")
    assert_consistent(rot_env)
    rot_env.canaries()


def test_the_migrator_rotates_in_place(rot_env: RotationEnv, cli: Cli) -> None:
    rot_env.configure(cli)
    old = rot_env.secrets_doc()["passwords"][privileges.MIGRATOR]
    result = cli("secrets rotate migrator --output json")
    assert result.exit_code == 0, result.output
    new = rot_env.secrets_doc()["passwords"][privileges.MIGRATOR]
    assert new != old
    assert rot_env.login(privileges.MIGRATOR, new) and not rot_env.login(privileges.MIGRATOR, old)
    assert cli("migrate status").exit_code == 0
    rot_env.canaries()


def test_audit_trail_and_logs_hold_no_secret(rot_env: RotationEnv, cli: Cli) -> None:
    rot_env.configure(cli)
    assert cli("secrets rotate app-db").exit_code == 0
    rot_env.canaries()
    from tests import conftest

    trail = json.dumps(cli.audit_events(finished=False))
    assert '"secrets.rotate"' in trail
    logs = trail + (rot_env.env.paths.log_dir / "api.log").read_text()
    leaked = [c for c in conftest._canaries if c in logs]
    assert not leaked, f"a secret ({leaked[0][:4]}…) is in the audit trail or the API log"


def _ops_ok(rot: RotationEnv, token: str) -> int:
    import httpx

    response = httpx.get(
        f"{rot.api_url()}/ops/maintenance", headers={"Authorization": f"Bearer {token}"}
    )
    return response.status_code


def _reads(rot: RotationEnv, tenant: str, token: str) -> int:
    import httpx

    response = httpx.get(
        f"{rot.api_url()}/tenants/{tenant}/bookings",
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status_code


def test_the_ops_token_rotates_with_an_overlap(rot_env: RotationEnv, cli: Cli) -> None:
    rot_env.configure(cli)
    old = rot_env.secrets_doc()["api_token"]
    failures: list[int] = []
    import threading

    stop = threading.Event()

    def clients() -> None:  # what ptool-ops and CI use: the token the consumers hold now
        while not stop.is_set():
            code = _ops_ok(rot_env, rot_env.secrets_doc()["api_token"])
            if code != 200:
                failures.append(code)
            time.sleep(0.02)

    thread = threading.Thread(target=clients, daemon=True)
    thread.start()
    try:
        result = cli("secrets rotate api-token --output json")
    finally:
        stop.set()
        thread.join(10)
    assert result.exit_code == 0, result.output
    new = rot_env.secrets_doc()["api_token"]
    assert new != old and failures == []
    assert _ops_ok(rot_env, new) == 200 and _ops_ok(rot_env, old) == 200, "overlap"
    assert cli("api smoke --read-only").exit_code == 0

    result = cli("secrets revoke-previous api-token")
    assert result.exit_code == 0, result.output
    assert _ops_ok(rot_env, old) == 401 and _ops_ok(rot_env, new) == 200
    rot_env.canaries()
    add_canaries(old, new)


def test_the_signing_keys_rotate_in_two_steps(rot_env: RotationEnv, cli: Cli) -> None:
    import httpx

    rot_env.configure(cli)
    ops = rot_env.secrets_doc()["api_token"]
    fixture = httpx.post(
        f"{rot_env.api_url()}/ops/smoke-fixture", headers={"Authorization": f"Bearer {ops}"}
    ).json()
    tenant, before = fixture["tenant_id"], fixture["tenant_token"]
    old_kid = rot_env.secrets_doc()["signing_keys"]["signing"]
    assert before.startswith(f"v2.{old_kid}.")

    result = cli("secrets rotate signing-keys --output json")
    assert result.exit_code == 0, result.output
    report = result.json()
    assert [s["name"] for s in report["steps"]] == [
        "create",
        "propagate",
        "propagate",
        "verify",
        "finish",
    ]
    keyset = rot_env.secrets_doc()["signing_keys"]
    assert keyset["signing"] == report["role_after"] != old_kid
    assert set(keyset["keys"]) == {old_kid, keyset["signing"]}
    assert _reads(rot_env, tenant, before) == 200, "tokens of the previous key verify on"

    result = cli("secrets revoke-previous signing-keys")
    assert result.exit_code == 0, result.output
    assert _reads(rot_env, tenant, before) == 401, "revoked: the previous key is gone"
    fresh = httpx.post(
        f"{rot_env.api_url()}/ops/smoke-fixture", headers={"Authorization": f"Bearer {ops}"}
    ).json()["tenant_token"]
    assert fresh.startswith(f"v2.{keyset['signing']}.") and _reads(rot_env, tenant, fresh) == 200
    rot_env.canaries()
