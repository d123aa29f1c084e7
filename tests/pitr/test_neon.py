"""The Neon half of ``pitr`` against the fake Neon server (checked against Neon's OpenAPI
document) and real PostgreSQL databases standing in for the branches' computes: the
window, targets refused before anything is made, a clone at the target inspected beside
live, and restores in place -- polled through 423s and retried operations, and undone
when the API is not ready after them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ptool_ops.errors import (
    DatabaseUnavailable,
    ManualActionRequired,
    OperationFailed,
    Refused,
    UsageError,
)
from ptool_ops.local.env import LocalEnvironment
from ptool_ops.pitr import neon as pitr_neon
from ptool_ops.pitr.target import Target
from tests.conftest import OWNER, TEMPLATE, TestDatabase, _clone, trail_events
from tests.iac.fakes import FakeNeon, serve
from tests.pitr.neon_support import StandInApi, make_project, neon_env

OLD = timedelta(days=30)
NOWHERE = "postgresql://booking_owner:unused@127.0.0.1:9/booking"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeNeon]:
    fake = FakeNeon()
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture
def neon(server: FakeNeon) -> Iterator[FakeNeon]:
    server.reset()
    server.op_polls = 1
    server.uri_for = None
    yield server
    assert server.violations == []


@pytest.fixture(scope="module")
def api_server() -> Iterator[tuple[StandInApi, str]]:
    api = StandInApi(lambda: True)
    with serve(api) as url:
        yield api, url


@pytest.fixture
def api(api_server: tuple[StandInApi, str]) -> StandInApi:
    """The booking API's stand-in (``api.url``), ready until a test says otherwise."""
    stand_in, url = api_server
    stand_in.ready, stand_in.calls, stand_in.url = (lambda: True), 0, url
    return stand_in


@pytest.fixture
def clone_db(pg_server: LocalEnvironment) -> Iterator[TestDatabase]:
    """A second booking database: what a branch's compute serves in these tests."""
    yield from _clone(pg_server, TEMPLATE)


def at(moment: datetime) -> Target:
    return Target("time", time=moment.replace(microsecond=0))


def zulu(target: Target) -> str:
    assert target.time is not None
    return target.time.isoformat().replace("+00:00", "Z")


def posts(fake: FakeNeon) -> list[str]:
    return [path for method, path in fake.requests if method != "GET"]


def body_of(fake: FakeNeon, suffix: str) -> Any:
    (found,) = [b for m, p, b in fake.request_bodies if m == "POST" and p.endswith(suffix)]
    return found


def test_window_from_the_history_retention(neon: FakeNeon, tmp_path: Path) -> None:
    project = make_project(neon, retention=86400, age=OLD)
    env = neon_env(neon, project, database_url=NOWHERE, audit_dir=tmp_path)
    window = pitr_neon.neon_window(env)
    now = datetime.now(UTC)
    assert window.earliest is not None and window.newest is not None
    assert abs(window.earliest - (now - timedelta(days=1))) < timedelta(seconds=10)
    assert abs(window.newest - now) < timedelta(seconds=10)
    assert window.to_dict()["bounded_by"] == "history window"
    assert window.to_dict()["history_retention_seconds"] == 86400

    young = make_project(neon, retention=86400, age=timedelta(hours=2))
    window = pitr_neon.neon_window(neon_env(neon, young, database_url=NOWHERE, audit_dir=tmp_path))
    assert window.bounded_by == "branch creation"  # never before the branch was made
    assert window.earliest == window.branch_created_at

    off = make_project(neon, retention=0, age=OLD)
    window = pitr_neon.neon_window(neon_env(neon, off, database_url=NOWHERE, audit_dir=tmp_path))
    shown = window.to_dict()
    assert shown["empty"] is True and shown["earliest"] is None and shown["newest"] is None
    assert "instant restore is off" in shown["summary"]


def test_targets_outside_the_window_are_refused_before_anything_is_made(
    neon: FakeNeon, tmp_path: Path
) -> None:
    project = make_project(neon, retention=86400, age=OLD)
    env = neon_env(neon, project, database_url=NOWHERE, audit_dir=tmp_path)
    off = neon_env(
        neon, make_project(neon, retention=0, age=OLD), database_url=NOWHERE, audit_dir=tmp_path
    )
    before = len(posts(neon))
    now = datetime.now(UTC)
    with pytest.raises(UsageError, match="before the earliest point"):
        pitr_neon.inspect(env, at(now - timedelta(days=2)))
    with pytest.raises(UsageError, match="in the future"):
        pitr_neon.inspect(env, at(now + timedelta(hours=1)))
    with pytest.raises(UsageError, match="before the earliest point"):
        pitr_neon.apply(env, at(now - timedelta(days=2)))
    with pytest.raises(UsageError, match=r"^Neon restores to a time or an LSN; restore points"):
        pitr_neon.inspect(env, Target("xid", xid=1234))
    with pytest.raises(UsageError, match="Neon restores to a time or an LSN"):
        pitr_neon.apply(env, Target("name", name="before-deploy"))
    with pytest.raises(UsageError, match="instant restore is off"):
        pitr_neon.inspect(off, at(now - timedelta(minutes=5)))
    assert posts(neon)[before:] == []  # no branch, no restore
    assert trail_events(env, finished=False) == []


def test_inspect_branches_at_the_target_and_compares_with_live(
    neon: FakeNeon, booking_db: TestDatabase, clone_db: TestDatabase, tmp_path: Path
) -> None:
    project = make_project(neon, age=OLD)
    with booking_db.connect() as conn:  # live moved on since the target
        conn.execute("INSERT INTO booking.tenants (slug, name) VALUES ('late', 'Late')")
    neon.uri_for = lambda branch, role, db: (
        clone_db.url(role) if branch["id"] != project[1] else None
    )
    secrets: list[str] = []
    heard: list[tuple[str, str]] = []
    env = neon_env(
        neon,
        project,
        database_url=booking_db.url(OWNER),
        audit_dir=tmp_path,
        on_secret=secrets.append,
    )
    target = at(datetime.now(UTC) - timedelta(hours=1))

    result = pitr_neon.inspect(env, target, progress=lambda p, d: heard.append((p, d)))

    sent = body_of(neon, "/branches")
    assert sent["branch"]["parent_id"] == project[1]
    assert sent["branch"]["parent_timestamp"] == zulu(target)
    assert sent["endpoints"][0]["type"] == "read_write"
    assert result.branch_name.startswith("pitr-") and len(result.branch_name) == 19
    assert neon.branches[result.branch_id]["parent_timestamp"] == sent["branch"]["parent_timestamp"]
    assert result.endpoint_host and result.endpoint_host.endswith(".aws.neon.test")
    assert result.connection.get_secret_value() == clone_db.url(OWNER)
    assert clone_db.url(OWNER) in secrets  # handed to the redactor
    assert result.invariants.ok
    tenants = {t.table: t for t in result.comparison.tables}["booking.tenants"]
    assert (tenants.live_rows, tenants.copy_rows) == (1, 0)
    shown = json.dumps(result.to_dict())
    password = clone_db.url(OWNER).split(":")[2].split("@")[0]
    assert password not in shown and "********" in shown
    assert result.to_dict()["identical"] is False
    assert password not in result.describe() and "booking.tenants: 0 here, 1 live" in (
        result.describe()
    )
    assert {p for p, _ in heard} >= {"window", "branch", "operation", "invariants", "compare"}

    # an LSN the database has passed is a target too; one it has not reached is refused
    with booking_db.connect() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    by_lsn = pitr_neon.inspect(env, Target.from_options(lsn=str(row[0])), keep_name="by-lsn")
    assert by_lsn.branch_name == "by-lsn"
    assert neon.branches[by_lsn.branch_id]["parent_lsn"] == str(row[0])
    before = len(posts(neon))
    with pytest.raises(UsageError, match="is in the future: the branch is at"):
        pitr_neon.inspect(env, Target("lsn", lsn=0xFFFFFFFF_00000000))
    assert posts(neon)[before:] == []

    assert pitr_neon.delete_clone(env, result.branch_id).deleted is True
    assert result.branch_id not in neon.branches
    assert pitr_neon.delete_clone(env, result.branch_id).deleted is False
    with pytest.raises(Refused, match="the environment's own branch"):
        pitr_neon.delete_clone(env, project[1])


def test_apply_restores_in_place_keeping_the_present_as_a_branch(
    neon: FakeNeon, booking_db: TestDatabase, api: StandInApi, tmp_path: Path
) -> None:
    project = make_project(neon, age=OLD)
    heard: list[tuple[str, str]] = []
    env = neon_env(
        neon, project, database_url=booking_db.url(OWNER), audit_dir=tmp_path, api_url=api.url
    )
    target = at(datetime.now(UTC) - timedelta(minutes=30))
    plan = pitr_neon.plan_apply(env, target)
    assert posts(neon) == ["/projects"]  # planning changes nothing
    neon.op_polls = 2
    neon.lock_next(2)  # another operation runs: 423 twice, then the restore is taken
    result = pitr_neon.apply(env, target, plan=plan, progress=lambda p, d: heard.append((p, d)))
    assert neon.locked_answers == 2
    (restore,) = neon.restores
    assert restore == {
        "branch_id": project[1],
        "source_branch_id": project[1],
        "source_timestamp": zulu(target),
        "preserve_under_name": plan.preserve_under_name,
    }
    kept = neon.branches[result.preserved_branch_id or ""]
    assert kept["name"] == plan.preserve_under_name
    assert plan.preserve_under_name.startswith("main-before-pitr-")
    assert all(op["status"] == "finished" for op in neon.operations.values())
    assert result.operations and all(op["status"] == "finished" for op in result.operations)
    assert api.calls == 1 and result.api == "ready" and result.invariants.ok
    assert result.return_command == (
        f"neonctl branches restore {project[1]} {kept['id']} --project-id {project[0]}"
        f" --preserve-under-name {plan.undo_preserve_name}"
    )
    assert ("restore", heard[1][1]) == heard[1] and "kept as main-before-pitr-" in heard[1][1]
    assert result.return_command in result.describe()
    (record,) = trail_events(env)
    assert record["action"] == "pitr.apply" and record["outcome"] == "ok"
    assert record["details"]["preserved_branch_id"] == kept["id"]


def test_a_failed_operation_is_polled_until_neon_finishes_it(
    neon: FakeNeon, booking_db: TestDatabase, tmp_path: Path
) -> None:
    project = make_project(neon, age=OLD)
    env = neon_env(neon, project, database_url=booking_db.url(OWNER), audit_dir=tmp_path)
    heard: list[str] = []
    neon.rate_limit_next(1)  # 429 on the first read: backed off, not fatal
    neon.script_operations("/restore", ["failed", "failed", "finished"])
    result = pitr_neon.apply(
        env, at(datetime.now(UTC) - timedelta(minutes=5)), progress=lambda p, d: heard.append(d)
    )
    assert neon.limited_answers == 1
    assert any("failed (2 failed attempts)" in line for line in heard)
    assert result.api == "not checked: the environment has no API"

    # an operation that stays failed ends the wait within the budget, by name
    env.poll_timeout = 0.3
    neon.script_operations("/restore", ["failed"])
    with pytest.raises(ManualActionRequired) as caught:
        pitr_neon.apply(env, at(datetime.now(UTC) - timedelta(minutes=4)))
    stuck = [op for op in neon.operations.values() if op["status"] == "failed"]
    assert stuck and f"({stuck[0]['id']}) is still failed" in caught.value.message
    assert "Neon took it (the state before is kept as branch main-before-pitr-" in (
        caught.value.message
    )
    assert caught.value.details["preserved_branch_id"]


def test_an_api_not_ready_after_the_restore_is_restored_back(
    neon: FakeNeon, booking_db: TestDatabase, api: StandInApi, tmp_path: Path
) -> None:
    project = make_project(neon, age=OLD)
    api.ready = lambda: len(neon.restores) != 1  # the restored data breaks the API
    env = neon_env(
        neon, project, database_url=booking_db.url(OWNER), audit_dir=tmp_path, api_url=api.url
    )
    with pytest.raises(OperationFailed) as caught:
        pitr_neon.apply(env, at(datetime.now(UTC) - timedelta(minutes=10)))
    message = caught.value.message
    assert "the API is not ready" in message and "schema not understood" in message
    assert "restored back to its state before" in message and "ready again" in message
    first, back = neon.restores
    kept = str(caught.value.details["preserved_branch_id"])
    assert neon.branches[kept]["name"] == first["preserve_under_name"]
    assert back["branch_id"] == project[1] and back["source_branch_id"] == kept
    assert "source_timestamp" not in back and "source_lsn" not in back  # the kept head
    assert back["preserve_under_name"].startswith("main-pitr-undone-")
    (record,) = trail_events(env)
    assert record["outcome"] == "failed" and "restored back" in record["details"]["error"]


def test_an_api_that_stays_unready_needs_a_person(
    neon: FakeNeon, booking_db: TestDatabase, api: StandInApi, tmp_path: Path
) -> None:
    project = make_project(neon, age=OLD)
    api.ready = lambda: False
    env = neon_env(
        neon, project, database_url=booking_db.url(OWNER), audit_dir=tmp_path, api_url=api.url
    )
    with pytest.raises(ManualActionRequired, match="still not ready"):
        pitr_neon.apply(env, at(datetime.now(UTC) - timedelta(minutes=10)))
    assert len(neon.restores) == 2  # restored, then restored back
    assert api.calls == 2


def test_a_clone_that_cannot_be_inspected_is_deleted_again(
    neon: FakeNeon, booking_db: TestDatabase, tmp_path: Path
) -> None:
    project = make_project(neon, age=OLD)
    neon.uri_for = lambda branch, role, db: f"postgresql://{role}:pw@127.0.0.1:9/{db}"
    env = neon_env(neon, project, database_url=booking_db.url(OWNER), audit_dir=tmp_path)
    with pytest.raises(DatabaseUnavailable, match=r"was deleted again\)\.$"):
        pitr_neon.inspect(env, at(datetime.now(UTC) - timedelta(minutes=1)))
    assert list(neon.branches) == [project[1]]
