"""The query set: the statements the booking API really runs, kept in the repository.

``migrate capture`` merges what ``pg_stat_statements`` shows (and ``--from FILE``) into one
JSON object of the environment's repository, :data:`KEY`. Captures accumulate: Neon resets
the statistics when a compute restarts or suspends, so each capture adds what it saw.

* A **statement** is keyed by its normalised text (``pg_stat_statements``' ``$1``
  placeholders, whitespace collapsed). It carries the calls seen, ``first_seen`` and
  ``last_seen`` (the time of the capture in whose window its calls went up), the app
  versions and roles that ran it, and the counters of the last capture (per database,
  role and query id) from which the next one computes how many calls are new.
* A **capture** (``pg_stat_statements`` only) covers a **window**: from the previous
  capture of the same database (or the statistics' last reset, when later) to its own
  time. A file adds statements but is no window.

What is "current" -- the statements of the deployed app, which every migration must keep
working -- is decided by :meth:`QuerySet.current` (see docs/migrations.md, *Which
statements count*).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ptool_ops.errors import ConfigError, Conflict

if TYPE_CHECKING:
    from ptool_ops.repo.repository import Repository

__all__ = [
    "KEY",
    "Capture",
    "QuerySet",
    "Statement",
    "load",
    "normalise",
    "read_statement_file",
    "update",
]

KEY = "migrate/query-set.json"
FORMAT = "ptool-ops-query-set"
VERSION = 1
_KEEP_CAPTURES = 500


def now() -> datetime:
    return datetime.now(UTC)


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    parsed = datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def normalise(text: str) -> str:
    """Whitespace collapsed, a final ``;`` dropped: the form a statement is keyed by."""
    collapsed = re.sub(r"\s+", " ", text).strip()
    return collapsed[:-1].rstrip() if collapsed.endswith(";") else collapsed


def statement_key(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()[:16]


@dataclass
class Statement:
    text: str
    calls: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    app_versions: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    #: "dbid:userid:queryid" -> {"calls": n, "stats_since": iso} of the last capture
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return statement_key(self.text)

    def seen(
        self, at: datetime, calls: int, version: str | None, role: str | None, source: str
    ) -> None:
        self.calls += calls
        self.first_seen = min(self.first_seen or at, at)
        self.last_seen = max(self.last_seen or at, at)
        pairs = ((version, self.app_versions), (role, self.roles), (source, self.sources))
        for value, into in pairs:
            if value and value not in into:
                into.append(value)

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "calls": self.calls,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "app_versions": self.app_versions,
            "roles": self.roles,
            "sources": self.sources,
            "counters": self.counters,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Statement:
        return cls(
            text=str(doc["text"]),
            calls=int(doc.get("calls") or 0),
            first_seen=_time(doc.get("first_seen")),
            last_seen=_time(doc.get("last_seen")),
            app_versions=[str(v) for v in doc.get("app_versions") or []],
            roles=[str(v) for v in doc.get("roles") or []],
            sources=[str(v) for v in doc.get("sources") or []],
            counters=dict(doc.get("counters") or {}),
        )


@dataclass
class Capture:
    captured_at: datetime
    kind: str  # pg_stat_statements | file
    source: str  # database name, or the file
    window_start: datetime | None
    app_version: str | None
    statements: int  # statements seen in it (calls went up)
    new: int  # statements the set did not hold before

    def to_dict(self) -> dict[str, Any]:
        return {
            "captured_at": _iso(self.captured_at),
            "kind": self.kind,
            "source": self.source,
            "window_start": _iso(self.window_start),
            "app_version": self.app_version,
            "statements": self.statements,
            "new": self.new,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Capture:
        at = _time(doc["captured_at"])
        assert at is not None
        return cls(
            captured_at=at,
            kind=str(doc.get("kind") or "pg_stat_statements"),
            source=str(doc.get("source") or ""),
            window_start=_time(doc.get("window_start")),
            app_version=doc.get("app_version"),
            statements=int(doc.get("statements") or 0),
            new=int(doc.get("new") or 0),
        )


@dataclass
class Current:
    """The statements a migration must keep working, and why these."""

    statements: list[Statement]
    #: when the deployed app version was first seen (None: it never changed)
    app_deploy: datetime | None
    #: a sentence: which statements count
    basis: str


@dataclass
class QuerySet:
    statements: dict[str, Statement] = field(default_factory=dict)
    captures: list[Capture] = field(default_factory=list)

    # --- reading ---------------------------------------------------------------------------

    def windows(self) -> list[Capture]:
        return [c for c in self.captures if c.kind == "pg_stat_statements"]

    def app_deploy(self) -> tuple[datetime | None, str | None]:
        """When the app version of the newest capture was first reported after another
        one (the capture that saw the change), and that version; (None, version) when it
        never changed."""
        windows = [c for c in self.windows() if c.app_version]
        if not windows:
            return None, None
        current = windows[-1].app_version
        first: Capture | None = None
        for capture in reversed(windows):
            if capture.app_version != current:
                break
            first = capture
        assert first is not None
        changed = first is not windows[0]
        return (first.captured_at if changed else None), current

    def current(self) -> Current:
        """The statements of the deployed app: seen in a window that began after its
        deploy (the capture whose window holds the change of version does not count: it
        may hold both versions' statements) -- or, until a window after it exists, those
        seen in that capture; every statement when the version never changed."""
        deploy, version = self.app_deploy()
        every = sorted(self.statements.values(), key=lambda s: s.text)
        if deploy is None:
            return Current(every, None, "every captured statement (no change of app version seen)")
        after = [s for s in every if s.last_seen and s.last_seen > deploy]
        if after:
            return Current(
                after, deploy, f"statements seen after app version {version} was first captured"
            )
        at = [s for s in every if s.last_seen and s.last_seen >= deploy]
        return Current(
            at,
            deploy,
            f"statements of the capture that first saw app version {version} (no window"
            " after it yet)",
        )

    def window_since(self, moment: datetime) -> Capture | None:
        """The newest capture whose window began at or after ``moment``."""
        for capture in reversed(self.windows()):
            if capture.window_start is not None and capture.window_start >= moment:
                return capture
        return None

    def previous_capture(self, source: str) -> Capture | None:
        for capture in reversed(self.windows()):
            if capture.source == source:
                return capture
        return None

    # --- merging ---------------------------------------------------------------------------

    def add(
        self,
        text: str,
        *,
        at: datetime,
        calls: int,
        version: str | None,
        role: str | None,
        source: str,
        counter: tuple[str, int, str | None] | None = None,
    ) -> tuple[bool, bool]:
        """Merge one statement; returns (seen in this capture, new to the set). ``counter``:
        (key, cumulative calls, stats_since) of ``pg_stat_statements``: only the calls since
        the previous capture count (all of them after a reset)."""
        key = statement_key(text)
        entry = self.statements.get(key)
        new = entry is None
        if entry is None:
            entry = Statement(normalise(text))
        delta = calls
        if counter is not None:
            name, total, since = counter
            before = entry.counters.get(name)
            if before is not None and before.get("stats_since") == since:
                previous = int(before.get("calls") or 0)
                delta = total - previous if total >= previous else total
            entry.counters[name] = {"calls": total, "stats_since": since}
        if delta <= 0 and not new:
            return False, False
        entry.seen(at, max(delta, 0), version, role, source)
        self.statements[key] = entry
        return True, new

    def record(self, capture: Capture) -> None:
        self.captures.append(capture)
        del self.captures[:-_KEEP_CAPTURES]

    # --- (de)serialising -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "captures": [c.to_dict() for c in self.captures],
            "statements": {k: s.to_dict() for k, s in sorted(self.statements.items())},
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = KEY) -> QuerySet:
        if doc.get("format") != FORMAT or not isinstance(doc.get("version"), int):
            raise ConfigError(f"{where} is not a ptool-ops query set.")
        if doc["version"] > VERSION:
            raise ConfigError(
                f"the query set {where} has format version {doc['version']}; this ptool-ops"
                f" knows up to {VERSION}.",
                hint="Upgrade ptool-ops.",
            )
        return cls(
            statements={
                k: Statement.from_dict(v) for k, v in (doc.get("statements") or {}).items()
            },
            captures=[Capture.from_dict(c) for c in doc.get("captures") or []],
        )


def load(repo: Repository) -> QuerySet | None:
    """The repository's query set, or None when nothing was captured yet."""
    found = repo.storage.read_versioned(KEY)
    if found is None:
        return None
    try:
        doc = json.loads(found.data)
    except ValueError:
        raise ConfigError(f"{repo.url}/{KEY} is not JSON.") from None
    return QuerySet.from_dict(doc, f"{repo.url}/{KEY}")


def update(repo: Repository, change: Any, *, attempts: int = 5) -> QuerySet:
    """Read, ``change(query_set)``, write back only if nobody wrote meanwhile (compare and
    swap on the object's tag); retried when a concurrent capture won."""
    repo.ensure_initialised()
    for _ in range(attempts):
        found = repo.storage.read_versioned(KEY)
        qs = (
            QuerySet()
            if found is None
            else QuerySet.from_dict(json.loads(found.data), f"{repo.url}/{KEY}")
        )
        change(qs)
        data = json.dumps(qs.to_dict(), indent=1).encode() + b"\n"
        if found is None:
            ok = repo.storage.create_exclusive(KEY, data) is not None
        else:
            ok = repo.storage.replace_if(KEY, data, found.tag) is not None
        if ok:
            return qs
    raise Conflict(
        f"the query set {repo.url}/{KEY} kept changing while this capture merged into it.",
        hint="Another capture runs at the same time; run this one again.",
    )


@dataclass(frozen=True)
class FileStatement:
    text: str
    calls: int = 1
    last_seen: datetime | None = None
    app_version: str | None = None


def read_statement_file(path: Path) -> list[FileStatement]:
    """``--from FILE``: JSON ``{"statements": [{"query": ..., "calls": n, "last_seen": iso,
    "app_version": ...}, ...]}`` (or a bare list of such objects or strings), else text
    with one statement per line (blank lines and ``--`` comment lines skipped)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}.") from None
    stripped = raw.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise ConfigError(f"{path} is not valid JSON: {err}.") from None
        items = doc.get("statements") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise ConfigError(f'{path}: expected a list under "statements".')
        out = []
        for n, item in enumerate(items, 1):
            if isinstance(item, str):
                item = {"query": item}
            if not isinstance(item, dict) or not isinstance(item.get("query"), str):
                raise ConfigError(f'{path}: statement {n} has no "query" text.')
            try:
                out.append(
                    FileStatement(
                        item["query"],
                        int(item.get("calls") or 1),
                        _time(item.get("last_seen")),
                        item.get("app_version"),
                    )
                )
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{path}: statement {n}: {err}.") from None
        return [s for s in out if normalise(s.text)]
    return [
        FileStatement(line.strip())
        for line in raw.splitlines()
        if line.strip() and not line.strip().startswith("--")
    ]
