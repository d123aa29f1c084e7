"""``ptool-ops config from-stack``: stack outputs → ``[environments.<name>]``, never secrets."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest

from ptool_ops.errors import ConfigError
from ptool_ops.platform.stack import OUTPUT_KEYS, merge_environment
from ptool_ops.settings import load_environment
from tests.conftest import Cli
from tests.iac.conftest import ProgramRun
from tests.iac.test_program import stack_environment

OUTPUTS = {
    "environment": "staging",
    "kind": "neon",
    "protected": False,
    "apiUrl": "https://api-staging.up.railway.app",
    "databaseHost": "ep-cool-1.eu-central-1.aws.neon.tech",
    "databaseSecret": "aws-sm:ptool/staging/booking/migrator",
    "neonProjectId": "prj-staging",
    "neonBranchId": "br-main",
    "repoUrl": "s3://ptool-backups-staging/booking",
    "awsRegion": "eu-central-1",
    "railwayProjectId": "rw-prj",
    "railwayEnvironmentId": "rw-env",
    "railwayServiceId": "rw-svc",
    "vercelProjectId": "prj_web",
    "vercelTeamId": "team_ptool",
}


def test_writes_a_new_environment_table(cli: Cli) -> None:
    (cli.cwd / "outputs.json").write_text(json.dumps(OUTPUTS))
    result = cli("config from-stack outputs.json")
    assert result.exit_code == 0, result.output
    assert "added [environments.staging]" in result.stdout
    data = tomllib.loads((cli.cwd / "ptool-ops.toml").read_text())
    table = data["environments"]["staging"]
    assert table["api_url"] == OUTPUTS["apiUrl"]
    assert table["database_secret"] == OUTPUTS["databaseSecret"]
    assert table["neon_project_id"] == "prj-staging" and table["protected"] is False
    assert "environment" not in table
    shown = cli("--env staging config show -o json")
    assert shown.exit_code == 0, shown.output
    assert shown.json()["repo_url"] == OUTPUTS["repoUrl"]


def test_merges_into_an_existing_file_keeping_the_rest(cli: Cli) -> None:
    cli.write_config(
        "# operators' notes stay\n"
        "[environments.prod]\n"
        'database_secret = "aws-sm:prod/booking/migrator"\n'
        "\n"
        "[environments.staging]\n"
        'api_url = "https://old.example.com"  # replaced\n'
        'pg_bin_dir = "/usr/lib/postgresql/18/bin"\n'
    )
    result = cli("config from-stack -o json", input=json.dumps(OUTPUTS))
    assert result.exit_code == 0, result.output
    report = result.json()
    assert report["created_table"] is False and "api_url" in report["changed"]
    text = (cli.cwd / "ptool-ops.toml").read_text()
    assert text.startswith("# operators' notes stay\n[environments.prod]\n")
    data = tomllib.loads(text)
    assert data["environments"]["prod"] == {"database_secret": "aws-sm:prod/booking/migrator"}
    staging = data["environments"]["staging"]
    assert staging["api_url"] == OUTPUTS["apiUrl"]
    assert staging["pg_bin_dir"] == "/usr/lib/postgresql/18/bin"  # not the stack's: kept
    again = cli("config from-stack -o json", input=json.dumps(OUTPUTS))
    assert again.json()["changed"] == [] and again.json()["written"] is False


def test_dry_run_writes_nothing(cli: Cli) -> None:
    result = cli("config from-stack --dry-run --name stage2", input=json.dumps(OUTPUTS))
    assert result.exit_code == 0, result.output
    assert "would add [environments.stage2]" in result.stdout
    assert not (cli.cwd / "ptool-ops.toml").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"databaseUrl": "[secret]"}, "stack output 'databaseUrl' is not a ptool-ops setting"),
        ({"databaseSecret": "[secret]"}, "stack output 'databaseSecret' is a secret"),
        ({"apiUrl": "postgres://u:hunter2@h/db"}, "stack output 'apiUrl' is a secret"),
        ({"repoUrl": None}, "the stack outputs have no 'repoUrl'"),
        ({"repoUrl": "gs://bucket"}, "setting 'repo_url' is invalid: must start with s3://"),
        ({"environment": "local"}, "'local' cannot be an environment name"),
    ],
)
def test_refuses_secrets_and_drift(cli: Cli, change: dict[str, Any], message: str) -> None:
    outputs = {**OUTPUTS, **change}
    result = cli("config from-stack", input=json.dumps(outputs))
    assert result.exit_code == ConfigError.exit_code, result.output
    assert message in result.stderr
    assert "hunter2" not in result.output
    assert not (cli.cwd / "ptool-ops.toml").exists()


def test_not_json_is_one_sentence(cli: Cli) -> None:
    result = cli("config from-stack", input="Current stack outputs (3):")
    assert result.exit_code == ConfigError.exit_code
    assert "standard input is not JSON" in result.stderr


def test_merge_creates_valid_toml_from_nothing() -> None:
    text, changed, created = merge_environment("", "dev", {"api_url": 'https://x/"q"'})
    assert created and changed == ["api_url"]
    assert tomllib.loads(text) == {"environments": {"dev": {"api_url": 'https://x/"q"'}}}


def test_every_stack_output_is_a_setting_ptool_ops_loads(
    run_program: ProgramRun, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two halves cannot drift: the program's outputs, exported as 'pulumi stack output
    --json' would, become settings that load_environment accepts."""
    outputs = {k: v for k, (v, _secret) in run_program("prod", stack_environment("prod")).items()}
    assert set(outputs) - {"environment"} <= set(OUTPUT_KEYS)
    result = cli("config from-stack", input=json.dumps(outputs))
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(cli.cwd)
    settings = load_environment("prod")
    assert settings.kind == "neon" and settings.needs_confirmation
    assert settings.api_url == outputs["apiUrl"]
    assert settings.database_secret == "aws-sm:ptool/prod/booking/migrator"
    assert settings.neon_branch_id == outputs["neonBranchId"]
    assert settings.database_url is None  # by reference only
