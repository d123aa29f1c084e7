"""The console script's entry: ``wal push``/``wal fetch`` run once per WAL segment as
PostgreSQL's archive and restore commands, so they take a lean path that loads only their
own command; everything else loads the whole command tree (:mod:`ptool_ops.cli.main`)."""

from __future__ import annotations

import sys


def main() -> None:
    from ptool_ops.cli.args import split_global_options

    front, rest = split_global_options(sys.argv[1:])
    if rest[:1] == ["wal"]:
        from ptool_ops.cli.wal import standalone

        sys.exit(standalone(front, rest[1:]))
    from ptool_ops.cli.main import main as full

    full()
