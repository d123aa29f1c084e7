"""``migrate new``: the next version's up, down and verify files, with their header; with
``--rename``, both halves of a column rename (expand: the new column, a trigger that keeps
the two in step, the backfill; contract: the drop), see docs/migrations.md."""

from __future__ import annotations

import re
from pathlib import Path

from ptool_ops.errors import ConfigError
from ptool_ops.migrate.files import load_migrations

__all__ = ["scaffold", "scaffold_rename"]

_NAME = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(
            f"migration name {name!r} is not lower_case_words (letters, digits, underscores).",
            hint="For example: bookings_status_index.",
        )


def _next_version(directory: Path) -> int:
    try:
        existing = load_migrations(directory)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    version = int(existing[-1].version) + 1 if existing else 1
    if version > 9999:
        raise ConfigError("no free four-digit version is left in this directory.")
    return version


def _write(directory: Path, version: str, name: str, texts: dict[str, str]) -> list[Path]:
    paths = [directory / f"{version}_{name}.{kind}.sql" for kind in texts]
    clash = [p for p in paths if p.exists()]
    if clash:
        raise ConfigError(f"{clash[0]} already exists.")
    for path, text in zip(paths, texts.values(), strict=True):
        path.write_text(text, encoding="utf-8")
    return paths


_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _rename_target(spec: str) -> tuple[str, str, str, str]:
    """``schema.table.column=new`` -> its four plain identifiers."""
    left, sep, new = spec.partition("=")
    parts = left.split(".")
    if not sep or len(parts) != 3 or not all(_IDENT.match(p) for p in (*parts, new)):
        raise ConfigError(
            f"--rename {spec!r} is not SCHEMA.TABLE.COLUMN=NEW (plain lower-case identifiers).",
            hint="For example: --rename booking.bookings.note=remark.",
        )
    return parts[0], parts[1], parts[2], new


def scaffold_rename(
    directory: Path,
    name: str,
    spec: str,
    *,
    column_type: str = "text",
    only: str | None = None,
    key: str = "id",
) -> list[Path]:
    """Both halves of renaming a column (``only``: just ``expand`` or ``contract``):

    * ``NNNN_name_expand`` (``no-transaction``, ``phase expand``): the new column, a
      trigger that keeps old and new equal whichever the writer sets, and the backfill in
      ranges of the unique ``key`` column (default ``id``) that commit one by one (the old
      release keeps reading and writing the old column; the new one uses the new column);
    * ``NNNN+1_name_contract`` (``phase contract``): drop the trigger and the old column,
      once no captured statement of the deployed API uses it.
    """
    _check_name(name)
    schema, table, old, new = _rename_target(spec)
    if not _IDENT.match(key):
        raise ConfigError(f"--key {key!r} is not a plain lower-case column name.")
    qualified = f"{schema}.{table}"
    fn = f"{schema}.ptool_sync_{table}_{old}_{new}"[: len(schema) + 1 + 63]
    trigger = f"ptool_sync_{old}_{new}"[:63]
    version = _next_version(directory)
    function = f"""CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $sync$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.{new} IS NULL THEN
            NEW.{new} := NEW.{old};
        ELSIF NEW.{old} IS NULL THEN
            NEW.{old} := NEW.{new};
        END IF;
    ELSIF NEW.{new} IS DISTINCT FROM OLD.{new} THEN
        NEW.{old} := NEW.{new};
    ELSIF NEW.{old} IS DISTINCT FROM OLD.{old} THEN
        NEW.{new} := NEW.{old};
    END IF;
    RETURN NEW;
END
$sync$;
CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE ON {qualified}
    FOR EACH ROW EXECUTE FUNCTION {fn}();
"""

    def backfill(into: str, source: str) -> str:
        return f"""-- the backfill, in ranges of {key} committed one by one (the file runs outside
-- a transaction): rows are locked a batch at a time, never the whole table, and a
-- pause between batches leaves the API its share of the server
DO $backfill$
DECLARE
    last {qualified}.{key}%TYPE;
    upto {qualified}.{key}%TYPE;
    began timestamptz;
BEGIN
    SELECT k INTO upto FROM (SELECT {key} AS k FROM {qualified}
                             ORDER BY {key} LIMIT 1000) AS batch ORDER BY k DESC LIMIT 1;
    IF upto IS NOT NULL THEN
        UPDATE {qualified} SET {into} = {source}
         WHERE {key} <= upto AND {into} IS DISTINCT FROM {source};
        COMMIT;
    END IF;
    WHILE upto IS NOT NULL LOOP
        last := upto;
        SELECT k INTO upto FROM (SELECT {key} AS k FROM {qualified} WHERE {key} > last
                                 ORDER BY {key} LIMIT 1000) AS batch ORDER BY k DESC LIMIT 1;
        EXIT WHEN upto IS NULL;
        began := clock_timestamp();
        UPDATE {qualified} SET {into} = {source}
         WHERE {key} > last AND {key} <= upto AND {into} IS DISTINCT FROM {source};
        COMMIT;
        -- rest as long as the batch took: the backfill takes at most half of a core
        PERFORM pg_sleep(greatest(0.02, extract(epoch FROM clock_timestamp() - began)));
    END LOOP;
END
$backfill$;
"""  # noqa: S608 - identifiers checked by _rename_target; a file is written, not run

    halves: list[tuple[str, dict[str, str]]] = []
    if only in (None, "expand"):
        label = f"{version:04d}"
        halves.append(
            (
                f"{name}_expand",
                {
                    "up": f"-- {label} {name}_expand: {qualified}.{old} becomes {new}, expand half:"
                    f" add {new}, keep it equal to {old} (trigger), backfill.\n"
                    "-- The deployed release keeps using the old column; deploy the release that"
                    f" uses {new},\n-- capture its statements, then apply the contract half.\n"
                    "-- ptool: no-transaction\n-- ptool: phase expand\n"
                    f"ALTER TABLE {qualified} ADD COLUMN {new} {column_type};\n"
                    f"{function}{backfill(new, old)}",
                    "down": f"-- {label} {name}_expand (down): drop the new column and its"
                    " trigger.\n-- ptool: no-transaction\n"
                    f"DROP TRIGGER IF EXISTS {trigger} ON {qualified};\n"
                    f"DROP FUNCTION IF EXISTS {fn}();\n"
                    f"ALTER TABLE {qualified} DROP COLUMN IF EXISTS {new};\n",
                    "verify": f"-- {label} {name}_expand (verify): every row has both"  # noqa: S608
                    " columns equal.\n\n"
                    f"SELECT NOT EXISTS (SELECT FROM {qualified}"
                    f" WHERE {new} IS DISTINCT FROM {old});\n",
                },
            )
        )
    if only in (None, "contract"):
        label = f"{version + (1 if only is None else 0):04d}"
        restore = function.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION").replace(
            "CREATE TRIGGER", f"DROP TRIGGER IF EXISTS {trigger} ON {qualified};\nCREATE TRIGGER"
        )
        halves.append(
            (
                f"{name}_contract",
                {
                    "up": f"-- {label} {name}_contract: {qualified}.{old} becomes {new},"
                    f" contract half: drop {old}.\n"
                    "-- Refused by the compatibility gate while a captured statement of the"
                    f" deployed API\n-- still uses {old}. Outside a transaction, so that each"
                    " statement holds its lock for\n-- a moment only; the gate rehearses the"
                    " statements in a rolled-back transaction first.\n"
                    "-- ptool: no-transaction\n-- ptool: phase contract\n"
                    "-- ptool: allow ban-drop-column -- reason: contract half of a rename; the"
                    " compatibility gate checks no deployed statement uses it\n"
                    f"DROP TRIGGER IF EXISTS {trigger} ON {qualified};\n"
                    f"DROP FUNCTION IF EXISTS {fn}();\n"
                    f"ALTER TABLE {qualified} DROP COLUMN {old};\n",
                    "down": f"-- {label} {name}_contract (down): the old column back, filled"
                    " from the new one, kept in step again\n-- (each statement may find its"
                    " work done: a failed up is undone with it).\n"
                    "-- ptool: no-transaction\n"
                    f"ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {old} {column_type};\n"
                    f"{restore}" + backfill(old, new),
                    "verify": f"-- {label} {name}_contract (verify): the old column is"
                    " gone.\n\n"
                    "SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_attribute"
                    f" WHERE attrelid = '{qualified}'::regclass AND attname = '{old}'"
                    " AND NOT attisdropped);\n",
                },
            )
        )
    paths: list[Path] = []
    for offset, (half, texts) in enumerate(halves):
        paths += _write(directory, f"{version + offset:04d}", half, texts)
    return paths


def scaffold(
    directory: Path, name: str, *, no_transaction: bool = False, phase: str | None = None
) -> list[Path]:
    """Create ``NNNN_name.{up,down,verify}.sql`` with the next free version; returns them.
    ``phase``: ``expand`` or ``contract`` (the ``-- ptool: phase`` directive)."""
    _check_name(name)
    version = f"{_next_version(directory):04d}"
    mode = "-- ptool: no-transaction\n" if no_transaction else ""
    marked = f"-- ptool: phase {phase}\n" if phase else ""
    texts = {
        "up": f"-- {version} {name}: what this changes and why.\n{mode}{marked}\n",
        "down": f"-- {version} {name} (down): undo the up script exactly.\n{mode}\n",
        "verify": (
            f"-- {version} {name} (verify): SELECTs that must each return one row holding"
            " true.\n\nSELECT true;\n"
        ),
    }
    paths = [directory / f"{version}_{name}.{kind}.sql" for kind in texts]
    clash = [p for p in paths if p.exists()]
    if clash:
        raise ConfigError(f"{clash[0]} already exists.")
    for path, text in zip(paths, texts.values(), strict=True):
        path.write_text(text, encoding="utf-8")
    return paths
