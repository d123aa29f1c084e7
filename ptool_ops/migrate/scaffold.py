"""``migrate new``: the next version's up, down and verify files, with their header."""

from __future__ import annotations

import re
from pathlib import Path

from ptool_ops.errors import ConfigError
from ptool_ops.migrate.files import load_migrations

__all__ = ["scaffold"]

_NAME = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")


def scaffold(directory: Path, name: str, *, no_transaction: bool = False) -> list[Path]:
    """Create ``NNNN_name.{up,down,verify}.sql`` with the next free version; returns them."""
    if not _NAME.match(name):
        raise ConfigError(
            f"migration name {name!r} is not lower_case_words (letters, digits, underscores).",
            hint="For example: bookings_status_index.",
        )
    try:
        existing = load_migrations(directory)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    version = f"{int(existing[-1].version) + 1 if existing else 1:04d}"
    if int(version) > 9999:
        raise ConfigError("no free four-digit version is left in this directory.")
    mode = "-- ptool: no-transaction\n" if no_transaction else ""
    texts = {
        "up": f"-- {version} {name}: what this changes and why.\n{mode}\n",
        "down": f"-- {version} {name} (down): undo the up script exactly.\n{mode}\n",
        "verify": (
            f"-- {version} {name} (verify): SELECTs that must each return one row holding"
            " true.\n\nSELECT true;\n"
        ),
    }
    paths = [directory / f"{version}_{name}.{kind}.sql" for kind in texts]
    clash = [p for p in paths if p.exists()]
    if clash:
        raise ConfigError(f"{clash[0]} already exists.")
    for path, text in zip(paths, texts.values(), strict=True):
        path.write_text(text, encoding="utf-8")
    return paths
