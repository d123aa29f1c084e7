"""Tenant recovery shares the point-in-time tests' archiving local environment (one per
module: its archive, base backups and restored copies)."""

from tests.pitr.conftest import PitrEnv, pitr_env

__all__ = ["PitrEnv", "pitr_env"]
