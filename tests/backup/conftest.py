"""Fixtures for backup tests: a seeded database, repositories on disk and on moto S3, and an
environment table pointing the CLI at them."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.api.conftest import standin  # noqa: F401 -- the booking API stand-in, for restores
from tests.conftest import OWNER, Cli, TestDatabase, add_canaries, admin_url

KEY = base64.b64encode(b"k" * 32).decode()
OTHER_KEY = base64.b64encode(b"o" * 32).decode()
add_canaries(KEY, OTHER_KEY)


def table_checksums(conn: Any) -> dict[str, tuple[int, str]]:
    """Row count and md5 of every user table's rows, in a stable order; but the audit
    trail's anchor, to which every command -- a failed one too -- adds its row."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN "
        "('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2"
    ).fetchall()
    found = {}
    conn.execute("SET row_security = off")
    for schema, name in rows:
        if (schema, name) == ("ptool_ops", "audit_anchor"):
            continue
        count, digest = conn.execute(
            sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) "
                "FROM {}.{} t"
            ).format(sql.Identifier(schema), sql.Identifier(name))
        ).fetchone()
        found[f"{schema}.{name}"] = (count, digest)
    return found


@pytest.fixture
def seeded_db(booking_db: TestDatabase) -> Iterator[TestDatabase]:
    from ptool_ops.booking.seed import seed

    with booking_db.connect() as conn:
        seed(conn, tenants=3, bookings=1500, seed=7)
    yield booking_db
    # restores create <name>_... databases beside the test's own: drop them
    with psycopg.connect(admin_url(booking_db.server, "postgres"), autocommit=True) as conn:
        names = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (booking_db.name + "\\_%",)
        ).fetchall()
        for (name,) in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class Env:
    """A CLI environment 't' (kind postgres) for a test database and a repository, logged
    in as the operator (booking_owner), what a Neon project's operator holds."""

    cli: Cli
    db: TestDatabase
    repo_url: str
    extra: dict[str, str]

    def configure(self, **overrides: str) -> None:
        settings = {
            "database_url": self.db.url(OWNER),
            "repo_url": self.repo_url,
            **self.extra,
            **overrides,
        }
        lines = ["[environments.t]"] + [f'{k} = "{v}"' for k, v in settings.items()]
        self.cli.write_config("\n".join(lines) + "\n")

    def run(self, command: str) -> Any:
        return self.cli(f"--env t {command}")


@pytest.fixture
def s3_bucket(aws_env: str) -> Callable[[str], Any]:
    import boto3

    client = boto3.client("s3", endpoint_url=aws_env, region_name="us-east-1")

    def make(name: str) -> Any:
        client.create_bucket(Bucket=name)
        return client

    return make


@pytest.fixture
def file_env(cli: Cli, seeded_db: TestDatabase, tmp_path: Path) -> Env:
    env = Env(cli, seeded_db, f"file://{tmp_path / 'repo'}", {})
    env.configure()
    return env


@pytest.fixture
def s3_env(cli: Cli, seeded_db: TestDatabase, aws_env: str, s3_bucket: Any) -> Env:
    bucket = f"b-{os.getpid()}-{seeded_db.name.replace('_', '-')}"
    s3_bucket(bucket)
    env = Env(cli, seeded_db, f"s3://{bucket}/ptool/t", {"aws_endpoint_url": aws_env})
    env.configure()
    return env
