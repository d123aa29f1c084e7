"""Safe migrations: linter and lock analysis (``lint``, ``locks``), runner and history.

Submodules import pglast lazily; import them directly (``from ptool_ops.migrate import lint``).
"""
