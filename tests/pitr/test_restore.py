"""Point-in-time restore end to end on the local environment, as the deployed roles: seed,
base backup, more writes, a tenant's bookings deleted -- then restores to a time, an LSN,
a transaction, a restore point and through an incremental chain, each checked against what
was true then. Then the archive's faults: a missing segment, a damaged one, a repository
the archiver cannot write to."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ptool_ops import privileges
from tests.conftest import Cli
from tests.pitr.conftest import PitrEnv


@dataclass
class Scenario:
    tenant: str  # whose bookings were deleted
    bookings_before: int
    time: str
    lsn: str
    xid: int
    live_bookings_after: int


def _wait_archived(pitr_env: PitrEnv, timeout: float = 30) -> None:
    pitr_env.wait_archived(timeout)


def _tenant_insert(conn: psycopg.Connection[Any], slug: str) -> None:
    conn.execute("INSERT INTO booking.tenants (slug, name) VALUES (%s, %s)", (slug, slug))


@pytest.fixture(scope="module")
def scenario(pitr_env: PitrEnv, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    cli = pitr_env.configure(Cli(tmp_path_factory.mktemp("scenario"), pytest.MonkeyPatch()))
    assert cli("local seed --tenants 3 --bookings 600").exit_code == 0
    made = cli("pitr base-backup -o json")
    assert made.exit_code == 0, made.output
    assert made.json()["backup_type"] == "full"
    with pitr_env.owner() as conn:
        row = conn.execute(
            "SELECT tenant_id::text, count(*) FROM booking.bookings GROUP BY 1 ORDER BY 2 DESC"
        ).fetchone()
        assert row is not None
        tenant, before = row[0], int(row[1])
        with conn.transaction():
            _tenant_insert(conn, "xid-marker")
            xid_row = conn.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert xid_row is not None
        time.sleep(0.3)
        stamp = conn.execute("SELECT now(), pg_current_wal_insert_lsn()::text").fetchone()
        assert stamp is not None
        time.sleep(0.3)
        assert cli("pitr mark before-delete").exit_code == 0
        time.sleep(0.3)
        conn.execute("DELETE FROM booking.bookings WHERE tenant_id = %s", (tenant,))
        _tenant_insert(conn, "after-the-delete")
        after = conn.execute("SELECT count(*) FROM booking.bookings").fetchone()
    _wait_archived(pitr_env)
    return Scenario(
        tenant=tenant,
        bookings_before=before,
        time=stamp[0].isoformat(),
        lsn=stamp[1],
        xid=int(xid_row[0]),
        live_bookings_after=int(after[0]) if after else 0,
    )


@pytest.fixture
def cli_env(pitr_env: PitrEnv, cli: Cli) -> Cli:
    return pitr_env.configure(cli)


def _copy(pitr_env: PitrEnv, port: int) -> psycopg.Connection[Any]:
    params = conninfo_to_dict(pitr_env.env.facts.role_url(privileges.OWNER))
    params["port"] = str(port)
    return psycopg.connect(make_conninfo("", **params), autocommit=True)


@pytest.fixture
def restored(pitr_env: PitrEnv, cli_env: Cli) -> Iterator[list[dict[str, Any]]]:
    """Restores made by a test; dropped after it (each copy is a running server)."""
    made: list[dict[str, Any]] = []
    yield made
    for result in made:
        assert cli_env(f"pitr drop {result['id']} -y").exit_code == 0


def _restore(cli: Cli, restored: list[dict[str, Any]], args: str) -> dict[str, Any]:
    result = cli(f"pitr restore {args} -o json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = result.json()
    restored.append(data)
    return data


def _state(conn: psycopg.Connection[Any], tenant: str) -> tuple[int, set[str]]:
    row = conn.execute(
        "SELECT count(*) FROM booking.bookings WHERE tenant_id = %s", (tenant,)
    ).fetchone()
    slugs = {r[0] for r in conn.execute("SELECT slug FROM booking.tenants").fetchall()}
    return (int(row[0]) if row else -1), slugs


@pytest.mark.parametrize("how", ["time", "lsn", "xid", "restore-point"])
def test_restore_brings_back_what_was_deleted_and_nothing_after(
    how: str,
    scenario: Scenario,
    pitr_env: PitrEnv,
    cli_env: Cli,
    restored: list[dict[str, Any]],
) -> None:
    args = {
        "time": f"--to {scenario.time}",
        "lsn": f"--lsn {scenario.lsn}",
        "xid": f"--xid {scenario.xid}",
        "restore-point": "--restore-point before-delete",
    }[how]
    data = _restore(cli_env, restored, args)
    assert data["ok"] and data["state"] == "paused"
    assert data["invariants"]["ok"]
    assert len(data["plan"]["chain"]) == 1
    comparison = data["comparison"]
    assert comparison["tenants_differing"] >= 1
    bookings = next(t for t in comparison["tables"] if t["table"] == "booking.bookings")
    assert bookings["delta"] == scenario.bookings_before

    with _copy(pitr_env, data["port"]) as copy:
        count, slugs = _state(copy, scenario.tenant)
        assert copy.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    assert count == scenario.bookings_before  # every deleted booking is back
    assert "xid-marker" in slugs  # committed before every target
    assert "after-the-delete" not in slugs  # written after the target
    with pitr_env.owner() as live:  # live untouched
        live_count, live_slugs = _state(live, scenario.tenant)
    assert live_count == 0 and "after-the-delete" in live_slugs


def test_incremental_chain_and_promote(
    scenario: Scenario, pitr_env: PitrEnv, cli_env: Cli, restored: list[dict[str, Any]]
) -> None:
    with pitr_env.owner() as conn:  # ~5 % of the rows change
        conn.execute(
            "UPDATE booking.bookings SET note = 'changed' WHERE id IN"
            " (SELECT id FROM booking.bookings ORDER BY id LIMIT 30)"
        )
    incremental = cli_env("pitr base-backup --incremental -o json")
    assert incremental.exit_code == 0, incremental.output
    inc = incremental.json()
    assert inc["backup_type"] == "incremental" and len(inc["chain"]) == 2
    with pitr_env.owner() as conn:
        _tenant_insert(conn, "after-the-incremental")
        time.sleep(0.3)
        target = conn.execute("SELECT now()").fetchone()
        assert target is not None
        time.sleep(0.3)
        _tenant_insert(conn, "too-late")
    _wait_archived(pitr_env)

    data = _restore(cli_env, restored, f"--to {target[0].isoformat()} --promote")
    assert data["plan"]["chain"] == inc["chain"]
    assert data["state"] == "promoted" and data["invariants"]["ok"]
    with _copy(pitr_env, data["port"]) as copy:
        _, slugs = _state(copy, scenario.tenant)
        changed = copy.execute(
            "SELECT count(*) FROM booking.bookings WHERE note = 'changed'"
        ).fetchone()
        assert copy.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    assert "after-the-incremental" in slugs and "too-late" not in slugs
    assert changed == (30,)


def test_a_time_after_the_last_commit_restores_to_the_archive_end(
    scenario: Scenario, pitr_env: PitrEnv, cli_env: Cli, restored: list[dict[str, Any]]
) -> None:
    """An idle database writes no commit after the target, so PostgreSQL never sees the
    target passed ("recovery ended before the target"): the copy stops at the end of the
    archive instead, which is the same state. (Not 'pitr mark': like every command it
    anchors its audit event in the database, a commit after the target.)"""
    with pitr_env.owner() as conn:
        _tenant_insert(conn, "last-commit")
        time.sleep(0.3)
        target = conn.execute("SELECT now()").fetchone()
    assert target is not None
    _wait_archived(pitr_env)  # a segment switch: WAL without a commit
    data = _restore(cli_env, restored, f"--to {target[0].isoformat()}")
    assert data["state"] == "paused" and data["invariants"]["ok"]
    assert data["plan"]["target_lsn"] is not None  # where it stopped instead
    with _copy(pitr_env, data["port"]) as copy:
        _, slugs = _state(copy, scenario.tenant)
    assert "last-commit" in slugs


def test_targets_outside_the_window_are_refused_before_anything_is_made(
    scenario: Scenario, pitr_env: PitrEnv, cli_env: Cli
) -> None:
    before = sorted(pitr_env.restores.glob("*"))
    cases = {
        "--to 2020-01-01T00:00:00Z": "before the end of the oldest base backup",
        "--to 2099-01-01T00:00:00Z": "in the future",
        "--lsn FFF/0": "after the newest archived WAL",
        "--restore-point nowhere": "is not recorded",
    }
    for args, words in cases.items():
        result = cli_env(f"pitr restore {args}")
        assert result.exit_code == 7, result.output
        assert words in result.output
    zoneless = cli_env("pitr restore --to 2026-12-01T14:01:00")
    assert zoneless.exit_code == 2 and "no time zone" in zoneless.output
    two = cli_env(f"pitr restore --lsn {scenario.lsn} --xid 5")
    assert two.exit_code == 2 and "exactly one recovery target" in two.output
    assert sorted(pitr_env.restores.glob("*")) == before


def _segment_files(pitr_env: PitrEnv) -> list[Path]:
    return sorted((pitr_env.repo / "pitr" / "wal" / "00000001").glob("*.zst"))


def test_a_missing_segment_is_a_gap_that_stops_window_and_restore(
    scenario: Scenario, pitr_env: PitrEnv, cli_env: Cli
) -> None:
    assert cli_env("pitr window").exit_code == 0
    pitr_env.switch_wal()  # a segment after the newest base backup's start
    with pitr_env.owner() as conn:
        _tenant_insert(conn, "before-the-gap")
    _wait_archived(pitr_env)
    segments = _segment_files(pitr_env)
    middle = segments[-2]
    aside = middle.with_name("aside")
    middle.rename(aside)
    try:
        gap = cli_env("pitr window -o json")
        assert gap.exit_code == 1
        name = middle.name.removesuffix(".zst")
        assert any(name in p for p in gap.json()["problems"])
        text = cli_env("pitr window")
        assert f"gap: {name} is missing" in text.output
        before = sorted(pitr_env.restores.glob("*"))
        with pitr_env.owner() as conn:
            now = conn.execute("SELECT now()").fetchone()
            _tenant_insert(conn, "after-the-gap")
        _wait_archived(pitr_env)
        assert now is not None
        refused = cli_env(f"pitr restore --to {now[0].isoformat()}")
        assert refused.exit_code == 7 and f"{name} is missing" in refused.output
        assert sorted(pitr_env.restores.glob("*")) == before
    finally:
        aside.rename(middle)
    assert cli_env("pitr window").exit_code == 0


def _damage(segment: Path) -> bytes:
    """Flip one bit in the middle of an archived segment; its original bytes."""
    good = segment.read_bytes()
    damaged = bytearray(good)
    damaged[len(damaged) // 2] ^= 0x01
    segment.write_bytes(bytes(damaged))
    return good


def test_a_damaged_segment_stops_the_restore_instead_of_promoting(
    scenario: Scenario, pitr_env: PitrEnv, cli_env: Cli, restored: list[dict[str, Any]]
) -> None:
    victim = _segment_files(pitr_env)[-2]
    good = _damage(victim)
    try:
        with pitr_env.owner() as conn:
            now = conn.execute("SELECT now()").fetchone()
            _tenant_insert(conn, "after-the-damage")
        assert now is not None
        _wait_archived(pitr_env)
        result = cli_env(f"pitr restore --to {now[0].isoformat()} --promote")
        assert result.exit_code == 8, result.output
        assert "stopped before reaching" in result.output
        assert "damaged" in result.output  # the restore command's own sentence
        copies = [p for p in pitr_env.restores.glob("*") if (p / "restore.json").exists()]
        restored.extend({"id": p.name} for p in copies if p.name not in {r["id"] for r in restored})
    finally:
        victim.write_bytes(good)


def test_a_drill_whose_restore_stops_drops_its_copy(
    scenario: Scenario, pitr_env: PitrEnv, cli_env: Cli
) -> None:
    """The point-in-time drill made a copy whose recovery stopped at a damaged segment:
    the drill fails naming why, and the copy it made (a directory, maybe a server) is
    gone, as after a drill that passed."""
    with pitr_env.owner() as conn:
        _tenant_insert(conn, "before-the-drill")
    _wait_archived(pitr_env)
    victim = _segment_files(pitr_env)[-2]
    good = _damage(victim)
    before = {p.name for p in pitr_env.restores.glob("*")}
    try:
        drilled = cli_env("drill run -o json")
    finally:
        victim.write_bytes(good)
    assert drilled.exit_code != 0, drilled.output
    part = next(p for p in drilled.json()["parts"] if p["kind"] == "point-in-time")
    assert not part["ok"] and "stopped before reaching" in part["problems"][0], part
    assert part["details"]["dropped"] is True
    assert {p.name for p in pitr_env.restores.glob("*")} == before


def test_a_repository_the_archiver_cannot_write_loses_no_segment(
    scenario: Scenario, pitr_env: PitrEnv, cli_env: Cli
) -> None:
    timeline_dir = pitr_env.repo / "pitr" / "wal" / "00000001"
    with pitr_env.owner() as conn:
        failed_before = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
        timeline_dir.chmod(0o500)  # the server's user can no longer add files
        try:
            _tenant_insert(conn, "while-the-archive-is-down")
            pitr_env.switch_wal()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                failed = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
                if failed != failed_before:
                    break
                time.sleep(0.2)
            assert failed != failed_before, "the archiver never failed"
        finally:
            timeline_dir.chmod(0o700)
    _wait_archived(pitr_env, timeout=90)  # PostgreSQL retried; nothing was skipped
    window = cli_env("pitr window -o json")
    assert window.exit_code == 0, window.output
    assert window.json()["timelines"][0]["gaps"] == []


def test_a_copy_never_inherits_settings_that_point_at_live(tmp_path: Path) -> None:
    """The source's ALTER SYSTEM settings come after ptool.conf: archive, recovery and port
    settings would send the copy's WAL into the live archive."""
    from ptool_ops.local.cluster import LocalServer

    copy = LocalServer(tmp_path / "copy")
    copy.paths.pgdata.mkdir(parents=True)
    (copy.paths.pgdata / "postgresql.conf").write_text("shared_buffers = 128MB\n")
    (copy.paths.pgdata / "postgresql.auto.conf").write_text(
        "# Do not edit this file manually!\n"
        "archive_command = 'cp %p /live/archive/%f'\n"
        "port = '5432'\n"
        "recovery_target_time = '2020-01-01 00:00:00+00'\n"
        "work_mem = '64MB'\n"
    )
    copy.adopt()
    auto = (copy.paths.pgdata / "postgresql.auto.conf").read_text()
    assert "work_mem" in auto
    assert "archive_command" not in auto and "port" not in auto and "recovery_" not in auto
    assert "include 'ptool.conf'" in (copy.paths.pgdata / "postgresql.conf").read_text()
