"""``python -m ptool_ops``: the same as the ``ptool-ops`` console script (the archive and
restore commands use it, with the interpreter's absolute path, so no PATH is needed)."""

from ptool_ops.cli import main

if __name__ == "__main__":
    main()
