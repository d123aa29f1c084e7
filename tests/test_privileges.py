"""The privilege model is declared once: migration 0001 and the docs carry it unchanged, and
its checks name the role, the privilege and the grant."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ptool_ops import privileges
from ptool_ops.booking import MIGRATIONS_DIR
from ptool_ops.errors import PermissionDenied
from tests.conftest import BACKUP, MIGRATOR, OWNER, TestDatabase

APP = "booking_app_a"

ROOT = Path(__file__).resolve().parents[1]
UP_0001 = MIGRATIONS_DIR / "0001_roles_and_schema.up.sql"
DOWN_0001 = MIGRATIONS_DIR / "0001_roles_and_schema.down.sql"


def test_migration_0001_carries_the_models_block() -> None:
    block = privileges.block_of(UP_0001.read_text())
    assert block == privileges.migration_block(), (
        "0001 and ptool_ops/privileges differ: run"
        f" 'python -m ptool_ops.privileges {UP_0001.relative_to(ROOT)}'"
    )


def test_the_down_of_0001_drops_exactly_the_stack_roles() -> None:
    listed = re.search(r"ARRAY\[(.*?)\]", DOWN_0001.read_text(), re.S)
    assert listed is not None
    names = {n.strip().strip("'") for n in listed.group(1).split(",")}
    assert names == {r.name for r in privileges.STACK_ROLES}


def test_docs_hold_the_models_table() -> None:
    docs = (ROOT / "docs" / "privileges.md").read_text()
    assert privileges.markdown_table() in docs, (
        "docs/privileges.md is out of date: run"
        " 'python -m ptool_ops.privileges --docs docs/privileges.md'"
    )


def test_every_duty_names_known_needs_and_roles() -> None:
    roles = {r.name for r in (*privileges.PLATFORM_ROLES, *privileges.STACK_ROLES)}
    for duty in privileges.DUTIES.values():
        assert duty.role in roles
        assert set(duty.needs) <= set(privileges.NEEDS)


def test_the_model_takes_only_plain_sql_names() -> None:
    with pytest.raises(ValueError, match="plain lower-case SQL identifier"):
        privileges.plain("booking; DROP TABLE x")


def _code_strings(path: Path) -> Iterator[ast.Constant]:
    """The string literals of a module's code (docstrings, which explain, left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            yield node


def test_only_the_model_spells_the_role_names() -> None:
    """A role's name is written once, in ptool_ops/privileges: code, messages and help
    take it from there, so renaming a role is one change."""
    names = {r.name for r in (*privileges.PLATFORM_ROLES, *privileges.STACK_ROLES)}
    spelled = re.compile(r"\b(" + "|".join(sorted(names, key=len, reverse=True)) + r")\b")
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {match.group(0)}"
        for path in sorted((ROOT / "ptool_ops").rglob("*.py"))
        if "privileges" not in path.parts
        for node in _code_strings(path)
        if (match := spelled.search(node.value))
    ]
    assert found == [], "use the names of ptool_ops.privileges instead"


@pytest.mark.parametrize(
    ("role", "duty", "ok"),
    [
        (OWNER, "status", True),
        (OWNER, "backup.restore_in_place", True),
        (OWNER, "migrate.test", True),
        (MIGRATOR, "migrate.run", True),
        (MIGRATOR, "backup.restore", False),
        (BACKUP, "backup.create", True),
        (BACKUP, "migrate.run", False),
        ("booking_app_a", "status", False),
        ("booking_readonly", "backup.create", False),
    ],
)
def test_checks_as_each_role(booking_db: TestDatabase, role: str, duty: str, ok: bool) -> None:
    with psycopg.connect(booking_db.url(role), autocommit=True) as conn:
        assert privileges.check(conn, duty).ok is ok


def test_a_missing_privilege_is_one_sentence_with_the_grant(booking_db: TestDatabase) -> None:
    with (
        psycopg.connect(booking_db.url("booking_app_a"), autocommit=True) as conn,
        pytest.raises(PermissionDenied) as err,
    ):
        privileges.require(conn, "backup.restore")
    assert err.value.exit_code == 11
    assert err.value.message == (
        "role booking_app_a lacks CREATEDB, which 'backup restore' needs: it creates the"
        " database it restores into, or a scratch copy."
    )
    assert "ALTER ROLE booking_app_a CREATEDB" in (err.value.hint or "")
    assert "run it as booking_owner" in (err.value.hint or "")


def test_a_refusal_that_escapes_a_command_is_an_operator_error(booking_db: TestDatabase) -> None:
    """Preflight checks cover what each command needs; a statement refused anyway
    (SQLSTATE 42501) still ends as exit 11 naming the role, never a traceback."""
    from ptool_ops.cli.main import _translate
    from ptool_ops.environment import Environment
    from ptool_ops.settings import EnvironmentSettings

    class App:  # what the CLI's context holds: the environment that handed out the login
        _env = Environment(
            EnvironmentSettings(name="t", kind="postgres", database_url=booking_db.url(APP))
        )

    login = App._env.database("status")
    with login.connect() as conn:
        try:
            conn.execute("DELETE FROM booking.events")
        except psycopg.errors.InsufficientPrivilege as err:
            translated = _translate(err, App())
        else:
            raise AssertionError("the app role may not delete events")
    assert isinstance(translated, PermissionDenied) and translated.exit_code == 11
    assert translated.message.startswith(
        "role booking_app_a was refused: permission denied for table events"
    )
