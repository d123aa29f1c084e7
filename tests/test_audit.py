"""The audit trail: events in the environment's repository, anchored in its database."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ptool_ops import audit
from ptool_ops.audit.trail import GENESIS, digest
from ptool_ops.environment import Environment
from ptool_ops.errors import OperationFailed
from ptool_ops.settings import EnvironmentSettings

from .conftest import OWNER, Cli, TestDatabase, block_audit_event, trail_events


def _settings(db: TestDatabase, root: Path, **extra: Any) -> EnvironmentSettings:
    return EnvironmentSettings(
        name="t",
        kind="postgres",
        database_url=db.url(OWNER),
        repo_url=f"file://{root / 'repo'}",
        audit_dir=root / "audit",
        **extra,
    )


def _configure(cli: Cli, db: TestDatabase, root: Path) -> None:
    cli.write_config(
        "[environments.t]\n"
        'kind = "postgres"\n'
        f'database_url = "{db.url(OWNER)}"\n'
        f'repo_url = "file://{root / "repo"}"\n'
        f'audit_dir = "{root / "audit"}"\n'
    )


def _anchors(db: TestDatabase) -> list[tuple[int, str]]:
    with psycopg.connect(db.url(OWNER)) as conn:
        rows = conn.execute(
            "SELECT seq, hash FROM ptool_ops.audit_anchor WHERE chain = 't' ORDER BY seq"
        ).fetchall()
    return [(int(s), str(h)) for s, h in rows]


def test_each_operation_is_started_then_finished_chained_and_anchored(
    booking_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PTOOL_ACTOR", "ci-bot")
    env = Environment(_settings(booking_db, tmp_path))
    with env.audit("backup.create", {"id": "b1"}) as entry:
        entry.details["bytes"] = 42
    with pytest.raises(OperationFailed), env.audit("backup.restore"):
        raise OperationFailed("checksum mismatch in object x.")

    events = trail_events(env, finished=False)
    assert [(e["seq"], e["action"], e["outcome"]) for e in events] == [
        (1, "backup.create", "started"),
        (2, "backup.create", "ok"),
        (3, "backup.restore", "started"),
        (4, "backup.restore", "failed"),
    ]
    assert events[0]["op"] == events[1]["op"] != events[2]["op"] == events[3]["op"]
    assert events[0]["details"] == {"id": "b1"} and events[1]["details"] == {
        "id": "b1",
        "bytes": 42,
    }
    assert events[3]["details"]["error"] == "checksum mismatch in object x."
    assert {e["actor"] for e in events} == {"ci-bot"} and {e["environment"] for e in events} == {
        "t"
    }
    assert events[0]["prev"] == GENESIS
    assert all(later["prev"] == earlier["hash"] for earlier, later in itertools.pairwise(events))
    stored = tmp_path / "repo" / "audit" / "t"
    assert sorted(p.name for p in stored.iterdir()) == [
        *(f"{n:010d}.json" for n in range(1, 5)),
        "head.json",
    ]
    # every finished operation anchored its newest event in the database
    assert _anchors(booking_db) == [(2, events[1]["hash"]), (4, events[3]["hash"])]
    result = audit.verify(env.audit_trail)
    assert result.ok and result.events == 4 and result.anchored == 4


@pytest.fixture
def chain(booking_db: TestDatabase, tmp_path: Path, cli: Cli) -> Path:
    """A trail of six events (three operations), anchored; its directory."""
    env = Environment(_settings(booking_db, tmp_path))
    for n in range(3):
        with env.audit("migrate.up", {"n": n}):
            pass
    _configure(cli, booking_db, tmp_path)
    assert cli("--env t audit verify").exit_code == 0
    return tmp_path / "repo" / "audit" / "t"


def _verify_fails(cli: Cli) -> str:
    result = cli("--env t audit verify")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.stderr


def test_verify_names_an_altered_byte(chain: Path, cli: Cli) -> None:
    second = chain / "0000000002.json"
    second.write_text(second.read_text().replace('"ok"', '"ko"'))
    assert "not intact: event 2 was altered after it was written." in _verify_fails(cli)
    shown = cli("--env t audit log -o json").json()
    assert [e["seq"] for e in shown] == [1, 2, 3, 4, 5, 6]  # still readable, for the inquiry


def test_verify_names_the_missing_newest_event(chain: Path, cli: Cli) -> None:
    (chain / "0000000006.json").unlink()
    assert "the newest events are missing: the database anchored event 6" in _verify_fails(cli)
    # the next command writes after the lost events, never in their place
    noted = cli("--env t audit note 'investigating the missing event 6' -o json")
    assert noted.exit_code == 0, noted.output
    assert noted.json()["seq"] == 7 and noted.json()["details"]["by_hand"] is True
    assert "not intact: event 6 is missing." in _verify_fails(cli)
    (chain / "0000000007.json").unlink()
    (chain / "head.json").unlink()  # the head hint too: the anchor alone still tells
    assert "the database anchored event 7" in _verify_fails(cli)
    assert "the trail ends at event 5" in _verify_fails(cli)


def test_verify_names_a_deleted_event_in_the_middle(chain: Path, cli: Cli) -> None:
    (chain / "0000000003.json").unlink()
    assert "not intact: event 3 is missing." in _verify_fails(cli)


def test_verify_finds_a_chain_rewritten_consistently_with_fresh_hashes(
    chain: Path, cli: Cli
) -> None:
    prev = GENESIS
    for path in sorted(chain.glob("0*.json")):
        event = json.loads(path.read_text())
        event["actor"], event["prev"] = "mallory", prev
        event["hash"] = prev = digest(event)
        path.write_text(json.dumps(event))
    (chain / "head.json").write_text(json.dumps({"seq": 6, "hash": prev}))
    message = _verify_fails(cli)
    assert "the chain was rewritten: event 2 is not the one the database anchored" in message


def test_the_anchor_is_append_only_for_the_backup_role_and_the_owner(
    chain: Path, booking_db: TestDatabase
) -> None:
    from tests.conftest import BACKUP

    changes = (
        "UPDATE ptool_ops.audit_anchor SET hash = hash",
        "DELETE FROM ptool_ops.audit_anchor",
        "TRUNCATE ptool_ops.audit_anchor",
    )
    with psycopg.connect(booking_db.url(BACKUP), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ptool_ops.audit_anchor (chain, seq, hash) VALUES ('x', 1, %s)",
            ("a" * 64,),
        )
        for statement in changes:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    with psycopg.connect(booking_db.url(OWNER), autocommit=True) as conn:
        for statement in changes:
            with pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
                conn.execute(statement)
    assert len(_anchors(booking_db)) == 3


def test_audit_log_filters(
    chain: Path,
    cli: Cli,
    booking_db: TestDatabase,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = Environment(_settings(booking_db, tmp_path))
    monkeypatch.setenv("PTOOL_ACTOR", "alice")
    with pytest.raises(OperationFailed), env.audit("backup.verify", {"id": "x"}):
        raise OperationFailed("a checksum does not match.")
    monkeypatch.delenv("PTOOL_ACTOR")

    def seqs(args: str) -> list[int]:
        result = cli(f"--env t audit log {args} -o json")
        assert result.exit_code == 0, result.output
        return [e["seq"] for e in result.json()]

    assert seqs("") == [1, 2, 3, 4, 5, 6, 7, 8]
    assert seqs("--last 2") == [7, 8]
    assert seqs("--action migrate.up --outcome ok") == [2, 4, 6]
    assert seqs("--action backup.") == [7, 8]
    assert seqs("--actor alice") == [7, 8]
    assert seqs("--outcome failed") == [8]
    first_op = cli("--env t audit log --last 1 -o json").json()[0]["op"]
    assert seqs(f"--op {first_op}") == [7, 8]
    assert seqs("--since 2999-01-01") == []
    bad = cli("--env t audit log --since yesterday")
    assert bad.exit_code == 2 and "is not a time" in bad.stderr


def test_audited_when_an_event_cannot_be_written(tmp_path: Path) -> None:
    """Before the work: nothing is done. After success: AuditNotRecorded (exit 9) saying
    what succeeded. After a failure: the work's own error -- its class, exit code, hint and
    details -- with a note."""
    from ptool_ops.booking.api import ApiError

    trail_dir = tmp_path / "audit" / "t"
    env = Environment(EnvironmentSettings(name="t", kind="postgres", audit_dir=tmp_path / "audit"))
    location = f"file://{trail_dir}/"

    block_audit_event(trail_dir, 1)
    ran = []
    with (
        pytest.raises(audit.AuditWriteFailed) as refused,
        audit.audited(env, "api.maintenance.on", {}, done=lambda: "never"),
    ):
        ran.append(True)
    assert not ran and refused.value.exit_code == 8
    assert refused.value.message == (
        f"the audit trail at {location} could not be written: Is a directory; nothing was done."
    )

    block_audit_event(trail_dir, 2)
    with (
        pytest.raises(audit.AuditNotRecorded) as done,
        audit.audited(env, "api.maintenance.on", {}, done=lambda: "it was switched on"),
    ):
        pass
    assert done.value.exit_code == 9
    assert done.value.message == (
        f"it was switched on, but its audit record could not be written to {location}"
        " (Is a directory)."
    )

    block_audit_event(trail_dir, 3)  # a new Environment: it finds event 1 and chains on
    env = Environment(EnvironmentSettings(name="t", kind="postgres", audit_dir=tmp_path / "audit"))
    failure = ApiError("PUT x answered 401.", 401, hint="Check the token.")
    failure.details["status"] = 401
    with (
        pytest.raises(ApiError) as failed,
        audit.audited(env, "api.maintenance.on", {}, done=lambda: "never"),
    ):
        raise failure
    assert failed.value is failure and failed.value.exit_code == 5
    assert failed.value.message == (
        f"PUT x answered 401 (and its audit record could not be written to {location}:"
        " Is a directory)."
    )
    assert failed.value.hint == "Check the token." and failed.value.details == {"status": 401}


def _old_trail(path: Path, actions: list[str]) -> list[dict[str, Any]]:
    """A trail as ptool-ops kept it before: hash-chained JSON lines in one file."""
    prev, records = GENESIS, []
    for n, action in enumerate(actions):
        record = {
            "at": f"2026-11-0{n + 1}T10:00:00.000+00:00",
            "environment": "t",
            "actor": "bob",
            "action": action,
            "outcome": "ok",
            "details": {"n": n},
            "prev": prev,
        }
        record["hash"] = prev = digest(record)  # the file's hashes were the events' own
        records.append(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return records


def test_a_machines_local_trail_is_carried_into_the_repository_once(
    booking_db: TestDatabase, tmp_path: Path
) -> None:
    old = tmp_path / "audit" / "t.jsonl"
    records = _old_trail(old, ["backup.create", "migrate.up"])
    env = Environment(_settings(booking_db, tmp_path))
    with env.audit("backup.prune"):
        pass
    events = trail_events(env, finished=False)
    assert [(e["action"], e["outcome"]) for e in events] == [
        ("backup.create", "ok"),
        ("migrate.up", "ok"),
        ("audit.import", "ok"),
        ("backup.prune", "started"),
        ("backup.prune", "ok"),
    ]
    assert [(e["at"], e["actor"], e["details"]) for e in events[:2]] == [
        (r["at"], r["actor"], r["details"]) for r in records
    ]
    assert events[0]["imported"] == {"file": str(old), "line": 1, "hash": records[0]["hash"]}
    assert events[2]["details"] == {"file": str(old), "records": 2, "intact": True}
    assert not old.exists() and old.with_name("t.jsonl.imported").exists()
    with Environment(_settings(booking_db, tmp_path)).audit("backup.prune"):
        pass  # nothing left to carry: no second import
    assert [e["action"] for e in trail_events(env)].count("audit.import") == 1
    assert audit.verify(Environment(_settings(booking_db, tmp_path)).audit_trail).ok


_APPEND = """
import sys, time
from ptool_ops.environment import Environment
from ptool_ops.settings import load_environment
env = Environment(load_environment("t"))
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.005)
for n in range(int(sys.argv[2])):
    with env.audit("stress.append", {"n": n}):
        pass
"""


def test_concurrent_writers_on_s3_never_fork_the_chain(
    cli: Cli, booking_db: TestDatabase, aws_env: str, tmp_path: Path
) -> None:
    """Two processes on one moto S3 repository: two real commands at once, then two
    writers appending as fast as they can from the same moment; every event is there, once,
    in one chain."""
    import time

    import boto3

    from ptool_ops.booking.seed import seed

    with booking_db.connect() as conn:
        seed(conn, tenants=2, bookings=300, seed=3)
    bucket = f"audit-{os.getpid()}-{booking_db.name.replace('_', '-')}"
    boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1").create_bucket(Bucket=bucket)
    cli.write_config(
        "[environments.t]\n"
        'kind = "postgres"\n'
        f'database_url = "{booking_db.url(OWNER)}"\n'
        f'repo_url = "s3://{bucket}/ptool/t"\n'
        f'aws_endpoint_url = "{aws_env}"\n'
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}

    def spawn(actor: str, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, *argv],
            cwd=cli.cwd,
            env={**base, "PTOOL_ACTOR": actor},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    commands = [spawn(a, "-m", "ptool_ops", "--env", "t", "backup", "create") for a in "ab"]
    for proc in commands:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    start = str(time.time() + 2.0)
    writers = [spawn(a, "-c", _APPEND, start, "15") for a in ("w1", "w2")]
    for proc in writers:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err

    events = cli.audit_events("t", finished=False)
    assert [e["seq"] for e in events] == list(range(1, 2 * 2 + 2 * 15 * 2 + 1))
    made = [e for e in events if e["action"] == "backup.create" and e["outcome"] == "ok"]
    assert sorted(e["actor"] for e in made) == ["a", "b"]
    assert len({e["details"]["backup_id"] for e in made}) == 2
    for actor in ("w1", "w2"):
        mine = [e["details"]["n"] for e in events if e["actor"] == actor and e["outcome"] == "ok"]
        assert mine == list(range(15))
    verified = cli("--env t audit verify -o json")
    assert verified.exit_code == 0, verified.output
    assert verified.json()["events"] == len(events) and verified.json()["anchored"] is not None


def test_secrets_never_reach_an_event(cli: Cli, booking_db: TestDatabase, tmp_path: Path) -> None:
    """Events pass the redactor: a secret value it knows and a URL's password are masked,
    in details and in the command line alike; and the CLI wires its redactor in."""
    from ptool_ops.console import Redactor
    from tests.conftest import CANARY

    redactor = Redactor()
    redactor.add(CANARY)
    env = Environment(
        _settings(booking_db, tmp_path),
        on_secret=redactor.add,
        redact=redactor.data,
        invocation={"command": "ptool-ops x", "arguments": {"value": CANARY}},
    )
    url = booking_db.url(OWNER)
    password = url.split(":")[2].split("@")[0]
    with env.audit("secrets.rotate", {"token": CANARY, "url": url}):
        pass
    _configure(cli, booking_db, tmp_path)
    assert cli("--env t backup create").exit_code == 0
    events = cli.audit_events("t", finished=False)
    assert events[-1]["command"].endswith("backup create") and events[-1]["arguments"]
    text = "".join(p.read_text() for p in (tmp_path / "repo" / "audit" / "t").glob("*.json"))
    assert CANARY not in text and password not in text
    assert events[0]["details"]["token"] == "***" and events[0]["arguments"]["value"] == "***"
