"""Prune never deletes what might be a backup: a newer-format or damaged manifest stops it
(nothing deleted) unless the operator names that backup; unknown optional fields are
ignored; 'list' shows such backups as what they are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.backup.conftest import Env


def _create(env: Env) -> str:
    created = env.run("backup create -o json")
    assert created.exit_code == 0, created.output
    return str(created.json()["id"])


def _repo(env: Env) -> Path:
    return Path(env.repo_url.removeprefix("file://"))


def _manifest(env: Env, backup_id: str) -> Path:
    return _repo(env) / "backups" / backup_id / "manifest.json"


def _files(env: Env) -> list[str]:
    root = _repo(env)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _newer(path: Path) -> None:
    doc = json.loads(path.read_text())
    doc["format_version"] = 2
    doc["objects"][0]["chunking"] = {"kind": "cdc"}  # something version 1 knows nothing of
    path.write_text(json.dumps(doc))


def _damaged(path: Path) -> None:
    path.write_text(path.read_text()[:-40])


@pytest.mark.parametrize(
    ("spoil", "status", "reason"),
    [
        (_newer, "newer-format", "has format version 2; this ptool-ops reads up to 1"),
        (_damaged, "unreadable", "is not valid JSON"),
    ],
    ids=["newer-format", "damaged"],
)
def test_an_unreadable_manifest_stops_prune_and_is_listed(
    file_env: Env, spoil: Any, status: str, reason: str
) -> None:
    keep = _create(file_env)
    odd = _create(file_env)
    spoil(_manifest(file_env, odd))
    before = _files(file_env)

    for command in (
        "backup prune --orphans-older-than 0",
        "backup prune",
        "backup prune --orphans-older-than 0 --keep-last 0 --keep-daily 0 --keep-weekly 0 "
        "--keep-monthly 0",
        "backup prune --dry-run",
    ):
        result = file_env.run(command)
        assert result.exit_code == 7, (command, result.output)
        assert f"the manifest of backup {odd} cannot be read" in result.stderr
        assert reason in result.stderr and "nothing was deleted" in result.stderr
        assert "--forget-unreadable" in result.stderr
        assert result.stderr.count("error:") == 1 and "Traceback" not in result.output
        assert _files(file_env) == before

    listed = file_env.run("backup list -o json")
    assert listed.exit_code == 0, listed.output
    rows = {r["id"]: r for r in listed.json()}
    assert rows[keep]["status"] == "complete"
    assert rows[odd]["status"] == status and reason in rows[odd]["problem"]
    text = file_env.run("backup list").stdout
    assert odd in text and f"{status}:" in text

    shown = file_env.run(f"backup show {odd}")
    assert shown.exit_code == 8 and reason in shown.stderr
    assert "Traceback" not in shown.output


def test_forget_unreadable_deletes_only_the_named_backup(file_env: Env) -> None:
    keep = _create(file_env)
    odd = _create(file_env)
    _newer(_manifest(file_env, odd))

    readable = file_env.run(f"backup prune --forget-unreadable {keep}")
    assert readable.exit_code == 7, readable.output
    assert "names no backup whose manifest cannot be read" in readable.stderr

    file_env.configure(protected="true")
    refused = file_env.run(f"backup prune --forget-unreadable {odd}")
    assert refused.exit_code == 7  # no terminal, no --yes
    assert "the unreadable backup(s) " + odd in refused.stderr
    assert _manifest(file_env, odd).exists()

    done = file_env.run(f"backup prune --forget-unreadable {odd} --yes -o json")
    assert done.exit_code == 0, done.output
    assert done.json()["forgotten"] == [odd]
    assert not (_repo(file_env) / "backups" / odd).exists()
    assert [r["id"] for r in file_env.run("backup list -o json").json()] == [keep]


def test_a_prefix_with_a_manifest_is_never_a_leftover(file_env: Env) -> None:
    # even without lease, objects, or anything prune could parse
    backup_id = _create(file_env)
    _damaged(_manifest(file_env, backup_id))
    for item in (_repo(file_env) / "backups" / backup_id).iterdir():
        if item.name != "manifest.json":
            item.unlink()
    result = file_env.run("backup prune --orphans-older-than 0")
    assert result.exit_code == 7
    assert _manifest(file_env, backup_id).exists()


def test_unknown_optional_fields_are_ignored_at_every_level(file_env: Env) -> None:
    backup_id = _create(file_env)
    path = _manifest(file_env, backup_id)
    doc = json.loads(path.read_text())
    doc["retention_hint"] = "forever"
    doc["objects"][0]["storage_class"] = "GLACIER_IR"
    doc["tables"][0]["toast_bytes"] = 12
    path.write_text(json.dumps(doc))
    listed = file_env.run("backup list -o json").json()
    assert [(r["id"], r["status"]) for r in listed] == [(backup_id, "complete")]
    verified = file_env.run(f"backup verify {backup_id}")
    assert verified.exit_code == 0, verified.output
    dry = file_env.run("backup prune --dry-run -o json")
    assert dry.exit_code == 0 and dry.json()["kept"][0]["id"] == backup_id


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", ".", "-rf"])
def test_a_bad_id_is_one_sentence(file_env: Env, bad: str) -> None:
    _create(file_env)
    for command in ("show", "verify", "restore"):
        result = file_env.cli("--env", "t", "backup", command, "--", bad)
        assert result.exit_code == 8, result.output
        assert f"{bad!r} is not a backup id" in result.stderr
        assert result.stderr.count("error:") == 1 and "Traceback" not in result.output


def test_a_missing_repository_directory_is_an_error_not_an_empty_list(
    file_env: Env, tmp_path: Path
) -> None:
    typo = tmp_path / "repo-typo"
    file_env.configure(repo_url=f"file://{typo}")
    for command in ("backup list", "backup list -o json", "backup prune", "backup show latest"):
        result = file_env.run(command)
        assert result.exit_code == 3, (command, result.output)
        assert f"no such repository directory {typo}" in result.output
        assert "a typo?" in result.output and "Traceback" not in result.output
    assert not typo.exists()  # reading never creates it
