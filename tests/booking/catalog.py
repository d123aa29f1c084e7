"""A snapshot of the catalog state migrations touch, for reversibility tests.

The queries live in the library (``ptool_ops.migrate.snapshot``, used by ``migrate test``);
this module keeps the tests' import path.
"""

from __future__ import annotations

from ptool_ops.migrate.snapshot import QUERIES, diff, snapshot

__all__ = ["QUERIES", "diff", "snapshot"]
