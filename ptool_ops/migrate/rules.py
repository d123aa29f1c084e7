"""The lint rules: id, default severity, squawk's equivalent, what goes wrong, the safe rewrite.

Rule ids follow squawk's names where squawk has the same rule, so people who know squawk
feel at home; our own rules are named in the same style. ``docs/migrations.md`` shows this
table; ``tests/migrate/test_lint.py`` checks the two agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["RULES", "Finding", "Rule", "Severity"]


class Severity(enum.StrEnum):
    """``error`` blocks ``migrate up`` unless the file allows the rule; ``warning`` never does."""

    error = "error"
    warning = "warning"


@dataclass(frozen=True)
class Rule:
    id: str
    severity: Severity
    squawk: str | None
    summary: str
    fix: str
    allowable: bool = True


_E = Severity.error
_W = Severity.warning

_RULES = [
    Rule(
        "syntax-error",
        _E,
        "syntax-error",
        "The file does not parse; PostgreSQL would reject it.",
        "Fix the SQL at the reported position.",
        allowable=False,
    ),
    Rule(
        "require-concurrent-index-creation",
        _E,
        "require-concurrent-index-creation",
        "CREATE INDEX on an existing table holds a SHARE lock for the whole build: every"
        " INSERT, UPDATE and DELETE on the table waits.",
        "CREATE INDEX CONCURRENTLY in a `-- ptool: no-transaction` migration (drop the"
        " INVALID index it leaves behind if it fails).",
    ),
    Rule(
        "require-concurrent-index-deletion",
        _E,
        "require-concurrent-index-deletion",
        "DROP INDEX takes ACCESS EXCLUSIVE on the index's table: reads and writes wait,"
        " and everything queues behind it while it waits for running queries.",
        "DROP INDEX CONCURRENTLY in a `-- ptool: no-transaction` migration.",
    ),
    Rule(
        "require-concurrent-reindex",
        _E,
        "require-concurrent-reindex",
        "REINDEX blocks writes to the table and reads through the rebuilt indexes.",
        "REINDEX ... CONCURRENTLY in a `-- ptool: no-transaction` migration.",
    ),
    Rule(
        "require-concurrent-partition-detach",
        _E,
        "require-concurrent-partition-detach",
        "DETACH PARTITION takes ACCESS EXCLUSIVE on the parent table.",
        "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY in a no-transaction migration.",
    ),
    Rule(
        "adding-foreign-key-constraint",
        _E,
        "adding-foreign-key-constraint",
        "A new foreign key is checked against every existing row while SHARE ROW EXCLUSIVE"
        " is held on both tables: writes to both wait for the whole scan. Also on a table"
        " this migration created and then filled (INSERT ... SELECT, COPY, CREATE TABLE AS)"
        " when it references an existing table.",
        "ADD CONSTRAINT ... FOREIGN KEY ... NOT VALID, then VALIDATE CONSTRAINT in a later"
        " transaction (it only takes SHARE UPDATE EXCLUSIVE).",
    ),
    Rule(
        "constraint-missing-not-valid",
        _E,
        "constraint-missing-not-valid",
        "A new CHECK constraint scans the whole table under ACCESS EXCLUSIVE (reads and"
        " writes wait); NOT VALID then VALIDATE in the same transaction holds that lock"
        " through the scan just the same.",
        "ADD CONSTRAINT ... NOT VALID in one migration (or transaction), VALIDATE CONSTRAINT"
        " in a later one.",
    ),
    Rule(
        "adding-not-nullable-field",
        _E,
        "adding-not-nullable-field",
        "SET NOT NULL scans the whole table under ACCESS EXCLUSIVE unless a validated"
        " CHECK (col IS NOT NULL) already proves it.",
        "ADD CONSTRAINT c CHECK (col IS NOT NULL) NOT VALID; later VALIDATE CONSTRAINT c;"
        " then SET NOT NULL (no scan) and DROP CONSTRAINT c. On PG 18:"
        " ADD CONSTRAINT c NOT NULL col NOT VALID, then VALIDATE CONSTRAINT c.",
    ),
    Rule(
        "adding-required-field",
        _E,
        "adding-required-field",
        "ADD COLUMN ... NOT NULL without a DEFAULT fails on a non-empty table, and the"
        " running release's INSERTs that omit the column start failing.",
        "Add the column with a non-volatile DEFAULT, or nullable and backfilled, then make"
        " it NOT NULL through a validated CHECK.",
    ),
    Rule(
        "changing-column-type",
        _E,
        "changing-column-type",
        "ALTER COLUMN ... TYPE rewrites the table and its indexes under ACCESS EXCLUSIVE."
        " Not reported when the linter knows the column's type and the change is free"
        " (varchar to text, wider varchar/numeric/timestamp, cidr to inet, timestamp to"
        " timestamptz after SET TimeZone = 'UTC'; the last one is a warning: its indexes"
        " are rebuilt).",
        "Add a new column, dual-write, backfill in batches, switch readers, drop the old"
        " column. For timestamp to timestamptz, SET LOCAL TimeZone = 'UTC' first.",
    ),
    Rule(
        "adding-field-with-default",
        _E,
        "adding-field-with-default",
        "ADD COLUMN with a volatile default (random(), gen_random_uuid(), clock_timestamp(),"
        " serial, identity, STORED generated) rewrites the table under ACCESS EXCLUSIVE."
        " Warning when the default calls a function whose volatility is unknown.",
        "Add the column without a default (or with a constant one), SET DEFAULT for new"
        " rows, then backfill existing rows in batches.",
    ),
    Rule(
        "adding-serial-primary-key-field",
        _E,
        "adding-serial-primary-key-field",
        "ADD PRIMARY KEY builds its index under ACCESS EXCLUSIVE: reads and writes wait.",
        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... PRIMARY KEY USING INDEX.",
    ),
    Rule(
        "disallowed-unique-constraint",
        _E,
        "disallowed-unique-constraint",
        "ADD UNIQUE builds its index under ACCESS EXCLUSIVE: reads and writes wait.",
        "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... UNIQUE USING INDEX.",
    ),
    Rule(
        "renaming-column",
        _E,
        "renaming-column",
        "The running release still uses the old name: its queries fail from the moment"
        " the rename commits until the new release is deployed.",
        "Expand/contract: add the new column, dual-write, backfill, switch readers, drop the"
        " old column in a later release. Allow with a reason if no release uses it.",
    ),
    Rule(
        "renaming-table",
        _E,
        "renaming-table",
        "The running release still uses the old name: its queries fail from the moment"
        " the rename commits.",
        "Create the new table (or a view with the old name), migrate readers and writers,"
        " drop the old one in a later release.",
    ),
    Rule(
        "ban-drop-column",
        _E,
        "ban-drop-column",
        "The running release may still read or write the column: its queries fail, and"
        " the data is gone (only a backup brings it back).",
        "Stop using the column in a release first, then drop it; allow the rule with the"
        " release that stopped using it as the reason.",
    ),
    Rule(
        "ban-drop-table",
        _E,
        "ban-drop-table",
        "The running release may still use the table: its queries fail, and the data is"
        " gone (only a backup brings it back).",
        "Stop using the table in a release first, then drop it; allow the rule with the reason.",
    ),
    Rule(
        "ban-drop-view",
        _E,
        "ban-drop-view",
        "The running release may still query the view or materialized view: its queries"
        " fail with undefined_table (not reported when the same transaction re-creates it).",
        "Stop using the view in a release first, then drop it; allow the rule with the reason.",
    ),
    Rule(
        "ban-drop-schema",
        _E,
        "ban-drop-schema",
        "DROP SCHEMA removes every object in it (with CASCADE) that the running release may"
        " use; without CASCADE it fails if anything is left in it.",
        "Drop the objects in it one by one in earlier releases; allow the rule with the reason.",
    ),
    Rule(
        "ban-drop-default",
        _E,
        "ban-drop-default",
        "DROP DEFAULT on a NOT NULL column: the running release's INSERTs that omit the"
        " column fail with not_null_violation (a warning when the linter does not know"
        " whether the column is NOT NULL).",
        "Keep the default until no release omits the column, then drop it; allow the rule"
        " with the release that started writing it as the reason.",
    ),
    Rule(
        "identifier-too-long",
        _E,
        "identifier-too-long",
        "An identifier longer than 63 bytes (UTF-8) is silently truncated: the object gets"
        " another name than the one written, and two long names can collide.",
        "Shorten the name to at most 63 bytes.",
    ),
    Rule(
        "ban-drop-database",
        _E,
        "ban-drop-database",
        "Dropping a database from a migration destroys everything in it.",
        "Do this by hand, after a backup, never from a migration.",
    ),
    Rule(
        "prefer-repack",
        _E,
        "prefer-repack",
        "VACUUM FULL and CLUSTER rewrite the table under ACCESS EXCLUSIVE: reads and writes"
        " wait for the whole rewrite.",
        "Use pg_repack or pg_squeeze online (REPACK ... CONCURRENTLY on PostgreSQL 19+), or"
        " plain VACUUM.",
    ),
    Rule(
        "ban-lock-table",
        _E,
        None,
        "LOCK TABLE in a mode that blocks writes stalls every writer until the migration"
        " commits (a warning for modes that do not block writes).",
        "Remove it; let each statement take the lock it needs, under lock_timeout.",
    ),
    Rule(
        "ban-disable-row-level-security",
        _E,
        None,
        "DISABLE ROW LEVEL SECURITY on a tenant table lets every tenant read and write"
        " every other tenant's rows (a warning when the table is not known to be a tenant"
        " table).",
        "Keep RLS enabled; change the policies instead (CREATE/ALTER POLICY).",
    ),
    Rule(
        "require-row-level-security",
        _E,
        None,
        "A new tenant table (it has a tenant_id column) without ENABLE ROW LEVEL SECURITY in"
        " the same migration is readable across tenants.",
        "ALTER TABLE ... ENABLE ROW LEVEL SECURITY and CREATE POLICY in the migration that"
        " creates the table.",
    ),
    Rule(
        "ban-concurrent-index-creation-in-transaction",
        _E,
        "ban-concurrent-index-creation-in-transaction",
        "CREATE INDEX CONCURRENTLY cannot run inside a transaction block: the migration fails.",
        "Mark the migration `-- ptool: no-transaction` (and keep other statements out of it).",
    ),
    Rule(
        "ban-non-transactional-statement-in-transaction",
        _E,
        None,
        "The statement (DROP INDEX CONCURRENTLY, REINDEX CONCURRENTLY, VACUUM, CREATE"
        " DATABASE, ALTER SYSTEM, ...) cannot run inside a transaction block: the migration"
        " fails.",
        "Put it in its own migration marked `-- ptool: no-transaction`.",
    ),
    Rule(
        "transaction-nesting",
        _E,
        "transaction-nesting",
        "BEGIN/COMMIT/ROLLBACK inside a migration the runner wraps in a transaction breaks"
        " its all-or-nothing guarantee and the history row written with it.",
        "Remove them, or mark the migration `-- ptool: no-transaction`.",
    ),
    Rule(
        "allow-without-reason",
        _E,
        None,
        "A `-- ptool: allow` directive without a reason: the rule stays in force.",
        "Write `-- ptool: allow RULE -- reason: why it is safe here`.",
        allowable=False,
    ),
    Rule(
        "unknown-directive",
        _E,
        None,
        "A `-- ptool:` comment that is not a known directive, names an unknown rule, or"
        " stands after the first statement: it has no effect.",
        "Use `-- ptool: no-transaction` or `-- ptool: allow RULE -- reason: ...` in the"
        " comment header, before the first statement.",
        allowable=False,
    ),
    Rule(
        "empty-down",
        _E,
        None,
        "The migration's down script holds no statement: `migrate down` would record a revert"
        " that changed nothing.",
        "Write the statements that undo the up script, or declare the migration irreversible"
        " in its down script: `-- ptool: irreversible -- reason: ...` (down then refuses it).",
        allowable=False,
    ),
    Rule(
        "unused-allow",
        _W,
        "unused-ignore",
        "A rule is allowed but nothing in the file triggers it.",
        "Remove the directive.",
        allowable=False,
    ),
]

RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}
"""Every rule by id, in the order the documentation lists them."""


@dataclass(frozen=True)
class Finding:
    """One problem in one file; ``line`` and ``column`` are 1-based."""

    rule: str
    severity: Severity
    file: str
    line: int
    column: int
    message: str
    fix: str
    allowed: bool = False
    allow_reason: str | None = None

    @property
    def blocking(self) -> bool:
        """An error the file does not allow: ``migrate up`` refuses to run."""
        return self.severity is Severity.error and not self.allowed

    def to_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "rule": self.rule,
            "severity": self.severity.value,
            "message": self.message,
            "fix": self.fix,
            "allowed": self.allowed,
            "allow_reason": self.allow_reason,
        }
