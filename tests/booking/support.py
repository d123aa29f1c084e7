"""Helpers shared by the booking tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import pytest

E = TypeVar("E", bound=BaseException)


@contextmanager
def rejected(
    conn: psycopg.Connection[Any], error: type[E], match: str | None = None
) -> Iterator[pytest.ExceptionInfo[E]]:
    """Expect ``error`` from the block, run in a savepoint so the surrounding
    transaction stays usable."""
    with pytest.raises(error, match=match) as info, conn.transaction():
        yield info
