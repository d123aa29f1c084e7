"""Where the repository is, and the settings backups add."""

from __future__ import annotations

from pathlib import Path

import pytest

from ptool_ops.environment import Environment
from ptool_ops.errors import ConfigError
from ptool_ops.settings import load_environment
from tests.conftest import Cli


def env_of(name: str, cwd: Path) -> Environment:
    return Environment(load_environment(name, cwd=cwd))


def test_local_environment_defaults_to_a_repository_under_local_dir(tmp_path: Path) -> None:
    env = env_of("local", tmp_path)
    assert env.repo_url == f"file://{(env.settings.local_dir / 'repo').resolve()}"


def test_other_environments_need_a_repo_url(tmp_path: Path) -> None:
    (tmp_path / "ptool-ops.toml").write_text("[environments.staging]\n")
    env = env_of("staging", tmp_path)
    with pytest.raises(ConfigError, match="has no backup repository"):
        _ = env.repo_url


def test_list_on_the_local_default_repository(cli: Cli) -> None:
    result = cli("backup list -o json")
    assert result.exit_code == 0, result.output
    assert result.json() == []


def test_bad_settings_name_the_key(cli: Cli) -> None:
    cli.write_config('[environments.t]\nrepo_url = "file:///x"\nrepo_part_size_mb = 1\n')
    result = cli("--env t backup list")
    assert result.exit_code == 3
    assert "repo_part_size_mb" in result.stderr


def test_a_malformed_key_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "ptool-ops.toml").write_text(
        f'[environments.t]\nrepo_url = "file://{tmp_path}/r"\nbackup_key = "nope"\n'
    )
    repo = env_of("t", tmp_path).repository()
    with pytest.raises(ConfigError, match="32 bytes") as err:
        _ = repo.key
    assert "nope" not in str(err.value)


def test_the_key_is_only_read_when_needed(tmp_path: Path) -> None:
    (tmp_path / "ptool-ops.toml").write_text(
        f'[environments.t]\nrepo_url = "file://{tmp_path}/r"\n'
        'backup_key_secret = "env:PTOOL_TEST_MISSING_KEY"\n'
    )
    repo = env_of("t", tmp_path).repository()
    assert repo.storage.exists("ptool-repo.json") is False  # no key needed to look
    with pytest.raises(ConfigError, match="PTOOL_TEST_MISSING_KEY"):
        _ = repo.key
