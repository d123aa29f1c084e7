"""What operators see when things are wrong: a flipped byte, the wrong key, a missing id;
and the plan a dry run prints, and an in-place restore that keeps the way back."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from ptool_ops.booking.seed import seed
from tests.backup.conftest import KEY, OTHER_KEY, Env, table_checksums
from tests.conftest import admin_url


def _create(env: Env) -> str:
    created = env.run("backup create -o json")
    assert created.exit_code == 0, created.output
    return str(created.json()["id"])


def _databases(env: Env) -> set[str]:
    with env.db.connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_one_flipped_byte_fails_verify_and_restore(file_env: Env) -> None:
    backup_id = _create(file_env)
    repo = Path(file_env.repo_url.removeprefix("file://"))
    data = repo / "backups" / backup_id / "data.pgdump.zst"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3] ^= 0x40
    data.write_bytes(bytes(raw))

    verified = file_env.run(f"backup verify {backup_id}")
    assert verified.exit_code == 1
    assert "data.pgdump.zst does not match its SHA-256 checksum" in verified.output
    assert "Traceback" not in verified.output
    as_json = file_env.run(f"backup verify {backup_id} -o json").json()
    assert as_json["ok"] is False and as_json["objects"][0]["ok"] is False

    before = _databases(file_env)
    restored = file_env.run(f"backup restore {backup_id}")
    assert restored.exit_code == 8, restored.output
    assert "does not match its SHA-256 checksum" in restored.stderr
    assert "Traceback" not in restored.output
    assert _databases(file_env) == before  # nothing was created


def test_wrong_key_fails_cleanly(file_env: Env) -> None:
    file_env.cli.env["PTOOL_BACKUP_KEY"] = KEY
    backup_id = _create(file_env)
    file_env.cli.env["PTOOL_BACKUP_KEY"] = OTHER_KEY
    for command in (f"backup verify {backup_id}", f"backup restore {backup_id}"):
        result = file_env.run(command)
        assert result.exit_code == 3, result.output
        assert "was encrypted with key" in result.stderr
        assert "Traceback" not in result.output
        assert OTHER_KEY not in result.output and KEY not in result.output
    del file_env.cli.env["PTOOL_BACKUP_KEY"]
    result = file_env.run(f"backup verify {backup_id} -o json")
    assert result.exit_code == 3
    assert "no backup key is configured" in result.json()["message"]


def test_key_from_a_secret_reference(file_env: Env, tmp_path: Path) -> None:
    key_file = tmp_path / "backup.key"
    key_file.write_text(KEY + "\n")
    file_env.configure(backup_key_secret=f"file:{key_file}")
    backup_id = _create(file_env)
    shown = file_env.run(f"backup show {backup_id} -o json").json()
    assert shown["objects"][0]["encryption"] is not None
    assert file_env.run(f"backup verify {backup_id}").exit_code == 0


def test_unknown_backup_and_empty_repository(file_env: Env) -> None:
    Path(file_env.repo_url.removeprefix("file://")).mkdir()  # empty, but there
    result = file_env.run("backup show nope")
    assert result.exit_code == 8
    assert "there is no complete backup 'nope'" in result.stderr
    assert file_env.run("backup restore latest").exit_code == 8
    assert file_env.run("backup list -o json").json() == []


def test_dry_run_restore_prints_the_plan_and_changes_nothing(file_env: Env) -> None:
    backup_id = _create(file_env)
    before = _databases(file_env)
    result = file_env.run(f"backup restore {backup_id} --in-place --dry-run -o json")
    assert result.exit_code == 0, result.output
    plan = result.json()
    assert plan["dry_run"] is True
    assert [s["name"] for s in plan["steps"]] == [
        "checksums",
        "create-database",
        "restore-data",
        "restore-post-data",
        "validate",
        "swap",
    ]
    assert all(s["status"] == "planned" for s in plan["steps"])
    text = file_env.run(f"backup restore {backup_id} --dry-run")
    assert "pg_restore -j 2" in text.stdout
    assert _databases(file_env) == before


def test_in_place_restore_swaps_and_keeps_the_old_database(file_env: Env) -> None:
    with file_env.db.connect() as conn:
        before = table_checksums(conn)
    backup_id = _create(file_env)
    with file_env.db.connect() as conn:
        seed(conn, tenants=1, bookings=10, seed=8)  # a change after the backup
    file_env.configure(protected="true")
    refused = file_env.run(f"backup restore {backup_id} --in-place")
    assert refused.exit_code == 7  # no terminal, no --yes
    done = file_env.run(f"backup restore {backup_id} --in-place --yes -o json")
    assert done.exit_code == 0, done.output
    kept = done.json()["previous_database"]
    assert kept.startswith(f"{file_env.db.name}_before_")
    with file_env.db.connect() as conn:
        assert table_checksums(conn) == before
    with psycopg.connect(admin_url(file_env.db.server, kept), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM booking.tenants").fetchone() == (4,)


def test_verify_with_restore_checks_invariants_and_drops_the_scratch(file_env: Env) -> None:
    backup_id = _create(file_env)
    before = _databases(file_env)
    result = file_env.run(f"backup verify {backup_id} --restore -o json")
    assert result.exit_code == 0, result.output
    data = result.json()
    assert data["ok"] is True and data["restore"]["row_count_mismatches"] == []
    assert _databases(file_env) == before
    listed = file_env.run("backup list -o json").json()
    assert listed[0]["verified_at"] is not None


def test_a_backup_that_breaks_an_invariant_fails_verify_restore(file_env: Env) -> None:
    with file_env.db.connect() as conn:
        conn.execute("ALTER TABLE booking.bookings DISABLE ROW LEVEL SECURITY")
    backup_id = _create(file_env)
    result = file_env.run(f"backup verify {backup_id} --restore -o json")
    assert result.exit_code == 1, result.output
    data = result.json()
    assert data["ok"] is False
    assert any("invariant violation" in p for p in data["problems"])
    failing = [r["name"] for r in data["restore"]["invariants"]["checks"] if not r["ok"]]
    assert failing == ["rls_enabled"]
    restored = file_env.run(f"backup restore {backup_id} --target-db {file_env.db.name}_bad")
    assert restored.exit_code == 1
    assert "fails validation" in restored.stdout


def _dump_sessions(env: Env) -> int:
    """pg_dump sessions still open, after giving a killed one's backend time to notice."""
    import time

    deadline = time.monotonic() + 5
    with env.db.connect() as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pg_dump'"
            ).fetchone()
            count = int(row[0]) if row else 0
            if count == 0 or time.monotonic() > deadline:
                return count
            time.sleep(0.1)


def test_a_missing_bucket_fails_the_preflight_and_stores_nothing(s3_env: Env) -> None:
    # the audit trail's "started" event is the first write: the missing bucket refuses it,
    # with the bucket's own exit code and sentence, before any dump starts
    s3_env.configure(repo_url="s3://no-such-bucket-ptool/x")
    result = s3_env.run("backup create")
    assert result.exit_code == 3, result.output
    assert "the audit trail at s3://no-such-bucket-ptool/x/audit/t/ could not be written" in (
        result.stderr
    )
    assert "NoSuchBucket" in result.stderr and "nothing was done" in result.stderr
    assert _dump_sessions(s3_env) == 0


def test_a_backup_that_cannot_reach_the_database_leaves_a_new_repository_untouched(
    file_env: Env, tmp_path: Path
) -> None:
    # the attempt is on record in the environment's audit trail (the repository's first
    # objects), but no backup and no partial upload is left
    fresh = tmp_path / "fresh"
    file_env.configure(
        database_url="postgresql://nobody:secret@127.0.0.1:1/db", repo_url=f"file://{fresh}"
    )
    result = file_env.run("backup create")
    assert result.exit_code == 4, result.output
    assert "cannot connect" in result.stderr and "secret" not in result.output
    assert sorted(p.name for p in fresh.iterdir()) == [".ptool-guard", "audit", "ptool-repo.json"]
    (attempt,) = file_env.cli.audit_events("t")
    assert attempt["action"] == "backup.create" and attempt["outcome"] == "failed"
    assert "cannot connect" in attempt["details"]["error"]
    assert "secret" not in json.dumps(attempt)
    file_env.configure(repo_url=f"file://{fresh}")
    assert file_env.run("backup create").exit_code == 0
    assert (fresh / "ptool-repo.json").is_file()


@pytest.mark.parametrize(
    "marker",
    ['{"format": "someone-elses-tool"}\n', "not json at all\n"],
    ids=["foreign", "garbled"],
)
def test_a_foreign_or_garbled_repository_is_refused_before_anything_is_written(
    file_env: Env, tmp_path: Path, marker: str
) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "ptool-repo.json").write_text(marker)
    file_env.configure(repo_url=f"file://{foreign}")
    result = file_env.run("backup create")
    assert result.exit_code == 3, result.output
    assert "holds something other than a ptool-ops repository" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in foreign.iterdir()) == ["ptool-repo.json"]
    assert _dump_sessions(file_env) == 0


def test_a_foreign_s3_repository_gets_no_object_and_no_upload(s3_env: Env) -> None:
    # on S3 the writers hold their first request until the marker check has passed
    import boto3

    bucket = s3_env.repo_url.removeprefix("s3://").split("/", 1)[0]
    client = boto3.client("s3", endpoint_url=s3_env.extra["aws_endpoint_url"])
    client.put_object(Bucket=bucket, Key="other/ptool-repo.json", Body=b'{"format": "x"}')
    s3_env.configure(repo_url=f"s3://{bucket}/other")
    result = s3_env.run("backup create")
    assert result.exit_code == 3, result.output
    assert "holds something other than a ptool-ops repository" in result.stderr
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["other/ptool-repo.json"]
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert _dump_sessions(s3_env) == 0
