"""Retention of ``pitr/`` and replacing live with a restored copy.

The policy on in-memory manifests first (chains, timelines, order by LSN never by name, the
WAL cutoff); then, on one archiving local environment: three full base backups and an
incremental, pruned to the newest two fulls (dry run first), the window after it, a prune
that meets a running base backup; a restore from the oldest kept backup that replaces live
(a new timeline in the live archive, the old data directory kept), and one whose
replacement fails and puts live back."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ptool_ops.pitr import archive
from ptool_ops.pitr.base import BaseBackupManifest
from ptool_ops.pitr.prune import _plan_wal
from ptool_ops.pitr.retention import Ancestry, Policy, decide, parse_history
from ptool_ops.pitr.target import format_lsn, parse_lsn
from tests.conftest import Cli
from tests.pitr.conftest import PitrEnv

SEG = 16 * 1024 * 1024
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _backup(
    backup_id: str, end_segment: int, *, chain: list[str] | None = None, timeline: int = 1
) -> BaseBackupManifest:
    chain = chain or [backup_id]
    return BaseBackupManifest(
        id=backup_id,
        environment="local",
        started_at=T0,
        finished_at=T0,
        tool_version="test",
        objects=[],
        backup_type="full" if len(chain) == 1 else "incremental",
        parent=chain[-2] if len(chain) > 1 else None,
        chain=chain,
        system_identifier="1",
        server_version_num=170000,
        timeline=timeline,
        start_lsn=format_lsn(end_segment * SEG - 0x1000),
        end_lsn=format_lsn(end_segment * SEG),
        end_time=T0 + timedelta(minutes=end_segment),
        next_xid=end_segment,
        label=backup_id,
        pg_basebackup_version="17",
        tar_object="t",
        manifest_object="m",
    )


def _kept(decisions: list[Any]) -> dict[str, list[str]]:
    return {d.id: d.reasons for d in decisions if d.keep}


def test_the_newest_fulls_are_kept_with_every_incremental_on_them_ordered_by_lsn() -> None:
    # names sort against time: the policy must go by recorded LSN
    old, mid, new = _backup("z-old", 3), _backup("m-mid", 6), _backup("a-new", 9)
    inc_old = _backup("y-inc", 4, chain=["z-old", "y-inc"])
    inc_mid = _backup("n-inc", 7, chain=["m-mid", "n-inc"])
    inc_mid2 = _backup("b-inc", 8, chain=["m-mid", "n-inc", "b-inc"])
    decisions = decide([inc_mid2, new, old, inc_old, mid, inc_mid], Policy(keep_full=2))
    assert [d.id for d in decisions] == ["a-new", "b-inc", "n-inc", "m-mid", "y-inc", "z-old"]
    kept = _kept(decisions)
    assert set(kept) == {"a-new", "m-mid", "n-inc", "b-inc"}
    assert "incremental on kept full m-mid" in kept["b-inc"]
    assert any("needed by kept incremental" in r for r in kept["n-inc"])


def test_an_incremental_is_never_kept_without_its_chain() -> None:
    full_old, full_new = _backup("F1", 2), _backup("F2", 5)
    # the newest backup is an incremental on the older full: its full stays with it
    newest = _backup("I1", 8, chain=["F1", "I1"])
    broken = _backup("I0", 3, chain=["F0", "I0"])  # its full is gone
    kept = _kept(decide([full_old, full_new, newest, broken], Policy(keep_full=1)))
    assert set(kept) == {"F2", "I1", "F1"}
    assert any("needed by kept incremental I1" in r for r in kept["F1"])
    gone = next(d for d in decide([broken, full_new], Policy(1)) if d.id == "I0")
    assert not gone.keep and "chain is broken: F0" in gone.reasons[0]


def test_the_full_the_current_timeline_descends_from_is_kept() -> None:
    """Timeline 2 branched from 1 at segment 7; a later backup on timeline 1 (the
    abandoned branch) is the newest full, but timeline 2's history leads through F1."""
    history = parse_history(2, "# comment\n1\t0/7000000\tafter a restore\n")
    assert history == Ancestry(2, {1: parse_lsn("0/7000000")})
    f1, f_abandoned = _backup("F1", 5), _backup("F-old-branch", 9)
    kept = _kept(decide([f1, f_abandoned], Policy(keep_full=1), history))
    assert "newest full on timeline 2's history" in kept["F1"]
    assert "F-old-branch" in kept  # the newest, and the newest full


def test_wal_below_the_oldest_kept_start_goes_on_every_timeline_history_stays() -> None:
    names = [archive.Segment(1, n).name(SEG) for n in range(1, 11)]
    names += [archive.Segment(2, n).name(SEG) for n in range(7, 13)]
    names += [
        "00000002.history",
        f"{archive.Segment(1, 7).name(SEG)}.partial",
        f"{archive.Segment(1, 3).name(SEG)}.00000028.backup",
    ]
    stored = [archive.Stored(n, 100, T0) for n in reversed(names)]
    kept = [_backup("F2", 9, timeline=2), _backup("F3", 12, timeline=2)]  # F2 starts in 8
    plan = _plan_wal(stored, kept, SEG, {archive.object_key(n): 100 for n in names})
    deleted = [k.rsplit("/", 1)[-1].removesuffix(".zst") for k in plan.keys]
    numbers = [archive.Segment.parse(n[:24], SEG).number for n in deleted]  # type: ignore[union-attr]
    assert numbers == sorted(numbers)  # oldest first: an interrupted prune leaves no gap
    assert max(numbers) == 7 and plan.first_kept == archive.Segment(2, 8).name(SEG)
    assert "00000002.history" not in deleted and plan.histories_kept == 1
    assert archive.Segment(2, 7).name(SEG) in deleted  # below the cutoff on timeline 2 too
    assert plan.oldest_kept == "F2" and plan.bytes == 100 * len(deleted)


# --- on a real archive ----------------------------------------------------------------------


@dataclass
class Backups:
    full: list[str]  # oldest first
    incremental: str
    between: str  # an LSN after F2 ended, before the incremental


@pytest.fixture(scope="module")
def cli_mod(pitr_env: PitrEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    patch = pytest.MonkeyPatch()
    yield pitr_env.configure(Cli(tmp_path_factory.mktemp("retention"), patch))
    patch.undo()


def _insert(pitr_env: PitrEnv, slug: str) -> None:
    with pitr_env.owner() as conn:
        conn.execute("INSERT INTO booking.tenants (slug, name) VALUES (%s, %s)", (slug, slug))


def _slugs(pitr_env: PitrEnv) -> set[str]:
    with pitr_env.owner() as conn:
        return {r[0] for r in conn.execute("SELECT slug FROM booking.tenants").fetchall()}


@pytest.fixture(scope="module")
def backups(pitr_env: PitrEnv, cli_mod: Cli) -> Backups:
    def take(*flags: str) -> str:
        made = cli_mod("pitr", "base-backup", *flags, "-o", "json")
        assert made.exit_code == 0, made.output
        return str(made.json()["id"])

    f1 = take()
    _insert(pitr_env, "after-f1")
    assert cli_mod("pitr mark before-f2").exit_code == 0  # before every kept backup soon
    f2 = take()
    _insert(pitr_env, "after-f2")
    with pitr_env.owner() as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    _insert(pitr_env, "after-between")
    inc = take("--incremental")
    f3 = take()
    pitr_env.wait_archived()
    return Backups([f1, f2, f3], inc, row[0])


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _audit(cli: Cli, action: str) -> list[dict[str, Any]]:
    return [r for r in cli.audit_events() if r["action"] == action]


def test_prune_refuses_while_a_base_backup_runs(
    pitr_env: PitrEnv, cli_mod: Cli, backups: Backups
) -> None:
    from ptool_ops.repo.file import FileStorage
    from ptool_ops.repo.lease import Lease

    storage = FileStorage(pitr_env.repo)
    lease = Lease(storage, "pitr/base/20261201T000000Z-beef-F/lease.json", "pitr base-backup")
    with lease.create():
        before = _tree(pitr_env.repo)
        refused = cli_mod("pitr prune")
        assert refused.exit_code == 6, refused.output
        assert "deleted nothing" in refused.output and "20261201T000000Z-beef-F" in refused.output
        assert before <= _tree(pitr_env.repo)
        dry = cli_mod("pitr prune --dry-run -o json")
        assert dry.exit_code == 0 and "20261201T000000Z-beef-F" in dry.json()["running"]


def test_prune_keeps_the_newest_fulls_their_incrementals_and_the_wal_from_the_oldest(
    pitr_env: PitrEnv, cli_mod: Cli, backups: Backups
) -> None:
    f1, f2, f3 = backups.full
    base = pitr_env.repo / "pitr" / "base"
    # an interrupted upload hours ago (garbage) and one a minute ago (may still be running)
    for name, age in (("20200101T000000Z-dead-F", 7 * 3600), ("20261201T000000Z-new0-F", 60)):
        (base / name).mkdir()
        part = base / name / "base.tar.zst"
        part.write_bytes(b"x" * 1000)
        os.utime(part, (time.time() - age, time.time() - age))
    # the archive of a dropped copy (marked) and of one that may still run (not marked)
    restores = pitr_env.repo / "pitr" / "restores"
    for restore_id, marked in (("20200101T000000Z-0ld0", True), ("20200101T000000Z-a11e", False)):
        (restores / restore_id / "wal").mkdir(parents=True)
        (restores / restore_id / "wal" / "archive.json").write_text("{}")
        if marked:
            (restores / restore_id / "retired.json").write_text('{"reason": "dropped"}')

    before = _tree(pitr_env.repo)
    dry = cli_mod("pitr prune --dry-run -o json")
    assert dry.exit_code == 0, dry.output
    assert _tree(pitr_env.repo) == before  # a dry run deletes nothing
    plan = dry.json()

    done = cli_mod("pitr prune -o json")
    assert done.exit_code == 0, done.output
    result = done.json()
    for data in (plan, result):
        assert {d["id"] for d in data["kept"]} == {f3, f2, backups.incremental}
        assert [d["id"] for d in data["deleted"]] == [f1]
        assert [o["id"] for o in data["incomplete"]] == ["20200101T000000Z-dead-F"]
        assert data["young"] == ["20261201T000000Z-new0-F"]
        assert [r["id"] for r in data["restores_deleted"]] == ["20200101T000000Z-0ld0"]
        assert [r["id"] for r in data["restores_left"]] == ["20200101T000000Z-a11e"]
        assert data["points_deleted"] == ["before-f2"]
        assert data["wal"]["oldest_kept"] == f2 and data["wal"]["deleted"] >= 1
    assert result["bytes_freed"] == plan["bytes_freed"] > 0
    inc = next(d for d in result["kept"] if d["id"] == backups.incremental)
    assert inc["reasons"] == [f"incremental on kept full {f2}"]

    after = _tree(pitr_env.repo)
    assert not any(p.startswith(f"pitr/base/{f1}/") for p in after)
    assert not any("dead-F" in p or "0ld0" in p for p in after)
    assert any("new0-F" in p for p in after) and any("a11e" in p for p in after)
    cutoff = archive.Segment.parse(result["wal"]["first_kept"], SEG)
    assert cutoff is not None
    for path in after:
        if path.startswith("pitr/wal/0000"):
            segment = archive.Segment.parse(Path(path).name[:24], SEG)
            assert segment is not None and segment.number >= cutoff.number

    window = cli_mod("pitr window -o json")
    assert window.exit_code == 0, window.output  # no gap from the oldest kept backup on
    line = window.json()["timelines"][0]
    assert line["earliest_backup"] == f2 and line["gaps"] == []
    recorded = _audit(cli_mod, "pitr.prune")
    assert recorded and recorded[-1]["outcome"] == "ok"
    assert recorded[-1]["details"]["deleted"] == [f1]
    # the young leftover goes once it is old
    for part in (base / "20261201T000000Z-new0-F").iterdir():
        os.utime(part, (time.time() - 7 * 3600, time.time() - 7 * 3600))


def _copy_root(pitr_env: PitrEnv, restore_id: str) -> Path:
    return pitr_env.restores / restore_id


def test_replace_makes_the_copy_live_on_a_new_timeline_and_keeps_the_old_directory(
    pitr_env: PitrEnv, cli_mod: Cli, backups: Backups
) -> None:
    made = cli_mod(f"pitr restore --lsn {backups.between} --no-compare -o json")
    assert made.exit_code == 0, made.output
    copy = made.json()
    assert copy["plan"]["chain"] == [backups.full[1]]  # the oldest kept backup's WAL stayed
    _insert(pitr_env, "live-after-the-restore")

    replaced = cli_mod(f"pitr promote {copy['id']} --replace -y -o json")
    assert replaced.exit_code == 0, replaced.output
    result = replaced.json()
    assert result["timeline"] == 2 and result["promoted_now"]
    assert result["port"] == pitr_env.env.state().port
    old = Path(result["old_data_dir"])
    assert (old / "PG_VERSION").exists() and old.parent == pitr_env.local
    assert "00000002.history" in result["wal_copied"]
    slugs = _slugs(pitr_env)
    assert "after-f2" in slugs and "after-between" not in slugs
    assert "live-after-the-restore" not in slugs  # live is the copy now
    with pitr_env.owner() as conn:
        assert conn.execute(
            "SELECT pg_is_in_recovery(), timeline_id FROM pg_control_checkpoint()"
        ).fetchone() == (False, 2)

    # the new timeline continues the live archive (its server's own pushes land there)
    _insert(pitr_env, "on-timeline-2")
    pitr_env.wait_archived()
    wal = pitr_env.repo / "pitr" / "wal"
    assert list((wal / "00000002").glob("*.zst"))
    assert (wal / "history" / "00000002.history.zst").exists()
    window = cli_mod("pitr window -o json")
    assert window.exit_code == 1 and window.json()["current_timeline"] == 2
    assert cli_mod("pitr base-backup").exit_code == 0
    assert cli_mod("pitr window").exit_code == 0
    state = json.loads((_copy_root(pitr_env, copy["id"]) / "restore.json").read_text())
    assert state["state"] == "replaced"
    assert (pitr_env.repo / "pitr" / "restores" / copy["id"] / "retired.json").exists()
    assert _audit(cli_mod, "pitr.replace")[-1]["outcome"] == "ok"
    assert cli_mod(f"pitr drop {copy['id']} -y").exit_code == 0


def test_a_failed_replacement_puts_live_back(
    pitr_env: PitrEnv, cli_mod: Cli, backups: Backups, monkeypatch: pytest.MonkeyPatch
) -> None:
    _insert(pitr_env, "in-the-second-copy")
    with pitr_env.owner() as conn:
        row = conn.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    _insert(pitr_env, "live-keeps-this")
    pitr_env.wait_archived()
    made = cli_mod(f"pitr restore --lsn {row[0]} --no-compare -o json")
    assert made.exit_code == 0, made.output
    copy = made.json()
    kept_before = sorted(pitr_env.local.glob("pgdata.replaced-*"))

    from ptool_ops.booking import invariants

    failing = SimpleNamespace(to_dict=lambda: {"ok": False, "violation_count": 1})
    monkeypatch.setattr(invariants, "run_invariants", lambda conn: failing)
    failed = cli_mod(f"pitr promote {copy['id']} --replace -y")
    assert failed.exit_code == 8, failed.output
    assert "live was put back" in failed.output and "invariant" in failed.output
    monkeypatch.undo()

    assert "live-keeps-this" in _slugs(pitr_env)
    with pitr_env.owner() as conn:
        assert conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone() == (2,)
    assert sorted(pitr_env.local.glob("pgdata.replaced-*")) == kept_before
    assert (_copy_root(pitr_env, copy["id"]) / "pgdata" / "PG_VERSION").exists()
    assert not (pitr_env.repo / "pitr" / "wal" / "00000003").exists()
    assert _audit(cli_mod, "pitr.replace")[-1]["outcome"] == "failed"

    assert cli_mod(f"pitr drop {copy['id']} -y").exit_code == 0
    dry = cli_mod("pitr prune --dry-run -o json").json()
    dropped = {r["id"]: r["reason"] for r in dry["restores_deleted"]}
    assert dropped.get(copy["id"]) == "dropped"
    assert [o["id"] for o in dry["incomplete"]] == ["20261201T000000Z-new0-F"]


def test_replace_is_refused_for_a_server_ptool_ops_does_not_run(cli: Cli) -> None:
    cli.write_config(
        '[environments.selfhosted]\nkind = "postgres"\n'
        'database_url = "postgresql://operator@127.0.0.1:1/booking"\n'
        f'repo_url = "file://{cli.cwd}/repo"\n'
    )
    refused = cli("--env selfhosted pitr promote 20261201T000000Z-abcd --replace -y")
    assert refused.exit_code == 7, refused.output
    assert "administrator" in refused.output and "pitr promote ID" in refused.output
