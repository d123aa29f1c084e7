"""The CLI skeleton: global options anywhere, exit codes, one-sentence errors, JSON output."""

from __future__ import annotations

import socket

import pytest

from ptool_ops.cli.args import hoist_global_options

from .conftest import CANARY, Cli, TestDatabase


def assert_one_clear_error(result_output: str) -> None:
    assert "Traceback" not in result_output
    error_lines = [line for line in result_output.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, result_output


def test_global_options_are_hoisted_from_anywhere() -> None:
    assert hoist_global_options(["backup", "list", "--env", "prod", "-o", "json"]) == [
        "--env",
        "prod",
        "-o",
        "json",
        "backup",
        "list",
    ]
    assert hoist_global_options(["status", "--env=staging", "--yes", "-v"]) == [
        "--env=staging",
        "--yes",
        "-v",
        "status",
    ]
    # after '--' everything belongs to the command
    assert hoist_global_options(["x", "--", "--yes"]) == ["x", "--", "--yes"]


def test_options_before_and_after_the_command_agree(cli: Cli) -> None:
    cli.write_config("[environments.staging]\n")
    before = cli("--env staging --output json config show")
    after = cli("config show --env staging --output json")
    assert before.exit_code == after.exit_code == 0
    assert before.json() == after.json()
    assert before.json()["name"] == "staging"


def test_help_lists_commands(cli: Cli) -> None:
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("local", "status", "config"):
        assert command in result.stdout


def test_unknown_environment_exits_3_with_one_sentence(cli: Cli) -> None:
    result = cli("--env nope status")
    assert result.exit_code == 3
    assert_one_clear_error(result.stderr)
    assert "unknown environment 'nope'" in result.stderr


def test_bad_toml_exits_3(cli: Cli) -> None:
    cli.write_config("[environments.prod\n")
    result = cli("--env prod status")
    assert result.exit_code == 3
    assert_one_clear_error(result.stderr)
    assert "is not valid TOML" in result.stderr


def test_errors_are_json_for_machines(cli: Cli) -> None:
    result = cli("status --env nope -o json")
    assert result.exit_code == 3
    assert result.json()["error"] == "config"
    assert result.json()["exit_code"] == 3


def test_database_down_exits_4_naming_the_target(cli: Cli) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    cli.write_config(
        "[environments.staging]\n"
        f'database_url = "postgresql://booking_app_a:{CANARY}@127.0.0.1:{port}/booking"\n'
    )
    result = cli("--env staging status")
    assert result.exit_code == 4
    assert f"127.0.0.1:{port}" in result.output
    assert "Connection refused" in result.output
    assert "Traceback" not in result.output
    as_json = cli("--env staging status -o json")
    assert as_json.exit_code == 4
    assert as_json.json()["database"]["reachable"] is False


def test_wrong_password_exits_4_without_echoing_it(cli: Cli, booking_db: TestDatabase) -> None:
    url = booking_db.role_url("booking_readonly").replace("@127", "x@127")
    cli.write_config(f'[environments.staging]\ndatabase_url = "{url}"\n')
    result = cli("--env staging status")
    assert result.exit_code == 4
    assert "password authentication failed" in result.output
    password = url.split(":")[2].split("@")[0]
    assert password not in result.output


def test_local_commands_refuse_other_environments(cli: Cli) -> None:
    cli.write_config("[environments.prod]\n")
    result = cli("local up --env prod")
    assert result.exit_code == 3
    assert "not on 'prod'" in result.stderr


def test_config_check_names_failing_key(cli: Cli) -> None:
    cli.write_config('[environments.prod]\napi_url = "ftp://x"\n')
    result = cli("--env prod config check")
    assert result.exit_code == 3
    assert "'api_url'" in result.stderr
    assert "[environments.prod]" in result.stderr


def test_config_show_never_shows_secret_values(cli: Cli) -> None:
    cli.write_config(f'[environments.prod]\ndatabase_url = "postgresql://u:{CANARY}@h/db"\n')
    result = cli("--env prod config show -o json")
    assert result.exit_code == 0
    assert result.json()["database_url"] == "(set)"
    assert result.json()["api_token"] == "(set)"


@pytest.mark.parametrize("command", ["local reset", "local reset --env local"])
def test_destructive_command_without_terminal_or_yes_is_refused(cli: Cli, command: str) -> None:
    marker = cli.cwd / ".ptool" / "local" / "keep"
    marker.parent.mkdir(parents=True)
    marker.write_text("data")
    result = cli(command)
    assert result.exit_code == 7
    assert "needs confirmation" in result.stderr
    assert marker.read_text() == "data"


def test_tables_printed_to_a_pipe_are_not_cut(cli: Cli) -> None:
    """Output to a pipe or file is as wide as it needs: no cell cut with '…' or wrapped."""
    from ptool_ops.settings import EnvironmentSettings

    description = EnvironmentSettings.model_fields["database_url"].description
    assert description is not None and len(description) > 80
    result = cli("config keys")
    assert result.exit_code == 0
    line = next(ln for ln in result.stdout.splitlines() if ln.strip().startswith("database_url "))
    assert line.rstrip().endswith(description)
    assert "…" not in result.stdout
