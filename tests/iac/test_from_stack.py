"""``ptool-ops config from-stack``: stack outputs → ``[environments.<name>]``, never secrets;
every credential the CLI uses arrives as a secret reference."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pytest

from ptool_ops.errors import ConfigError
from ptool_ops.platform.stack import OUTPUT_KEYS, WORKFLOW_OUTPUTS, merge_environment
from ptool_ops.settings import load_environment
from tests.conftest import Cli
from tests.iac.conftest import API_TOKEN, OWNER_PASSWORD, PASSWORDS, ProgramRun
from tests.iac.test_program import stack_environment

OUTPUTS = {
    "environment": "staging",
    "kind": "neon",
    "protected": False,
    "apiUrl": "https://api-staging.up.railway.app",
    "apiTokenSecret": "aws-sm:ptool/staging/booking/api-token",
    "databaseHost": "ep-cool-1.eu-central-1.aws.neon.tech",
    "databaseSecret": "aws-sm:ptool/staging/booking/operator",
    "migratorSecret": "aws-sm:ptool/staging/booking/migrator",
    "backupSecret": "aws-sm:ptool/staging/booking/backup",
    "neonProjectId": "prj-staging",
    "neonBranchId": "br-main",
    "repoUrl": "s3://ptool-backups-staging/booking",
    "awsRegion": "eu-central-1",
    "railwayProjectId": "rw-prj",
    "railwayEnvironmentId": "rw-env",
    "railwayServiceId": "rw-svc",
    "vercelProjectId": "prj_web",
    "vercelTeamId": "team_ptool",
    "backupRoleArn": "arn:aws:iam::123456789012:role/ptool-staging-backup",
}
#: the four credentials of the CLI: stack output -> setting
SECRET_OUTPUTS = {
    "databaseSecret": "database_secret",
    "migratorSecret": "migrator_secret",
    "backupSecret": "backup_secret",
    "apiTokenSecret": "api_token_secret",
}


def test_writes_a_new_environment_table(cli: Cli) -> None:
    (cli.cwd / "outputs.json").write_text(json.dumps(OUTPUTS))
    result = cli("config from-stack outputs.json")
    assert result.exit_code == 0, result.output
    assert "added [environments.staging]" in result.stdout
    data = tomllib.loads((cli.cwd / "ptool-ops.toml").read_text())
    table = data["environments"]["staging"]
    assert table["api_url"] == OUTPUTS["apiUrl"]
    for output, setting in SECRET_OUTPUTS.items():
        assert table[setting] == OUTPUTS[output]
    assert table["neon_project_id"] == "prj-staging" and table["protected"] is False
    assert "environment" not in table
    assert "backupRoleArn" not in table and "backup_role_arn" not in table  # CI's, not ours
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
        ({"backupSecret": "postgresql://booking_backup:hunter2@h/booking"}, "is a secret"),
        ({"migratorSecret": None}, "the stack outputs have no 'migratorSecret'"),
        ({"apiTokenSecret": "hunter2"}, "setting 'api_token_secret' is invalid"),
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


@pytest.mark.parametrize("stack", ["dev", "staging", "prod", "pr-42"])
def test_every_stack_output_is_a_setting_ptool_ops_loads(
    stack: str, run_program: ProgramRun, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two halves cannot drift: the program's outputs, exported as 'pulumi stack output
    --json' would, become settings that load_environment accepts -- every credential the CLI
    uses as a reference to the secret the stack wrote, none as a value."""
    preview = stack.startswith("pr-")
    ran = run_program(
        stack,
        None if preview else stack_environment(stack),
        extra={"ptool-ops:gitBranch": "feature/x"} if preview else None,
    )
    outputs = {k: v for k, (v, _secret) in ran.items()}
    assert not any(secret for _, secret in ran.values())
    assert set(outputs) - {"environment"} <= set(OUTPUT_KEYS) | WORKFLOW_OUTPUTS
    assert set(SECRET_OUTPUTS) <= set(outputs)
    text = json.dumps(outputs)
    for value in (*PASSWORDS.values(), API_TOKEN, OWNER_PASSWORD):
        assert value not in text
    result = cli("config from-stack", input=json.dumps(outputs))
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(cli.cwd)
    settings = load_environment(stack)
    assert settings.kind == "neon" and settings.needs_confirmation == (stack == "prod")
    assert settings.api_url == outputs["apiUrl"]
    prefix = f"aws-sm:ptool/{stack}/booking"
    assert settings.database_secret == f"{prefix}/operator"
    assert settings.migrator_secret == f"{prefix}/migrator"
    assert settings.backup_secret == f"{prefix}/backup"
    assert settings.api_token_secret == f"{prefix}/api-token"
    assert settings.neon_branch_id == outputs["neonBranchId"]
    # by reference only: no secret value was written
    assert settings.database_url is None and settings.migrator_url is None
    assert settings.backup_url is None
    table = tomllib.loads((cli.cwd / "ptool-ops.toml").read_text())["environments"][stack]
    assert not {"database_url", "migrator_url", "backup_url", "api_token"} & set(table)
    assert "backup_role_arn" not in table and not any(
        "arn:aws:iam" in str(v) for v in table.values()
    )


def test_output_keys_map_the_four_credentials() -> None:
    for output, setting in SECRET_OUTPUTS.items():
        assert OUTPUT_KEYS[output] == setting
    assert OUTPUT_KEYS["backupKeySecret"] == "backup_key_secret"
    assert not WORKFLOW_OUTPUTS & set(OUTPUT_KEYS)
