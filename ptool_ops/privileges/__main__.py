"""``python -m ptool_ops.privileges [FILE | --docs FILE]``: print the block migration 0001
holds; or write it between the markers of FILE; or write the table of docs/privileges.md."""

import sys
from pathlib import Path

from ptool_ops.privileges.docs import write_table
from ptool_ops.privileges.sql import migration_block, write_block

args = sys.argv[1:]
if args[:1] == ["--docs"] and len(args) == 2:
    changed = write_table(Path(args[1]))
    print(f"{args[1]}: {'updated' if changed else 'already current'}")
elif len(args) == 1:
    changed = write_block(Path(args[0]))
    print(f"{args[0]}: {'updated' if changed else 'already current'}")
else:
    print(migration_block(), end="")
