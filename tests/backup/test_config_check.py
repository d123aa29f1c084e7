"""'config check' checks the repository too: its directory, or bucket, credentials and
endpoint -- and says which."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli


def _config(cli: Cli, repo_url: str, **extra: str) -> None:
    lines = [
        "[environments.t]",
        'database_url = "postgresql://nobody@127.0.0.1:1/db"',
        f'repo_url = "{repo_url}"',
        *(f'{k} = "{v}"' for k, v in extra.items()),
    ]
    cli.write_config("\n".join(lines) + "\n")


def test_a_missing_directory_is_reported(cli: Cli, tmp_path: Path) -> None:
    _config(cli, f"file://{tmp_path}/nope")
    result = cli("--env t config check")
    assert result.exit_code == 3, result.output
    assert f"no such repository directory {tmp_path}/nope — a typo?" in result.stderr
    as_json = cli("--env t config check -o json").json()
    assert as_json["valid"] is False and as_json["settings_valid"] is True
    assert "no such repository directory" in as_json["repository"]["problem"]
    (tmp_path / "nope").mkdir()
    ok = cli("--env t config check -o json")
    assert ok.exit_code == 0, ok.output
    assert ok.json()["repository"]["ok"] is True
    assert "no backup stored yet" in ok.json()["repository"]["note"]


def test_the_local_default_repository_is_made_on_first_use(cli: Cli) -> None:
    result = cli("config check -o json")
    assert result.exit_code == 0, result.output
    assert "the first backup creates it" in result.json()["repository"]["note"]


def test_s3_repositories(cli: Cli, aws_env: str, s3_bucket: Any, monkeypatch: Any) -> None:
    bucket = f"cfg-{os.getpid()}"
    s3_bucket(bucket)
    _config(cli, f"s3://{bucket}/x", aws_endpoint_url=aws_env)
    ok = cli("--env t config check -o json")
    assert ok.exit_code == 0, ok.output
    assert ok.json()["repository"]["ok"] is True

    _config(cli, f"s3://{bucket}-missing/x", aws_endpoint_url=aws_env)
    missing = cli("--env t config check")
    assert missing.exit_code == 3, missing.output
    assert "NoSuchBucket" in missing.stderr

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    _config(cli, f"s3://{bucket}/x", aws_endpoint_url=dead)
    unreachable = cli("--env t config check")
    assert unreachable.exit_code == 5, unreachable.output
    assert f"cannot reach the bucket {bucket}" in unreachable.stderr

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(cli.cwd / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cli.cwd / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    _config(cli, f"s3://{bucket}/x", aws_endpoint_url=aws_env)
    anonymous = cli("--env t config check")
    assert anonymous.exit_code == 3, anonymous.output
    assert "no AWS credentials found" in anonymous.stderr


@pytest.mark.parametrize("marker", ['{"format": "other"}', "garbage"])
def test_a_foreign_location_is_reported(cli: Cli, tmp_path: Path, marker: str) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ptool-repo.json").write_text(marker)
    _config(cli, f"file://{tmp_path}/r")
    result = cli("--env t config check")
    assert result.exit_code == 3
    assert "holds something other than a ptool-ops repository" in result.stderr
