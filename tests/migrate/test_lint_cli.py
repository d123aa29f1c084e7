"""``ptool-ops migrate lint`` through the real Typer app: formats and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..conftest import Cli

FIXTURES = Path(__file__).parent / "fixtures"


def test_text_output_and_exit_1_on_an_error(cli: Cli) -> None:
    result = cli("migrate", "lint", str(FIXTURES / "bad" / "foreign_key.sql"))
    assert result.exit_code == 1
    assert "foreign_key.sql:2:9: error adding-foreign-key-constraint" in result.stdout
    assert "fix: ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID" in result.stdout
    assert "1 error(s)" in result.stdout
    assert "Traceback" not in result.output


def test_warnings_and_allowed_errors_exit_0(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "warn.sql"
    path.write_text("ALTER TABLE t DISABLE ROW LEVEL SECURITY;\n")
    result = cli("migrate", "lint", str(path), str(FIXTURES / "safe" / "drop_column.sql"))
    assert result.exit_code == 0, result.output
    assert "warning ban-disable-row-level-security" in result.stdout
    assert "allowed ban-drop-column" in result.stdout
    assert "reason: note unused since release 41" in result.stdout


def test_tenant_table_option_turns_the_warning_into_an_error(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "rls.sql"
    path.write_text("ALTER TABLE booking.bookings DISABLE ROW LEVEL SECURITY;\n")
    result = cli("migrate", "lint", str(path), "--tenant-table", "booking.bookings")
    assert result.exit_code == 1


def test_json_output_has_the_stable_schema(cli: Cli) -> None:
    result = cli("migrate", "lint", "--output", "json", str(FIXTURES / "bad"))
    assert result.exit_code == 1
    data = result.json()
    assert data["version"] == 1 and data["ok"] is False
    errors = [f for f in data["findings"] if f["severity"] == "error" and not f["allowed"]]
    assert data["summary"]["errors"] == len(errors) > 10
    assert data["summary"]["warnings"] == 1  # disable_rls: not known to be a tenant table
    keys = {
        "file",
        "line",
        "column",
        "rule",
        "severity",
        "message",
        "fix",
        "allowed",
        "allow_reason",
    }
    assert all(set(f) == keys for f in data["findings"])
    syntax = [f for f in data["findings"] if f["rule"] == "syntax-error"]
    assert [(f["line"], f["column"]) for f in syntax] == [(2, 7)]


def test_github_annotations(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "a,b.sql"
    path.write_text(
        "-- ptool: allow ban-drop-table -- reason: gone: 100%\nDROP TABLE x;\nVACUUM y;\n"
    )
    result = cli("migrate", "lint", "--format", "github", str(path))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].startswith("::notice file=")
    assert "a%2Cb.sql,line=2,col=1,title=ban-drop-table::" in lines[0]
    assert lines[0].endswith("(allowed: gone: 100%25)")
    assert lines[1].startswith("::error file=") and "title=ban-non-transactional" in lines[1]


def test_syntax_error_file_is_a_finding_not_a_traceback(cli: Cli) -> None:
    result = cli("migrate", "lint", str(FIXTURES / "bad" / "syntax_error.sql"))
    assert result.exit_code == 1
    assert "syntax-error" in result.stdout and "TABEL" in result.stdout
    assert "Traceback" not in result.output


def test_missing_path_is_a_config_error(cli: Cli) -> None:
    result = cli("migrate", "lint", "/nonexistent/dir")
    assert result.exit_code == 3
    assert "/nonexistent/dir does not exist" in result.stderr
    json_result = cli("migrate", "lint", "-o", "json", "/nonexistent/dir")
    assert json_result.exit_code == 3 and json_result.json()["error"] == "config"


def test_default_is_the_booking_migrations_and_they_pass(cli: Cli) -> None:
    result = cli("migrate lint -o json")
    assert result.exit_code == 0, result.output
    data = result.json()
    assert data["ok"] and len(data["files"]) >= 4 and data["findings"] == []


def test_help_does_not_import_pglast() -> None:
    code = (
        "import sys\n"
        "from ptool_ops.cli.main import app\n"
        "assert 'pglast' not in sys.modules and 'ptool_ops.migrate.lint' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
