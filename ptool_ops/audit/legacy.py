"""The trail before it moved into the repository: ``<audit_dir>/<environment>.jsonl``.

That file was a hash chain on whichever machine ran the command. The first command that
writes to the repository's trail from such a machine carries its records over (each keeps
its time, actor, action, outcome and details; ``imported`` names the file, line and old
hash), records an ``audit.import`` event saying how many and whether the file's own chain
was intact, and renames the file to ``<environment>.jsonl.imported`` so nothing is carried
twice. An ``flock`` on the file keeps two commands on one machine from both importing it.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptool_ops.audit.trail import GENESIS, digest

if TYPE_CHECKING:
    from ptool_ops.audit.trail import Trail

SUFFIX = ".imported"


def check(lines: list[str]) -> tuple[list[tuple[int, dict[str, Any]]], int | None, str | None]:
    """The file's records (with their line numbers), the first bad line and why."""
    records: list[tuple[int, dict[str, Any]]] = []
    prev, bad, why = GENESIS, None, None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            claimed = record.pop("hash")
        except (ValueError, KeyError, AttributeError, TypeError):
            record, claimed = {"action": "?", "outcome": "unreadable", "raw": line[:200]}, None
            bad, why = bad or number, why or "not a JSON audit record"
        else:
            if bad is None and record.get("prev") != prev:
                bad, why = number, "chain broken: prev mismatch"
            elif bad is None and digest(record) != claimed:
                bad, why = number, "record altered: hash mismatch"
            record["hash"] = claimed
            prev = str(claimed)
        records.append((number, record))
    return records, bad, why


def import_file(trail: Trail, path: Path) -> int:
    """Carry ``path``'s records into ``trail`` (see the module); how many were carried."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not path.exists():  # another command carried it while this one waited
            return 0
        records, bad, why = check(handle.read().splitlines())
        for number, record in records:
            details = record.get("details")
            trail.append(
                str(record.get("action", "?")),
                str(record.get("outcome", "?")),
                details if isinstance(details, dict) else {},
                at=str(record.get("at")) if record.get("at") else None,
                by=str(record.get("actor")) if record.get("actor") else None,
                extra={"imported": {"file": str(path), "line": number, "hash": record.get("hash")}},
            )
        trail.append(
            "audit.import",
            "ok",
            {"file": str(path), "records": len(records), "intact": bad is None}
            | ({"first_bad_line": bad, "problem": why} if bad is not None else {}),
        )
        path.rename(path.with_name(path.name + SUFFIX))
    return len(records)
