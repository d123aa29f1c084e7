"""Migration files: ``NNNN_name.up.sql``, ``NNNN_name.down.sql`` and an optional
``NNNN_name.verify.sql`` whose SELECTs must each return one row holding ``true``.

Checksums are over normalised text (CRLF, trailing whitespace and trailing blank lines do
not count), so an editor's line endings never look like a changed migration.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from ptool_ops.migrate.lint import LintReport

__all__ = [
    "PHASES",
    "MigrationError",
    "MigrationFiles",
    "checksum",
    "load_migrations",
    "migration_phase",
    "run_verify",
    "without_phase_findings",
]

#: ``-- ptool: phase expand|contract`` (see :mod:`ptool_ops.migrate.compat`)
PHASES = ("expand", "contract")
_PHASE = re.compile(r"^--\s*ptool\s*:\s*phase\s+(?P<phase>\S+)\s*$", re.IGNORECASE)

_FILE_RE = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.(?P<kind>up|down|verify)\.sql$"
)


class MigrationError(RuntimeError):
    """A verify script found the schema is not what its migration promised."""


@dataclass(frozen=True)
class MigrationFiles:
    """The files of one migration version."""

    version: str
    name: str
    up: Path
    down: Path
    verify: Path | None

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"

    @property
    def checksum(self) -> str:
        """sha256 of the normalised up script (see :func:`checksum`)."""
        return checksum(self.up.read_text(encoding="utf-8"))


def checksum(script: str) -> str:
    """sha256 hex digest of ``script`` normalised: CRLF to LF, trailing whitespace
    stripped from each line, trailing blank lines dropped."""
    lines = [line.rstrip() for line in script.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def load_migrations(directory: Path) -> list[MigrationFiles]:
    """The migrations in ``directory``, sorted by version.

    Raises :class:`ValueError` when a file is misnamed, a version has two names, or an
    up script has no down script (or the other way round).
    """
    if not directory.is_dir():
        raise ValueError(f"The migrations directory {directory} does not exist.")
    found: dict[str, dict[str, Path]] = {}
    names: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILE_RE.match(path.name)
        if match is None:
            raise ValueError(
                f"Migration file {path.name} is misnamed: expected "
                "NNNN_snake_name.up.sql, .down.sql or .verify.sql."
            )
        version, name, kind = match["version"], match["name"], match["kind"]
        if names.setdefault(version, name) != name:
            raise ValueError(
                f"Migration {version} has files under two names, "
                f"{names[version]!r} and {name!r}; rename one."
            )
        found.setdefault(version, {})[kind] = path
    migrations: list[MigrationFiles] = []
    for version in sorted(found):
        files = found[version]
        label = f"{version}_{names[version]}"
        if "up" not in files:
            raise ValueError(f"Migration {label} has no up script ({label}.up.sql).")
        if "down" not in files:
            raise ValueError(
                f"Migration {label} has no down script: add {label}.down.sql "
                "so that it can be rolled back."
            )
        migrations.append(
            MigrationFiles(
                version=version,
                name=names[version],
                up=files["up"],
                down=files["down"],
                verify=files.get("verify"),
            )
        )
    return migrations


def run_verify(conn: psycopg.Connection[Any], script: str, *, label: str) -> None:
    """Run the verify queries in ``script``; raise :class:`MigrationError` unless every
    one of them returns exactly one row holding ``true``."""
    with conn.cursor() as cur:
        cur.execute(script)
        index = 0
        while True:
            index += 1
            if cur.description is not None:
                rows = cur.fetchall()
                if len(rows) != 1 or len(rows[0]) != 1 or rows[0][0] is not True:
                    raise MigrationError(
                        f"Verification of migration {label} failed: query {index} "
                        f"returned {rows!r} instead of a single true."
                    )
            if not cur.nextset():
                break


def migration_phase(script: str) -> str | None:
    """The phase a script's comment header declares (``-- ptool: phase expand`` or
    ``contract``), or None. An unknown phase is a :class:`ValueError`."""
    for line in script.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        match = _PHASE.match(stripped)
        if match is None:
            continue
        phase = match["phase"].lower()
        if phase not in PHASES:
            raise ValueError(
                f"unknown phase {match['phase']!r} in {stripped!r}: expected expand or contract"
            )
        return phase
    return None


def without_phase_findings(report: LintReport) -> LintReport:
    """A lint report without the ``unknown-directive`` findings of a well-formed ``-- ptool:
    phase expand|contract`` line (the runner reads that directive; the linter may not know
    it)."""
    from dataclasses import replace

    known = re.compile(r"ptool\s*:\s*phase\s+(expand|contract)\b", re.IGNORECASE)
    kept = [
        f
        for f in report.findings
        if not (
            f.rule == "unknown-directive"
            and known.search(f.message)
            and "after the first" not in f.message
        )
    ]
    return replace(report, findings=kept)
