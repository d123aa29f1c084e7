"""The audit trail: records what happened, and detects tampering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptool_ops import audit
from ptool_ops.environment import Environment
from ptool_ops.errors import OperationFailed
from ptool_ops.settings import load_environment

from .conftest import Cli


def test_records_success_and_failure_and_chains_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PTOOL_ACTOR", "ci-bot")
    env = Environment(load_environment())
    with env.audit("backup.create", {"id": "b1"}) as entry:
        entry.details["bytes"] = 42
    with pytest.raises(OperationFailed), audit.record(env.audit_sink, "backup.restore"):
        raise OperationFailed("checksum mismatch in object x.")
    assert env.audit_sink.path == tmp_path / ".ptool" / "audit" / "local.jsonl"
    records = audit.read(env.audit_sink.path)
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("backup.create", "ok"),
        ("backup.restore", "failed"),
    ]
    assert records[0]["details"] == {"id": "b1", "bytes": 42}
    assert records[1]["details"]["error"] == "checksum mismatch in object x."
    assert records[1]["actor"] == "ci-bot"
    assert records[1]["prev"] == records[0]["hash"]
    assert audit.verify(env.audit_sink.path).ok


def test_an_edited_record_breaks_the_chain(cli: Cli) -> None:
    settings_dir = cli.cwd
    path = settings_dir / ".ptool" / "audit" / "local.jsonl"
    for n in range(3):
        audit.append(path, "migrate.up", "ok", {"n": n}, "local")
    assert cli("audit verify").exit_code == 0
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["outcome"] = "failed"
    lines[1] = json.dumps(record, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    result = cli("audit verify")
    assert result.exit_code == 1
    assert "line 2" in result.stderr
    shown = cli("audit show -o json").json()
    assert len(shown) == 3


def test_audited_when_the_record_cannot_be_written(tmp_path: Path) -> None:
    """After success: AuditNotRecorded (exit 9) saying what succeeded. After a failure: the
    work's own error -- its class, exit code, hint and details -- with a note."""
    from ptool_ops.booking.api import ApiError

    sink = audit.AuditSink(tmp_path, "t")
    sink.path.mkdir()  # appending to it fails

    class Env:
        audit_sink = sink

    with (
        pytest.raises(audit.AuditNotRecorded) as done,
        audit.audited(Env(), "api.maintenance.on", {}, done=lambda: "it was switched on"),
    ):
        pass
    assert done.value.exit_code == 9
    assert done.value.message == (
        f"it was switched on, but its audit record could not be written to {sink.path}"
        " (Is a directory)."
    )
    failure = ApiError("PUT x answered 401.", 401, hint="Check the token.")
    failure.details["status"] = 401
    with (
        pytest.raises(ApiError) as failed,
        audit.audited(Env(), "api.maintenance.on", {}, done=lambda: "never"),
    ):
        raise failure
    assert failed.value is failure and failed.value.exit_code == 5
    assert failed.value.message == (
        f"PUT x answered 401 (and its audit record could not be written to {sink.path}:"
        " Is a directory)."
    )
    assert failed.value.hint == "Check the token." and failed.value.details == {"status": 401}
