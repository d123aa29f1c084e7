"""``migrate capture`` and ``migrate new --rename`` through the CLI; the gate's phase
directive and the query set's rules on in-memory objects."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ptool_ops.migrate.files import load_migrations, migration_phase
from ptool_ops.migrate.queryset import Capture, QuerySet
from tests.conftest import MIGRATOR, OWNER, Cli, TestDatabase


def _config(cli: Cli, db: TestDatabase, tmp_path: Path, extra: str = "") -> None:
    cli.write_config(
        "[environments.t]\n"
        f'database_url = "{db.url(OWNER)}"\n'
        f'migrator_url = "{db.url(MIGRATOR)}"\n'
        f'repo_url = "file://{tmp_path / "repo"}"\n' + extra
    )


def test_capture_cli_and_the_missing_extension(
    cli: Cli, booking_db: TestDatabase, tmp_path: Path
) -> None:
    statements = tmp_path / "run.json"
    statements.write_text(
        json.dumps({"statements": [{"query": "SELECT name FROM booking.tenants WHERE id = $1"}]})
    )
    _config(cli, booking_db, tmp_path)
    done = cli(f"--env t -o json migrate capture --from {statements} --app-version 7")
    assert done.exit_code == 0, done.output
    doc = done.json()
    assert [c["kind"] for c in doc["captures"]] == ["pg_stat_statements", "file"]
    assert doc["statements"] >= 1 and doc["app_version"] == "7"

    _config(cli, booking_db, tmp_path, f'migrate_stats_databases = ["{booking_db.name}"]\n')
    missing = cli("--env t migrate capture")
    assert missing.exit_code == 10, missing.output
    assert "CREATE EXTENSION pg_stat_statements" in missing.output


def test_new_rename_scaffolds_both_halves(cli: Cli, tmp_path: Path) -> None:
    directory = tmp_path / "m"
    directory.mkdir()
    made = cli(f"migrate new note_remark --dir {directory} --rename booking.bookings.note=remark")
    assert made.exit_code == 0, made.output
    expand, contract = load_migrations(directory)
    assert expand.label == "0001_note_remark_expand"
    assert contract.label == "0002_note_remark_contract"
    assert migration_phase(expand.up.read_text()) == "expand"
    assert migration_phase(contract.up.read_text()) == "contract"
    assert "ADD COLUMN remark text" in expand.up.read_text()
    assert "DROP COLUMN note" in contract.up.read_text()
    lint = cli(f"-o json migrate lint {expand.up} {contract.up}")
    rules = {f["rule"] for f in lint.json()["findings"] if not f["allowed"]}
    assert "syntax-error" not in rules
    bad = cli(f"migrate new x --dir {directory} --rename bookings.note")
    assert bad.exit_code == 3 and "SCHEMA.TABLE.COLUMN=NEW" in bad.output


def test_phase_directive() -> None:
    assert migration_phase("-- x\n-- ptool: phase contract\nDROP TABLE t;") == "contract"
    assert migration_phase("DROP TABLE t;\n-- ptool: phase contract\n") is None
    with pytest.raises(ValueError, match="unknown phase"):
        migration_phase("-- ptool: phase shrink\n")


def _at(minutes: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)


def test_which_statements_count() -> None:
    qs = QuerySet()

    def window(minute: int, version: str, *texts: str) -> None:
        for text in texts:
            qs.add(text, at=_at(minute), calls=1, version=version, role=None, source="t")
        start = qs.windows()[-1].captured_at if qs.windows() else None
        qs.record(Capture(_at(minute), "pg_stat_statements", "db", start, version, 1, 0))

    window(0, "1", "SELECT note FROM t", "SELECT id FROM t")
    assert len(qs.current().statements) == 2  # the version never changed: everything
    window(10, "2", "SELECT id FROM t", "SELECT remark FROM t")
    # the capture that saw the change may hold both versions: until a window after it,
    # its statements count (not those only seen before it)
    assert {s.text for s in qs.current().statements} == {"SELECT id FROM t", "SELECT remark FROM t"}
    window(20, "2", "SELECT remark FROM t")
    assert [s.text for s in qs.current().statements] == ["SELECT remark FROM t"]
    assert qs.window_since(_at(5)) is not None and qs.window_since(_at(15)) is None
    # a repeated capture without new calls does not make a statement seen again
    seen, new = qs.add(
        "SELECT id FROM t", at=_at(30), calls=4, version="2", role=None, source="t",
        counter=("1:r:9", 4, "s"),
    )  # fmt: skip
    assert (seen, new) == (True, False)
    assert qs.add(
        "SELECT id FROM t", at=_at(40), calls=4, version="2", role=None, source="t",
        counter=("1:r:9", 4, "s"),
    ) == (False, False)  # fmt: skip
