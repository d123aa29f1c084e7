"""Fixtures of the booking tests.

Most booking tests only need a migrated database they may change freely: they share
one database per module and each runs in a transaction that is rolled back at the
end (``tx``) -- DDL included, since PostgreSQL's DDL is transactional. Tests that
must commit (migrations, CREATE INDEX CONCURRENTLY) use the suite's ``booking_db`` /
``empty_db``, a fresh database each.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ..conftest import TEMPLATE, admin_url, create_database, drop_database

_names = itertools.count()


@pytest.fixture(scope="module")
def shared_booking_url(pg_server: Any) -> Iterator[str]:
    """A database with the booking migrations applied, shared by one test module; the URL
    is the harness's own superuser session (the tests of the schema's rules set roles and
    tenants themselves)."""
    name = f"booking_shared_{os.getpid()}_{next(_names)}"
    create_database(pg_server, name, TEMPLATE)
    try:
        yield admin_url(pg_server, name)
    finally:
        drop_database(pg_server, name)


@pytest.fixture
def tx(shared_booking_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A harness superuser connection inside a transaction that is rolled back afterwards."""
    with psycopg.connect(shared_booking_url, autocommit=False) as conn:
        conn.execute("SELECT 1")  # open the transaction: whatever runs next is inside it
        try:
            yield conn
        finally:
            conn.rollback()
