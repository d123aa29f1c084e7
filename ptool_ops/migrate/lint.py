"""The migration linter: lock-unsafe and release-breaking DDL, found in the parse tree.

:func:`lint_sql` lints one script; :func:`lint_paths` lints files and directories and
returns a :class:`LintReport`. Findings carry the rule id (squawk's name where squawk
has the rule, see :data:`ptool_ops.migrate.rules.RULES`), the severity, the position,
what goes wrong in production, and the safe rewrite.

A file's comment header may hold directives (see ``docs/migrations.md``)::

    -- ptool: no-transaction
    -- ptool: run-as login
    -- ptool: phase expand                                                 (or contract)
    -- ptool: irreversible -- reason: the dropped column's data is gone   (down scripts)
    -- ptool: allow ban-drop-column -- reason: unused since release 41

An allowed finding is still reported (``allowed=True``) but does not block ``up``.

Unlike squawk, statements on a table created earlier in the same file are exempt from
the rules about existing tables (no readers yet, nothing to block): an index on it needs
no CONCURRENTLY, a constraint no NOT VALID.

Files linted together are read in order, and what earlier ones created (tenant tables,
columns with their types and NOT NULL: :class:`~ptool_ops.migrate.rules_schema.KnownSchema`)
is known to the later ones. ``start_after`` still reads the files up to that version for
this knowledge but reports only the findings of the files after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ptool_ops.errors import ConfigError
from ptool_ops.migrate.lock_analysis import SqlSyntaxError, split_statements
from ptool_ops.migrate.rules import RULES, Finding, Severity
from ptool_ops.migrate.rules_check import Checker
from ptool_ops.migrate.rules_names import identifier_findings, long_identifiers
from ptool_ops.migrate.rules_schema import KnownSchema

__all__ = [
    "RULES",
    "DirectiveProblem",
    "Directives",
    "Finding",
    "LintReport",
    "Severity",
    "collect_files",
    "lint_file",
    "lint_paths",
    "lint_sql",
    "long_identifiers",
    "migration_version",
    "parse_directives",
]


@dataclass(frozen=True)
class DirectiveProblem:
    line: int
    rule: str
    message: str


@dataclass
class Directives:
    """What a file's header says: run outside a transaction, run as the login rather than
    the schema owner (a migration that creates roles), rules allowed (with reasons)."""

    no_transaction: bool = False
    run_as_login: bool = False
    irreversible: bool = False  # a down script that cannot undo its up (down refuses it)
    phase: str | None = None  # expand or contract (the compatibility gate reads it)
    allows: dict[str, str] = field(default_factory=dict)
    allow_lines: dict[str, int] = field(default_factory=dict)
    problems: list[DirectiveProblem] = field(default_factory=list)


_DIRECTIVE = re.compile(r"^--\s*ptool\s*:\s*(?P<body>.*?)\s*$", re.IGNORECASE)
_ALLOW = re.compile(r"^allow(?:\s+(?P<rest>.*))?$", re.IGNORECASE)
_REASON = re.compile(r"\breason\s*:", re.IGNORECASE)


def _comments(text: str) -> list[tuple[int, str, bool]]:
    """(line, text, in_header) of every ``--`` comment, found with PostgreSQL's lexer."""
    from pglast.parser import scan

    starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]

    def line_of(offset: int) -> int:
        import bisect

        return bisect.bisect_right(starts, offset)

    out: list[tuple[int, str, bool]] = []
    header = True
    try:
        tokens = scan(text)
    except Exception:  # the lexer failed (unterminated literal): header lines only
        for number, line in enumerate(text.splitlines(), 1):
            stripped = line.strip()
            if stripped and not stripped.startswith("--"):
                break
            if stripped:
                out.append((number, stripped, True))
        return out
    for token in tokens:
        if token.name == "SQL_COMMENT":
            out.append((line_of(token.start), text[token.start : token.end + 1].strip(), header))
        elif token.name != "C_COMMENT":
            header = False
    return out


def parse_directives(text: str) -> Directives:
    """Read the ``-- ptool:`` directives of a file's comment header."""
    result = Directives()
    for line, comment, in_header in _comments(text):
        match = _DIRECTIVE.match(comment)
        if match is None:
            continue
        body = match.group("body")
        if not in_header:
            result.problems.append(
                DirectiveProblem(
                    line,
                    "unknown-directive",
                    f"directive {comment!r} stands after the first"
                    " statement and has no effect; move it to the header",
                )
            )
            continue
        if body.lower() == "no-transaction":
            result.no_transaction = True
            continue
        if re.fullmatch(r"run-as\s+login", body, re.IGNORECASE):
            result.run_as_login = True
            continue
        if re.fullmatch(r"irreversible(\s+--\s*reason\s*:.*)?", body, re.IGNORECASE):
            result.irreversible = True
            continue
        phase = re.fullmatch(r"phase\s+(expand|contract)", body, re.IGNORECASE)
        if phase:
            result.phase = phase.group(1).lower()
            continue
        allow = _ALLOW.match(body)
        if allow is None:
            result.problems.append(
                DirectiveProblem(line, "unknown-directive", f"unknown directive {comment!r}")
            )
            continue
        parts = _REASON.split(allow.group("rest") or "", maxsplit=1)
        reason = parts[1].strip() if len(parts) > 1 else ""
        rules = parts[0].split("--", 1)[0]
        for rule in (r for r in re.split(r"[\s,]+", rules) if r):
            known = RULES.get(rule)
            if known is None or not known.allowable:
                what = "unknown rule" if known is None else "a rule that cannot be allowed"
                result.problems.append(
                    DirectiveProblem(line, "unknown-directive", f"allow names {what} {rule!r}")
                )
            elif not reason:
                result.problems.append(
                    DirectiveProblem(
                        line,
                        "allow-without-reason",
                        f"allow {rule} has no reason, so {rule} stays in force",
                    )
                )
            else:
                result.allows[rule] = reason
                result.allow_lines[rule] = line
    return result


def _apply_directives(findings: list[Finding], directives: Directives, path: str) -> list[Finding]:
    used: set[str] = set()
    out: list[Finding] = []
    for finding in findings:
        reason = directives.allows.get(finding.rule)
        if reason is not None and RULES[finding.rule].allowable:
            used.add(finding.rule)
            finding = Finding(
                finding.rule,
                finding.severity,
                finding.file,
                finding.line,
                finding.column,
                finding.message,
                finding.fix,
                allowed=True,
                allow_reason=reason,
            )
        out.append(finding)
    for problem in directives.problems:
        spec = RULES[problem.rule]
        out.append(
            Finding(problem.rule, spec.severity, path, problem.line, 1, problem.message, spec.fix)
        )
    for rule, line in directives.allow_lines.items():
        if rule not in used:
            spec = RULES["unused-allow"]
            out.append(
                Finding(
                    "unused-allow",
                    spec.severity,
                    path,
                    line,
                    1,
                    f"{rule} is allowed but nothing in the file triggers it",
                    spec.fix,
                )
            )
    return sorted(out, key=lambda f: (f.line, f.column, f.rule))


def _lint(
    text: str,
    path: str,
    transactional: bool | None,
    schema: KnownSchema,
    pg_version: int,
) -> list[Finding]:
    """Lint one file, updating ``schema`` with what it creates and changes."""
    directives = parse_directives(text)
    if transactional is None:
        transactional = not directives.no_transaction
    linter = Checker(text, path, transactional, schema, pg_version)
    try:
        statements = split_statements(text, path=path)
    except SqlSyntaxError as err:
        spec = RULES["syntax-error"]
        finding = Finding(
            "syntax-error", spec.severity, path, err.line, err.column, err.reason, spec.fix
        )
        return [finding]
    for statement in statements:
        linter.statement(statement)
    linter.finish()
    found = linter.findings + identifier_findings(text, path)
    return _apply_directives(found, directives, path)


def lint_sql(
    text: str,
    *,
    path: str = "<sql>",
    transactional: bool | None = None,
    known_tenant_tables: Iterable[str] = frozenset(),
    pg_version: int = 18,
) -> list[Finding]:
    """Lint one migration script.

    ``transactional``: whether the runner wraps the script in a transaction; ``None``
    takes it from the file's ``-- ptool: no-transaction`` directive (default: yes).
    ``known_tenant_tables``: tables known to carry ``tenant_id`` (``schema.name`` or
    ``name``), in addition to those the file itself creates. ``pg_version``: the
    server's major version (ALTER TYPE ... ADD VALUE may not run in a transaction
    before 12). Never raises for bad SQL: a file that does not parse is a
    ``syntax-error`` finding.
    """
    schema = KnownSchema(tenant_tables=set(known_tenant_tables))
    return _lint(text, path, transactional, schema, pg_version)


@dataclass
class LintReport:
    """The findings of a lint run over some files."""

    files: list[str]
    findings: list[Finding]
    start_after: str | None = None
    skipped: list[str] = field(default_factory=list)  # read for context, findings not kept

    @property
    def errors(self) -> list[Finding]:
        """Errors that are not allowed: these block ``migrate up`` and make lint exit 1."""
        return [f for f in self.findings if f.blocking]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity is Severity.warning and not f.allowed]

    @property
    def allowed(self) -> list[Finding]:
        return [f for f in self.findings if f.allowed]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, object]:
        """The stable JSON shape of ``migrate lint --output json`` (version 1)."""
        return {
            "version": 1,
            "ok": self.ok,
            "files": self.files,
            "start_after": self.start_after,
            "skipped": self.skipped,
            "summary": {
                "files": len(self.files),
                "skipped": len(self.skipped),
                "errors": len(self.errors),
                "warnings": len(self.warnings),
                "allowed": len(self.allowed),
            },
            "findings": [f.to_dict() for f in self.findings],
        }


def _skipped(path: Path) -> bool:
    """Down and verify scripts are linted only when named explicitly."""
    name = path.name
    return name in ("down.sql", "verify.sql") or name.endswith((".down.sql", ".verify.sql"))


def collect_files(paths: Sequence[str | Path]) -> list[Path]:
    """The ``.sql`` files to lint: named files as given; directories searched recursively
    (sorted, skipping ``*.down.sql`` and ``*.verify.sql``). A missing path is a ConfigError.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(p for p in sorted(path.rglob("*.sql")) if p.is_file() and not _skipped(p))
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(
                f"{path} does not exist.", hint="Name .sql files or directories that hold them."
            )
    return files


def lint_file(
    path: str | Path,
    *,
    transactional: bool | None = None,
    known_tenant_tables: Iterable[str] = frozenset(),
    pg_version: int = 18,
) -> list[Finding]:
    """Lint one file (see :func:`lint_sql`); unreadable text is a ``syntax-error`` finding."""
    schema = KnownSchema(tenant_tables=set(known_tenant_tables))
    return _lint_path(Path(path), transactional, schema, pg_version)


def _lint_path(
    path: Path,
    transactional: bool | None,
    schema: KnownSchema,
    pg_version: int,
) -> list[Finding]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        spec = RULES["syntax-error"]
        message = f"not UTF-8 text ({err.reason} at byte {err.start})"
        return [Finding("syntax-error", spec.severity, str(path), 1, 1, message, spec.fix)]
    return _lint(text, str(path), transactional, schema, pg_version)


_VERSION = re.compile(r"^(\d[\d-]*?)(?=[_.]|$)")
_PLAIN_NAMES = ("up.sql", "down.sql", "verify.sql")


def migration_version(path: str | Path) -> str | None:
    """The version a migration file's name starts with: ``0007`` of ``0007_x.up.sql``, or of
    its directory for ``<version>_name/up.sql`` layouts (``2017-01-01-000000`` of
    ``2017-01-01-000000_x/up.sql``); None when the name starts with no version."""
    path = Path(path)
    name = path.parent.name if path.name in _PLAIN_NAMES else path.name
    match = _VERSION.match(name)
    return match.group(1) if match else None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _label(path: Path) -> str:
    name = path.parent.name if path.name in _PLAIN_NAMES else path.name
    return name.removesuffix(".sql").removesuffix(".up")


def _after(path: Path, start_after: str) -> bool:
    version = migration_version(path)
    return version is None or _version_key(version) > _version_key(start_after)


def lint_paths(
    paths: Sequence[str | Path],
    *,
    transactional: bool | None = None,
    known_tenant_tables: Iterable[str] = frozenset(),
    pg_version: int = 18,
    start_after: str | None = None,
) -> LintReport:
    """Lint files and directories in order (see :func:`collect_files`).

    What one file creates is known to the files after it: tenant tables (a later
    migration that disables RLS on them is an error), columns' types and NOT NULL.

    ``start_after``: a migration version (``0042``) or label (``0042_orders``). Files up
    to and including it are read for that knowledge only, their findings dropped (a
    project adopting ptool-ops with a long history lints only its new migrations); files
    whose name carries no version are always linted. A version no file has is a
    ConfigError, so a typo never silently turns the linter off.
    """
    files = collect_files(paths)
    schema = KnownSchema(tenant_tables=set(known_tenant_tables))
    version = _start_version(files, start_after) if start_after else None
    findings: list[Finding] = []
    linted: list[str] = []
    skipped: list[str] = []
    for path in files:
        found = _lint_path(path, transactional, schema, pg_version)
        if version is not None and not _after(path, version):
            skipped.append(str(path))
            continue
        linted.append(str(path))
        findings.extend(found)
        findings.extend(_check_down(path))
    return LintReport(linted, findings, start_after, skipped)


def _start_version(files: Sequence[Path], start_after: str) -> str:
    """The version ``start_after`` names (itself or the version of the label it names)."""
    wanted = start_after.strip()
    for path in files:
        version = migration_version(path)
        if version is not None and wanted in (version, _label(path)):
            return version
    versions = sorted({v for p in files if (v := migration_version(p)) is not None})
    known = (
        f"the versions run from {versions[0]} to {versions[-1]}"
        if versions
        else ("no file name starts with a version")
    )
    raise ConfigError(
        f"--start-after {start_after}: no migration has that version ({known}).",
        hint="Name the version of the last migration linted before adopting ptool-ops"
        " (e.g. 0042 or 0042_orders), or unset lint_start_after.",
    )


def down_is_empty(text: str, path: str) -> bool:
    """A down script without a statement (comments only) that does not declare itself
    irreversible. A script that does not parse is not empty: its syntax error is reported."""
    if parse_directives(text).irreversible:
        return False
    try:
        return not split_statements(text, path=path)
    except SqlSyntaxError:
        return False


def _check_down(up: Path) -> list[Finding]:
    """``NNNN_name.up.sql``: its down script must undo something, or say it cannot."""
    if not up.name.endswith(".up.sql"):
        return []
    down = up.with_name(up.name.removesuffix(".up.sql") + ".down.sql")
    try:
        text = down.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []  # a missing down is the runner's error (load_migrations)
    if not down_is_empty(text, str(down)):
        return []
    spec = RULES["empty-down"]
    return [
        Finding("empty-down", spec.severity, str(down), 1, 1, "the down script is empty", spec.fix)
    ]
