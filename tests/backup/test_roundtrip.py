"""create → list → show → verify → restore, on disk and on moto S3, encrypted or not."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.backup.conftest import KEY, Env, table_checksums
from tests.conftest import admin_url


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_round_trip_restores_identical_data(backend: str, request: pytest.FixtureRequest) -> None:
    env: Env = request.getfixturevalue(f"{backend}_env")
    env.cli.env["PTOOL_BACKUP_KEY"] = KEY
    with env.db.connect() as conn:
        before = table_checksums(conn)
    assert before["booking.bookings"][0] == 1500

    created = env.run("backup create -o json")
    assert created.exit_code == 0, created.output
    backup_id = created.json()["id"]
    assert created.json()["encrypted"] is True

    listed = env.run("backup list -o json").json()
    assert [b["id"] for b in listed] == [backup_id]

    shown = env.run(f"backup show {backup_id} -o json").json()
    assert shown["format_version"] == 1
    assert shown["database"] == env.db.name
    with env.db.connect() as conn:
        from ptool_ops.migrate.history import schema_version

        assert shown["schema_version"] == schema_version(conn) is not None
    assert shown["pg_dump_version"].startswith("pg_dump (PostgreSQL) 18")
    assert {t["name"]: t["rows"] for t in shown["tables"]}["bookings"] == 1500
    assert all(o["encryption"]["algorithm"] == "aes-256-gcm-chunked" for o in shown["objects"])

    verified = env.run("backup verify latest -o json")
    assert verified.exit_code == 0, verified.output
    assert verified.json()["ok"] is True

    target = f"{env.db.name}_copy"
    restored = env.run(f"backup restore {backup_id[:12]} --target-db {target} -o json")
    assert restored.exit_code == 0, restored.output
    result = restored.json()
    assert result["ok"] is True
    assert result["row_counts_match"] is True
    assert [s["status"] for s in result["steps"]] == ["done"] * len(result["steps"])
    with psycopg.connect(admin_url(env.db.server, target), autocommit=True) as conn:
        assert table_checksums(conn) == before


def test_big_tables_in_their_own_objects_restore_in_parallel(file_env: Env) -> None:
    from ptool_ops import backup
    from ptool_ops.environment import Environment
    from ptool_ops.settings import load_environment

    file_env.cli.env["PTOOL_BACKUP_KEY"] = KEY
    file_env.run("backup list")  # sets the working directory and PTOOL_* like a CLI run
    settings = Environment(load_environment("t", cwd=file_env.cli.cwd))
    with file_env.db.connect() as conn:
        before = table_checksums(conn)
    created = backup.create(settings, split_bytes=1, jobs=2)
    manifest = backup.show(settings, created.id)
    # every table split (the audit anchor too, which table_checksums leaves out)
    assert sorted(manifest.table_objects.values()) == sorted([*before, "ptool_ops.audit_anchor"])
    assert len(manifest.objects) == len(before) + 1 + 2  # + the anchor, schema, post-data
    target = f"{file_env.db.name}_split"
    result = backup.restore(settings, created.id, target_db=target, jobs=3)
    assert result.ok and result.row_counts_match
    assert [s.status for s in result.steps] == ["done"] * len(result.steps)
    with file_env.db.connect() as conn:
        schema = _post_data(conn)
    with psycopg.connect(admin_url(file_env.db.server, target), autocommit=True) as conn:
        assert table_checksums(conn) == before
        # every index, constraint, trigger and policy, each built on its own as soon as
        # its table's rows were in, or with the rest at the end
        assert _post_data(conn) == schema
    verified = backup.verify(settings, created.id)
    assert verified.ok and len(verified.objects) == len(manifest.objects)


def _post_data(conn: Any) -> dict[str, list[str]]:
    """The definitions of the post-data objects (indexes, constraints, triggers, policies,
    row security) of the non-system schemas."""
    queries = {
        "indexes": "SELECT indexdef FROM pg_indexes "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
        "constraints": "SELECT conrelid::regclass || ' ' || conname || ' ' || "
        "pg_get_constraintdef(oid) || ' ' || convalidated FROM pg_constraint "
        "WHERE connamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')",
        "triggers": "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal",
        "policies": "SELECT tablename || ' ' || policyname || ' ' || qual FROM pg_policies",
        "rls": "SELECT relname FROM pg_class WHERE relrowsecurity "
        "AND relnamespace::regnamespace::text NOT IN ('pg_catalog', 'information_schema')",
        "invalid": "SELECT indexrelid::regclass::text FROM pg_index "
        "WHERE NOT indisvalid OR NOT indisready",
    }
    return {
        name: sorted(str(row[0]) for row in conn.execute(query).fetchall())
        for name, query in queries.items()
    }
