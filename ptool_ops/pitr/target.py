"""One recovery target: exactly one of a time (with a zone), an LSN, a transaction id or a
named restore point.

A time without a zone is refused: it would be read in this machine's zone and applied in the
server's (pgbackrest #2452, barman #881). The server is given the instant with a numeric
offset (``2026-12-01 18:49:24.872021+00``); PostgreSQL 18 refuses the ISO ``T…Z`` spelling in
``recovery_target_time``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ptool_ops.errors import UsageError

TargetKind = Literal["time", "lsn", "xid", "name"]

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """``16/B374D848`` → an integer; raises ValueError."""
    match = _LSN.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not an LSN (like 0/3000028)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_time(text: str) -> datetime:
    """An ISO 8601 instant that names its zone (``Z`` or ``+02:00``)."""
    raw = text.strip()
    try:
        moment = datetime.fromisoformat(raw.replace(" ", "T", 1) if " " in raw else raw)
    except ValueError:
        raise UsageError(
            f"--to {text!r} is not an ISO 8601 time.",
            hint="Write it like 2026-12-01T14:01:00+01:00 or 2026-12-01T13:01:00Z.",
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageError(
            f"--to {text!r} has no time zone, so it could mean different instants here and "
            "on the server.",
            hint="Add the zone: 2026-12-01T14:01:00+01:00, or Z for UTC.",
        )
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    time: datetime | None = None
    lsn: int | None = None
    xid: int | None = None
    name: str | None = None

    @classmethod
    def from_options(
        cls,
        *,
        to: str | None = None,
        lsn: str | None = None,
        xid: str | None = None,
        restore_point: str | None = None,
    ) -> Target:
        given = [
            (flag, value)
            for flag, value in (
                ("--to", to),
                ("--lsn", lsn),
                ("--xid", xid),
                ("--restore-point", restore_point),
            )
            if value is not None
        ]
        if len(given) != 1:
            named = ", ".join(flag for flag, _ in given) or "none"
            raise UsageError(
                f"give exactly one recovery target (given: {named}).",
                hint="Use one of --to TIME, --lsn LSN, --xid XID or --restore-point NAME.",
            )
        if to is not None:
            return cls("time", time=parse_time(to))
        if lsn is not None:
            try:
                return cls("lsn", lsn=parse_lsn(lsn))
            except ValueError:
                raise UsageError(
                    f"--lsn {lsn!r} is not an LSN.", hint="Write it as PostgreSQL does: 0/3000028."
                ) from None
        if xid is not None:
            if not xid.strip().isdigit() or int(xid) < 3:
                raise UsageError(
                    f"--xid {xid!r} is not a transaction id.",
                    hint="Give the number txid_current() or pg_current_xact_id() returned.",
                )
            return cls("xid", xid=int(xid))
        assert restore_point is not None
        if not restore_point.strip() or len(restore_point) > 63:
            raise UsageError(
                f"--restore-point {restore_point!r} is not a restore point name.",
                hint="Give the name used with 'ptool-ops pitr mark' (at most 63 characters).",
            )
        return cls("name", name=restore_point)

    def describe(self) -> str:
        if self.kind == "time" and self.time is not None:
            return f"time {self.time.isoformat()}"
        if self.kind == "lsn" and self.lsn is not None:
            return f"LSN {format_lsn(self.lsn)}"
        if self.kind == "xid":
            return f"transaction {self.xid}"
        return f"restore point {self.name!r}"

    def server_settings(self) -> dict[str, str]:
        """The ``recovery_target_*`` setting for postgresql.auto.conf."""
        if self.kind == "time" and self.time is not None:
            return {"recovery_target_time": self.time.strftime("%Y-%m-%d %H:%M:%S.%f+00")}
        if self.kind == "lsn" and self.lsn is not None:
            return {"recovery_target_lsn": format_lsn(self.lsn)}
        if self.kind == "xid":
            return {"recovery_target_xid": str(self.xid)}
        return {"recovery_target_name": str(self.name)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "time": self.time.isoformat() if self.time else None,
            "lsn": format_lsn(self.lsn) if self.lsn is not None else None,
            "xid": self.xid,
            "name": self.name,
        }
