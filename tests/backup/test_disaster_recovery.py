"""Disaster recovery: one environment's backup (its repository, its key) restored into
another environment's server -- ``backup restore ID --from-env SOURCE`` run in the target."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from ptool_ops import privileges
from ptool_ops.local.env import LocalEnvironment
from tests.conftest import Cli, local_server


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEnvironment]:
    with local_server(tmp_path_factory.mktemp("dr") / "local", archive=False, api=False) as env:
        yield env


def test_prod_backup_restores_into_the_dr_server(cli: Cli, source: LocalEnvironment) -> None:
    owner = source.facts.role_url(privileges.OWNER)
    dr_repo = cli.cwd / "dr-repo"
    cli.write_config(
        f'[environments.local]\nlocal_dir = "{source.paths.root}"\n'
        f'[environments.dr]\nkind = "postgres"\ndatabase_url = "{owner}"\n'
        f'repo_url = "file://{dr_repo}"\n'
    )
    assert cli("local seed --tenants 2 --bookings 400").exit_code == 0
    made = cli("backup create -o json")
    assert made.exit_code == 0, made.output

    empty = cli("--env dr backup restore latest --target-db booking_dr")
    assert empty.exit_code != 0 and "Traceback" not in empty.output  # dr has no backups

    result = cli("--env dr backup restore latest --from-env local --target-db booking_dr -o json")
    assert result.exit_code == 0, result.output
    assert result.json()["id"] == made.json()["id"]
    with psycopg.connect(owner) as live, psycopg.connect(owner, dbname="booking_dr") as copy:
        query = "SELECT count(*), md5(string_agg(id::text, ',' ORDER BY id)) FROM booking.bookings"
        assert live.execute(query).fetchone() == copy.execute(query).fetchone()
    trail = cli.audit_events("dr")
    restored = [r for r in trail if r["action"] == "backup.restore" and r["outcome"] == "ok"]
    assert restored and restored[-1]["details"]["source_environment"] == "local"
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("DROP DATABASE booking_dr")
