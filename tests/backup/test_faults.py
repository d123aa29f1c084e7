"""The fault matrix: 'backup create', 'backup restore --in-place' and 'backup prune' run as
real processes and SIGKILLed at each step (see tests/backup/faults.py for how a step is
found). After every kill: no backup is listed that fails 'backup verify', the live
database is untouched or wholly restored (and then the replaced one is kept), and running
the command again completes. docs/backup-repository.md has the table of these cases."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ptool_ops import pg
from ptool_ops.backup.swap import SWAP_APPLICATION
from ptool_ops.booking.seed import seed
from ptool_ops.local.env import LocalEnvironment
from tests.backup.conftest import Env, table_checksums
from tests.backup.faults import kill_at, open_files, run, spawn
from tests.conftest import (
    MIGRATOR,
    OWNER,
    TEMPLATE,
    Cli,
    TestDatabase,
    admin_url,
    create_database,
    drop_database,
)

_counter = itertools.count()


@pytest.fixture(scope="module")
def big_template(pg_server: LocalEnvironment) -> Iterator[str]:
    """The booking schema with 60 000 bookings and a 40 MB table of its own (so a backup
    has a split table object, and every step lasts long enough to be seen)."""
    name = f"faults_{os.getpid()}"
    create_database(pg_server, name, TEMPLATE)
    with psycopg.connect(admin_url(pg_server, name), autocommit=True) as conn:
        seed(conn, tenants=5, bookings=60_000, seed=11)
    # the operator's own table, as a table an operator made would be
    with psycopg.connect(pg_server.facts.role_url(OWNER, name), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.filler AS SELECT i, md5(i::text) || md5((i * 7)::text) AS pad"
            " FROM generate_series(1, 400000) i"
        )
        conn.execute("ANALYZE")
    yield name
    drop_database(pg_server, name)


@pytest.fixture
def env(cli: Cli, pg_server: LocalEnvironment, big_template: str, tmp_path: Path) -> Iterator[Env]:
    name = f"f_{os.getpid()}_{next(_counter)}"
    create_database(pg_server, name, big_template)
    db = TestDatabase(name, admin_url(pg_server, name), pg_server)
    environment = Env(cli, db, f"file://{tmp_path / 'repo'}", {})
    environment.configure()
    yield environment
    with psycopg.connect(admin_url(pg_server, "postgres"), autocommit=True) as conn:
        for (left,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (name + "%",)
        ).fetchall():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(left))
            )


class Watch:
    """The harness's view of the server (a session on 'postgres', so it never stands in
    the way of a rename) and of the repository."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.conn = psycopg.connect(admin_url(env.db.server, "postgres"), autocommit=True)
        self.repo = Path(env.repo_url.removeprefix("file://"))

    def close(self) -> None:
        self.conn.close()

    def one(self, query: str, *args: Any) -> Any:
        row = self.conn.execute(query, args).fetchone()
        return row[0] if row else None

    def exists(self, database: str) -> bool:
        return bool(self.one("SELECT count(*) FROM pg_database WHERE datname = %s", database))

    def active(self, database: str, pattern: str) -> bool:
        return bool(
            self.one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'active'"
                " AND query ILIKE %s",
                database,
                pattern,
            )
        )

    def files(self, pattern: str) -> list[Path]:
        return list(self.repo.glob(f"backups/*/{pattern}"))


def _data(env: Env, database: str | None = None) -> dict[str, tuple[int, str]]:
    with psycopg.connect(
        admin_url(env.db.server, database or env.db.name), autocommit=True
    ) as conn:
        return table_checksums(conn)


def _listed_backups_verify(env: Env) -> list[str]:
    listed = env.run("backup list -o json")
    assert listed.exit_code == 0, listed.output
    ids = [row["id"] for row in listed.json()]
    for backup_id in ids:
        verified = env.run(f"backup verify {backup_id}")
        assert verified.exit_code == 0, verified.output
    return ids


# --- backup create ------------------------------------------------------------------------------


def _create_steps() -> dict[str, Callable[[Watch], bool]]:
    def streaming(name: str) -> Callable[[Watch], bool]:
        return lambda w: bool(w.files(f".{name}.*.partial")) and not w.files(name)

    def before_manifest(w: Watch) -> bool:
        done = {p.name for p in w.files("*.pgdump.zst")}
        return {"data.pgdump.zst", "post-data.pgdump.zst", "table-000.pgdump.zst"} <= done and (
            not w.files("manifest.json")
        )

    return {
        "streaming data": streaming("data.pgdump.zst"),
        "streaming a split table": streaming("table-000.pgdump.zst"),
        "streaming post-data": streaming("post-data.pgdump.zst"),
        "before the manifest": before_manifest,
        "after the manifest": lambda w: bool(w.files("manifest.json")),
    }


@pytest.mark.parametrize("step", list(_create_steps()))
def test_create_killed(env: Env, step: str) -> None:
    watch = Watch(env)
    try:
        for _ in range(5):
            outcome = kill_at(spawn(env, "backup", "create"), lambda: _create_steps()[step](watch))
            if outcome.killed:
                break
            # the watcher looked just before and just after a short step: start over
            shutil.rmtree(watch.repo, ignore_errors=True)
    finally:
        watch.close()
    assert outcome.killed, f"finished before '{step}' five times: {outcome.stderr}"
    listed = _listed_backups_verify(env)
    assert len(listed) == (1 if step == "after the manifest" else 0)
    again = run(env, "backup", "create", "-o", "json")
    assert again.returncode == 0, again.stderr
    assert len(_listed_backups_verify(env)) == len(listed) + 1
    # the killed run's lease names a process that is gone: its leftovers go at once
    pruned = env.run("backup prune --orphans-older-than 0 -o json")
    assert pruned.exit_code == 0, pruned.output
    assert pruned.json()["running"] == {}
    repo = Path(env.repo_url.removeprefix("file://"))
    left = sorted(p.name for p in (repo / "backups").iterdir())
    assert left == sorted(_listed_backups_verify(env)), (
        pruned.json(),
        [str(p) for p in (repo / "backups").rglob("*")],
    )


def test_create_killed_in_preflight(env: Env) -> None:
    # the snapshot step waits for a lock the harness holds: the backup is seen waiting
    blocker = env.db.connect()
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE booking.bookings IN ACCESS EXCLUSIVE MODE")
    watch = Watch(env)
    try:
        outcome = kill_at(
            spawn(env, "backup", "create"),
            lambda: bool(
                watch.one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = %s"
                    " AND application_name = %s AND wait_event_type = 'Lock'",
                    env.db.name,
                    OWNER,
                    pg.APPLICATION_NAME,
                )
            ),
        )
    finally:
        watch.close()
        blocker.rollback()
        blocker.close()
    assert outcome.killed
    repo = Path(env.repo_url.removeprefix("file://"))
    assert not (repo / "backups").exists()  # nothing stored, not even a lease
    again = run(env, "backup", "create")
    assert again.returncode == 0, again.stderr
    assert len(_listed_backups_verify(env)) == 1


# --- backup restore --in-place ------------------------------------------------------------------


def _backup_then_change(env: Env) -> tuple[str, dict[str, Any], dict[str, Any]]:
    created = env.run("backup create -o json")
    assert created.exit_code == 0, created.output
    backup = _data(env)
    with env.db.connect() as conn:
        seed(conn, tenants=1, bookings=10, seed=99)  # a change since the backup
    return str(created.json()["id"]), backup, _data(env)


def _names(env: Env, backup_id: str) -> tuple[str, str]:
    suffix = backup_id.lower().replace("-", "_")
    return f"{env.db.name}_restoring_{suffix}", f"{env.db.name}_before_{suffix}"


def _assert_live(env: Env, keep_as: str, backup: dict[str, Any], old: dict[str, Any]) -> bool:
    """The live database is the old one, untouched, or the restored one with the old one
    kept; returns whether the swap happened."""
    watch = Watch(env)
    try:
        deadline = time.monotonic() + 30  # a killed swap's session ends within its wait
        while watch.one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
            SWAP_APPLICATION + "%",
        ):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert watch.one("SELECT datallowconn FROM pg_database WHERE datname = %s", env.db.name)
        swapped = watch.exists(keep_as)
    finally:
        watch.close()
    if swapped:
        assert _data(env) == backup
        assert _data(env, keep_as) == old
    else:
        assert _data(env) == old
    return swapped


def _restore_again(env: Env, backup_id: str, keep_as: str, backup: dict[str, Any]) -> None:
    again = run(env, "backup", "restore", backup_id, "--in-place", "-o", "json")
    assert again.returncode == 0, again.stderr
    assert _data(env) == backup
    watch = Watch(env)
    try:
        assert watch.exists(keep_as)
        assert not watch.one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE %s", "%\\_restoring\\_%"
        )
    finally:
        watch.close()


def _restore_steps(restoring: str) -> dict[str, Callable[[Watch, int], bool]]:
    def checksums(w: Watch, pid: int) -> bool:
        repo = str(w.repo / "backups")
        return any(f.startswith(repo) for f in open_files(pid)) and not w.exists(restoring)

    return {
        "checksum pass": checksums,
        "load": lambda w, _pid: w.active(restoring, "COPY %"),
        "index build": lambda w, _pid: (
            w.active(restoring, "CREATE INDEX%") or w.active(restoring, "%ADD CONSTRAINT%")
        ),
    }


@pytest.mark.parametrize("step", ["checksum pass", "load", "index build"])
def test_restore_in_place_killed(env: Env, step: str) -> None:
    backup_id, backup, old = _backup_then_change(env)
    restoring, keep_as = _names(env, backup_id)
    watch = Watch(env)
    proc = spawn(env, "backup", "restore", backup_id, "--in-place")
    try:
        outcome = kill_at(proc, lambda: _restore_steps(restoring)[step](watch, proc.pid))
    finally:
        watch.close()
    assert outcome.killed, f"finished before '{step}': {outcome.stderr}"
    assert not _assert_live(env, keep_as, backup, old)
    _listed_backups_verify(env)
    _restore_again(env, backup_id, keep_as, backup)


def test_restore_in_place_killed_waiting_for_a_migration(env: Env) -> None:
    from ptool_ops.migrate.run_lock import run_lock

    backup_id, backup, old = _backup_then_change(env)
    _, keep_as = _names(env, backup_id)
    watch = Watch(env)
    with run_lock(env.db.url(MIGRATOR), wait_s=0, application_name="a migration"):
        try:
            outcome = kill_at(
                spawn(env, "backup", "restore", backup_id, "--in-place", "--lock-wait", "120"),
                lambda: bool(
                    watch.one(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        SWAP_APPLICATION + " (migration lock)",
                    )
                ),
            )
        finally:
            watch.close()
    assert outcome.killed
    assert not _assert_live(env, keep_as, backup, old)
    _restore_again(env, backup_id, keep_as, backup)


def test_restore_in_place_killed_inside_the_swap_transaction(env: Env) -> None:
    # a harness (superuser) session on the database keeps the rename waiting: the swap
    # holds the database's lock, the current database is renamed in its transaction, and
    # the process dies -- PostgreSQL rolls the transaction back
    backup_id, backup, old = _backup_then_change(env)
    _, keep_as = _names(env, backup_id)
    holder = env.db.connect()
    watch = Watch(env)
    oid = watch.one("SELECT oid FROM pg_database WHERE datname = %s", env.db.name)
    try:
        outcome = kill_at(
            spawn(env, "backup", "restore", backup_id, "--in-place"),
            lambda: bool(
                watch.one(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'object' AND l.classid = 'pg_database'::regclass"
                    " AND l.objid = %s AND l.mode = 'AccessExclusiveLock' AND l.granted"
                    " AND a.application_name = %s",
                    oid,
                    SWAP_APPLICATION,
                )
            ),
        )
    finally:
        watch.close()
        holder.close()
    assert outcome.killed
    assert not _assert_live(env, keep_as, backup, old)
    _restore_again(env, backup_id, keep_as, backup)


def test_restore_in_place_killed_after_the_swap(env: Env) -> None:
    backup_id, backup, old = _backup_then_change(env)
    _, keep_as = _names(env, backup_id)
    watch = Watch(env)
    try:
        outcome = kill_at(
            spawn(env, "backup", "restore", backup_id, "--in-place"),
            lambda: watch.exists(keep_as),
            slice_s=0.0005,
        )
    finally:
        watch.close()
    # the few milliseconds after the commit may be over before a slice ends: then it
    # finished, which leaves the same state (and its audit record)
    assert outcome.killed or outcome.returncode == 0, outcome.stderr
    assert _assert_live(env, keep_as, backup, old)
    again = run(env, "backup", "restore", backup_id, "--in-place")
    assert again.returncode == 6, again.stderr
    assert f"backup {backup_id} was already restored in place here" in again.stderr
    assert _data(env) == backup and _data(env, keep_as) == old


# --- backup prune -------------------------------------------------------------------------------


def test_prune_killed_between_deletions(s3_env: Env) -> None:
    import boto3

    ids = []
    for _ in range(4):
        created = s3_env.run("backup create -o json")
        assert created.exit_code == 0, created.output
        ids.append(created.json()["id"])
    client = boto3.client("s3", endpoint_url=s3_env.extra["aws_endpoint_url"])
    bucket, prefix = s3_env.repo_url.removeprefix("s3://").split("/", 1)

    def keys() -> list[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def manifests() -> set[str]:
        return {k.split("/")[-2] for k in keys() if k.endswith("/manifest.json")}

    policy = "--keep-last 1 --keep-daily 0 --keep-weekly 0 --keep-monthly 0"
    command = f"backup prune {policy} --orphans-older-than 0".split()
    outcome = kill_at(spawn(s3_env, *command), lambda: 1 < len(manifests()) < 4, slice_s=0.001)
    assert outcome.killed
    left = manifests()
    assert ids[-1] in left and 1 < len(left) < 4
    assert set(_listed_backups_verify(s3_env)) == left
    again = run(s3_env, *command, "-o", "json")
    assert again.returncode == 0, again.stderr
    # the killed prune's lock names a process gone from this machine: taken over at once
    assert "backup prune by" in (json.loads(again.stdout)["took_over_lock"] or "")
    assert manifests() == {ids[-1]}
    assert {k.split("/")[-2] for k in keys() if "/backups/" in k} == {ids[-1]}
    assert _listed_backups_verify(s3_env) == [ids[-1]]
