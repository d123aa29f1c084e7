"""What we know of the booking service: its migrations, invariants, seed data, API client
and the local stand-in of its API."""

from pathlib import Path

#: the booking service's schema migrations, shipped in the package
MIGRATIONS_DIR: Path = Path(__file__).resolve().parent / "migrations"
