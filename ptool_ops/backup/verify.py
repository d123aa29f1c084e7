"""``backup verify``: re-read every object (checksum, decrypt, decompress); with ``restore``
also restore into a scratch database, run the invariants, compare row counts, drop it."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ptool_ops import privileges
from ptool_ops.audit import audited
from ptool_ops.backup import swap
from ptool_ops.backup.listing import must_exist, resolve
from ptool_ops.backup.models import ObjectCheck, VerifyResult, verified_key
from ptool_ops.backup.restore import (
    default_target,
    drop_database,
    offset_progress,
    plan,
    restore_into,
)
from ptool_ops.repo.errors import CorruptObject

if TYPE_CHECKING:
    from ptool_ops.environment import Environment

Progress = Callable[[str, int, int], None]


def verify(
    env: Environment,
    backup_id: str,
    *,
    restore: bool = False,
    jobs: int = 2,
    progress: Progress | None = None,
) -> VerifyResult:
    """Check a backup; problems are reported in the result (``ok`` false), not raised.
    A wrong key or an unreachable repository raises: the check could not run."""
    report: Progress = progress or (lambda stage, done, total: None)
    clock = time.monotonic()
    repo = env.repository()
    manifest = resolve(repo, backup_id, must_exist=must_exist(env))
    for item in manifest.objects:
        repo.check_key(item)
    result = VerifyResult(manifest.id, True, [])
    with audited(
        env,
        "backup.verify",
        {"backup_id": manifest.id, "restore": restore},
        done=lambda: f"backup {manifest.id} was verified ({'ok' if result.ok else 'problems'})",
    ) as record:
        total = sum(o.raw_size for o in manifest.objects)
        done = 0
        for item in manifest.objects:
            base = done
            try:
                for _chunk in repo.read_object(
                    item, progress=offset_progress(report, "verifying", base, total)
                ):
                    pass
                result.objects.append(ObjectCheck(item.key, True, item.size))
            except CorruptObject as err:
                result.objects.append(ObjectCheck(item.key, False, item.size, err.message))
                result.problems.append(err.message)
            done += item.raw_size
        if restore and not result.problems:
            login = env.database("backup.restore")
            with login.connect() as conn:
                privileges.require(conn, "backup.restore")
            url = login.url
            scratch = default_target(manifest, "verify")
            steps = plan(manifest, scratch, in_place=False, jobs=jobs, current_db="")
            with swap.target_lock(url, scratch):
                swap.clear_leftover(url, scratch, manifest.id)  # of a killed verify
                invariants, mismatches = restore_into(
                    repo,
                    manifest,
                    url,
                    scratch,
                    steps,
                    jobs=jobs,
                    pg_bin_dir=env.pg_bin_dir,
                    progress=report,
                )
                drop_database(url, scratch)
            result.restore = {
                "scratch_database": scratch,
                "invariants": invariants,
                "row_count_mismatches": mismatches,
            }
            if not invariants.get("ok"):
                result.problems.append(
                    f"{invariants.get('violation_count')} invariant violation(s) after restore."
                )
            result.problems.extend(f"row count differs: {m}" for m in mismatches)
        result.ok = not result.problems
        result.elapsed_s = round(time.monotonic() - clock, 3)
        record.details.update({"ok": result.ok, "problems": result.problems[:5]})
        if result.ok:
            repo.put_json(
                verified_key(manifest.id),
                {
                    "ok": True,
                    "backup_id": manifest.id,
                    "verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "restore_tested": restore,
                },
            )
    return result
