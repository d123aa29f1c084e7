"""The WAL archive's layout in the repository, its identity, and the names of what it holds.

Layout (under the repository root; ``<archive>`` is ``wal`` for the environment's own
cluster and ``restores/<id>/wal`` for a restored cluster until it is promoted)::

    pitr/<archive>/archive.json              identity: system identifier, WAL format, segment size
    pitr/<archive>/<TLI>/<segment>.zst       a WAL segment (also ``.partial`` and ``.backup`` files)
    pitr/<archive>/history/<TLI>.history.zst a timeline history file

Every object is zstd with a content checksum and size in its frame, so a damaged object
fails to decompress; with a backup key it is then sealed as every repository object is
(AES-256-GCM chunks, :mod:`ptool_ops.repo.crypto`), which authenticates it. The identity is
written by the first push (create-if-absent) and every later push and fetch compares the
segment's own page header against it: a foreign cluster is refused, never mixed in.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from ptool_ops.errors import ConfigError

ROOT = "pitr"
LIVE = "wal"
SUFFIX = ".zst"

#: a segment: timeline, log, segment (8 hex digits each), maybe ``.partial``
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")
#: a backup history file: segment + ``.<offset 8 hex>.backup``
BACKUP_FILE = re.compile(r"^([0-9A-F]{8})[0-9A-F]{16}\.[0-9A-F]{8}\.backup$")
HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")

#: the long page header that opens every segment (little-endian on the hosts we run on):
#: xlp_magic, xlp_info, xlp_tli, xlp_pageaddr, xlp_rem_len, pad, xlp_sysid, seg size, block size
_LONG_HEADER = struct.Struct("<HHIQI4xQII")


def current_timeline(conn: Any) -> int:
    """The timeline the server behind ``conn`` writes WAL on: a promoted server's control
    file names the old timeline until its first checkpoint, its current WAL file's name
    does not (in recovery: the control file's)."""
    row = conn.execute(
        "SELECT CASE WHEN pg_catalog.pg_is_in_recovery()"
        " THEN (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint())"
        " ELSE ('x' || substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8))"
        "::bit(32)::int END"
    ).fetchone()
    assert row is not None
    return int(row[0])


def prefix(archive: str = LIVE) -> str:
    return f"{ROOT}/{archive.strip('/')}"


def restore_archive(restore_id: str) -> str:
    """The archive a restored cluster writes to until it is promoted."""
    return f"restores/{restore_id}/wal"


def object_key(name: str, archive: str = LIVE) -> str:
    """Where the file PostgreSQL calls ``name`` is stored; refuses names that are not WAL."""
    base = prefix(archive)
    if HISTORY.match(name):
        return f"{base}/history/{name}{SUFFIX}"
    match = SEGMENT.match(name) or BACKUP_FILE.match(name)
    if match is None:
        raise ConfigError(
            f"{name!r} is not the name of a WAL segment, timeline history or backup file.",
            hint="archive_command passes %p and restore_command %f %p; check the setting.",
        )
    return f"{base}/{match.group(1)}/{name}{SUFFIX}"


def identity_key(archive: str = LIVE) -> str:
    return f"{prefix(archive)}/archive.json"


@dataclass(frozen=True)
class Identity:
    """Which cluster an archive belongs to."""

    system_identifier: str  # a uint64, as text (JSON numbers lose digits)
    wal_magic: int  # XLOG_PAGE_MAGIC: changes with every major version's WAL format
    segment_size: int
    block_size: int
    major: int | None = None

    def to_json(self) -> bytes:
        return json.dumps({"format": "ptool-ops-wal-archive", **asdict(self)}, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Identity:
        try:
            raw = json.loads(data)
            return cls(
                system_identifier=str(raw["system_identifier"]),
                wal_magic=int(raw["wal_magic"]),
                segment_size=int(raw["segment_size"]),
                block_size=int(raw["block_size"]),
                major=int(raw["major"]) if raw.get("major") is not None else None,
            )
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{where} is not a WAL archive identity this ptool-ops can read.",
                hint="Check the repository; if it was damaged, move the archive aside and "
                "take a new base backup.",
            ) from None

    def same_cluster(self, other: Identity) -> bool:
        return (
            self.system_identifier == other.system_identifier
            and self.wal_magic == other.wal_magic
            and self.segment_size == other.segment_size
        )

    def describe(self) -> str:
        major = f"PostgreSQL {self.major}, " if self.major else ""
        return f"system {self.system_identifier} ({major}WAL format {self.wal_magic:#06x})"


def segment_identity(data: bytes, major: int | None = None) -> Identity | None:
    """The identity a segment's first page declares (None: not a segment's start)."""
    if len(data) < _LONG_HEADER.size:
        return None
    magic, info, _tli, _addr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(data)
    if not info & 0x0002:  # XLP_LONG_HEADER
        return None
    return Identity(str(sysid), magic, seg_size, blcksz, major)


@dataclass(frozen=True)
class Segment:
    timeline: int
    number: int  # segment number within the timeline's LSN space
    partial: bool = False

    @classmethod
    def parse(cls, name: str, segment_size: int) -> Segment | None:
        match = SEGMENT.match(name)
        if match is None:
            return None
        per_log = 0x100000000 // segment_size
        log, seg = int(match.group(2), 16), int(match.group(3), 16)
        return cls(int(match.group(1), 16), log * per_log + seg, bool(match.group(4)))

    def name(self, segment_size: int) -> str:
        per_log = 0x100000000 // segment_size
        return f"{self.timeline:08X}{self.number // per_log:08X}{self.number % per_log:08X}"

    def start_lsn(self, segment_size: int) -> int:
        return self.number * segment_size


def segment_of(lsn: int, timeline: int, segment_size: int) -> Segment:
    return Segment(timeline, lsn // segment_size)


@dataclass(frozen=True)
class Stored:
    """One archived file, as listed."""

    name: str
    size: int
    modified: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "modified": self.modified.isoformat()}


def names_in(keys: Iterator[tuple[str, int, datetime]], archive: str = LIVE) -> Iterator[Stored]:
    """The archived files among ``(key, size, modified)`` listed under the archive."""
    base = prefix(archive) + "/"
    for key, size, modified in keys:
        if not key.startswith(base) or not key.endswith(SUFFIX):
            continue
        name = key.rsplit("/", 1)[-1][: -len(SUFFIX)]
        if SEGMENT.match(name) or HISTORY.match(name) or BACKUP_FILE.match(name):
            yield Stored(name, size, modified)
