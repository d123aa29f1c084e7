"""Retention on a synthetic history: pure logic on in-memory candidates, then 'prune' on a
repository of synthetic manifests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from ptool_ops.backup.retention import Candidate, Policy, decide

T0 = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # a Tuesday


def _history(days: int, per_day: int = 2) -> list[Candidate]:
    """Backups at 03:00 and 15:00 every day for ``days`` days back from T0."""
    found = []
    for day in range(days):
        for slot in range(per_day):
            at = T0 - timedelta(days=day) + timedelta(hours=12 * slot)
            found.append(Candidate(at.strftime("%Y%m%dT%H%M%SZ"), at))
    return found


def _kept(decisions: list, policy: Policy) -> list[str]:  # type: ignore[type-arg]
    return [d.id for d in decisions if d.keep]


def test_keep_last_only() -> None:
    history = _history(10)
    kept = _kept(decide(history, Policy(3, 0, 0, 0)), Policy())
    newest = sorted((c for c in history), key=lambda c: c.started_at, reverse=True)[:3]
    assert kept == [c.id for c in newest]


def test_daily_keeps_the_newest_of_each_day() -> None:
    decisions = decide(_history(10), Policy(0, 4, 0, 0))
    kept = [d for d in decisions if d.keep]
    assert [d.started_at.hour for d in kept] == [15, 15, 15, 15]
    assert [d.started_at.date() for d in kept] == [
        (T0 - timedelta(days=n)).date() for n in range(4)
    ]


def test_weekly_and_monthly_buckets() -> None:
    history = _history(120, per_day=1)
    decisions = decide(history, Policy(0, 0, 3, 4))
    kept = {d.id: d.reasons for d in decisions if d.keep}
    weekly = [i for i, r in kept.items() if "weekly" in r]
    monthly = [i for i, r in kept.items() if "monthly" in r]
    assert len(weekly) == 3 and len(monthly) == 4
    # the newest of each ISO week: T0 (a Tuesday), then the Sundays before it
    assert sorted(weekly, reverse=True)[1:] == ["20261122T030000Z", "20261115T030000Z"]
    assert sorted(monthly, reverse=True) == [
        "20261124T030000Z",
        "20261031T030000Z",
        "20260930T030000Z",
        "20260831T030000Z",
    ]
    assert len(kept) == 3 + 4 - 1  # T0 is both the newest weekly and monthly


def test_newest_verified_and_newest_are_always_kept() -> None:
    history = _history(5)
    old_verified = history[-1]
    history[-1] = Candidate(old_verified.id, old_verified.started_at, verified=True)
    decisions = decide(history, Policy(0, 0, 0, 0))
    kept = {d.id: d.reasons for d in decisions if d.keep}
    newest = max(history, key=lambda c: c.started_at)
    assert kept == {history[-1].id: ["newest verified"], newest.id: ["newest"]}


def test_order_is_by_recorded_time_not_by_name() -> None:
    early = Candidate("zzz-named-last", T0 - timedelta(days=3))
    late = Candidate("aaa-named-first", T0)
    assert _kept(decide([early, late], Policy(1, 0, 0, 0)), Policy()) == ["aaa-named-first"]


def test_prune_on_a_repository_of_synthetic_manifests(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from ptool_ops.backup.models import BackupManifest, manifest_key, verified_key
    from ptool_ops.repo.file import FileStorage
    from ptool_ops.repo.manifest import ObjectEntry
    from ptool_ops.repo.repository import Repository

    repo = Repository(FileStorage(tmp_path / "repo"))
    repo.ensure_initialised()
    ids = []
    for n in range(6):
        at = T0 - timedelta(days=n)
        backup_id = at.strftime("%Y%m%dT%H%M%SZ") + "-0000"
        key = f"backups/{backup_id}/data.pgdump.zst"
        entry = repo.write_object(key, [b"x" * 100])
        manifest = BackupManifest(
            id=backup_id,
            environment="t",
            started_at=at,
            finished_at=at,
            tool_version="0",
            objects=[ObjectEntry.model_validate(entry.model_dump())],
            database="d",
            server_version="18",
            server_version_num=180000,
            pg_dump_version="18",
            schema_version="0004",
            start_lsn=None,
            size_bytes=1,
            tables=[],
        )
        repo.storage.put_bytes(manifest_key(backup_id), manifest.to_json())
        ids.append(backup_id)
    repo.put_json(verified_key(ids[4]), {"ok": True, "verified_at": "x"})
    repo.storage.put_bytes("backups/20200101T000000Z-dead/data.pgdump.zst", b"orphan")
    cli.write_config(
        f'[environments.t]\nrepo_url = "file://{tmp_path / "repo"}"\n'
        "backup_keep_last = 2\nbackup_keep_daily = 0\n"
        "backup_keep_weekly = 0\nbackup_keep_monthly = 0\n"
    )
    dry = cli("--env t backup prune --dry-run -o json")
    assert dry.exit_code == 0, dry.output
    plan = dry.json()
    assert sorted(d["id"] for d in plan["kept"]) == sorted([ids[0], ids[1], ids[4]])
    assert plan["orphans"] == []  # younger than an hour
    assert len(list(repo.storage.list("backups/"))) == 6 * 2 + 1 + 1  # data+manifest
    done = cli("--env t backup prune --orphans-older-than 0 -o json")
    assert done.exit_code == 0, done.output
    assert done.json()["orphans"] == ["20200101T000000Z-dead"]
    listed = cli("--env t backup list -o json").json()
    assert sorted(b["id"] for b in listed) == sorted([ids[0], ids[1], ids[4]])
    assert not any("dead" in o.key for o in repo.storage.list("backups/"))
