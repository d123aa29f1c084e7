"""The secret stores rotation drives: every behaviour on both stores, the AWS one against
the moto server over HTTP; then what only one of them has (AWS errors, file modes, locks)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import traceback
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError

from ptool_ops import aws
from ptool_ops.errors import ConfigError, Conflict, OperationFailed, PtoolError, ServiceUnavailable
from ptool_ops.secrets import store as store_module
from ptool_ops.secrets.store import (
    CURRENT,
    PENDING,
    PREVIOUS,
    AwsSecretStore,
    FileSecretStore,
    SecretStore,
    open_store,
)
from tests.conftest import add_canaries

ROOT = Path(__file__).resolve().parents[2]


def token() -> str:
    return str(uuid.uuid4())


def labels(store: SecretStore) -> dict[str, set[str]]:
    return {v.id: set(v.labels) for v in store.describe()}


def value_of(store: SecretStore, **where: str) -> str | None:
    found = store.value(**where)
    return None if found is None else found.get_secret_value()


def everything_said(err: PtoolError) -> str:
    """All an operator or a log could see of an error: message, hint, JSON, traceback."""
    return "\n".join(
        [str(err), err.hint or "", json.dumps(err.to_dict()), *traceback.format_exception(err)]
    )


@pytest.fixture
def canary() -> str:
    value = f"store-canary-{uuid.uuid4().hex}"
    add_canaries(value)
    return value


@pytest.fixture(params=["aws", "file"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> SecretStore:
    """A store of a secret that does not exist yet."""
    if kind == "aws":
        endpoint = request.getfixturevalue("aws_env")
        return open_store(
            f"aws-sm:ptool-test/{uuid.uuid4().hex[:12]}",
            aws_region="us-east-1",
            aws_endpoint_url=endpoint,
        )
    return open_store(
        f"file:{tmp_path / 'secrets' / 'db.json'}", aws_region=None, aws_endpoint_url=None
    )


@pytest.fixture
def created(store: SecretStore) -> tuple[SecretStore, str]:
    """A store whose secret has its first version ``v1``; yields it and that version's id."""
    first = token()
    store.create("v1", first)
    return store, first


# --- both stores -------------------------------------------------------------------------------


def test_create_then_describe_and_read_by_label_and_id(store: SecretStore) -> None:
    assert not store.exists()
    first = token()
    store.create('{"password": "v1"}', first)

    assert store.exists()
    [version] = store.describe()
    assert version.id == first
    assert version.labels == {CURRENT}
    assert version.created is not None and version.created.utcoffset() == timedelta(0)
    assert value_of(store, label=CURRENT) == '{"password": "v1"}'
    assert value_of(store, version_id=first) == '{"password": "v1"}'
    assert value_of(store) == '{"password": "v1"}'
    assert value_of(store, version_id=first, label=CURRENT) == '{"password": "v1"}'
    assert store.value(label=PENDING) is None
    assert store.value(version_id=token()) is None
    assert store.value(version_id=first, label=PENDING) is None


def test_create_is_idempotent_but_never_overwrites(created: tuple[SecretStore, str]) -> None:
    store, first = created
    store.create("v1", first)  # a retried bootstrap
    with pytest.raises(Conflict, match="already exists"):
        store.create("v1", token())
    with pytest.raises(Conflict):
        store.create("other", first)
    assert labels(store) == {first: {CURRENT}}
    assert value_of(store) == "v1"


def test_a_missing_secret_is_a_config_error_naming_it(store: SecretStore) -> None:
    assert not store.exists()
    for attempt in (
        store.describe,
        lambda: store.value(label=CURRENT),
        lambda: store.put_pending(token(), "v2"),
        lambda: store.move_label(CURRENT, token(), from_version=None),
        lambda: store.remove_label(PENDING, token()),
    ):
        with pytest.raises(ConfigError) as caught:
            attempt()
        assert store.name in caught.value.message
        assert caught.value.hint
    assert not store.exists()


def test_new_pending_version_leaves_current_alone(created: tuple[SecretStore, str]) -> None:
    store, first = created
    second = token()
    store.put_pending(second, "v2")

    assert [v.id for v in store.describe()] == [second, first]  # newest first
    assert labels(store) == {second: {PENDING}, first: {CURRENT}}
    assert value_of(store, label=PENDING) == "v2"
    assert value_of(store, label=CURRENT) == "v1"


def test_put_pending_again_with_the_same_value_changes_nothing(
    created: tuple[SecretStore, str],
) -> None:
    store, first = created
    second = token()
    store.put_pending(second, "v2")
    before = store.describe()
    store.put_pending(second, "v2")
    # (moto's list_secret_version_ids dates every version "now": compare ids and labels)
    assert [(v.id, v.labels) for v in store.describe()] == [(v.id, v.labels) for v in before]
    assert labels(store) == {second: {PENDING}, first: {CURRENT}}


def test_put_pending_refuses_another_value_for_the_same_token(
    created: tuple[SecretStore, str], canary: str
) -> None:
    """moto would replace the pending version and drop AWSCURRENT: the store never lets it."""
    store, first = created
    second = token()
    store.put_pending(second, "v2")
    with pytest.raises(OperationFailed) as caught:
        store.put_pending(second, canary)
    assert second in caught.value.message
    assert canary not in everything_said(caught.value)

    assert labels(store) == {second: {PENDING}, first: {CURRENT}}
    assert value_of(store, label=CURRENT) == "v1"
    assert value_of(store, version_id=second) == "v2"


def test_a_finished_version_is_never_rewritten(created: tuple[SecretStore, str]) -> None:
    store, first = created
    with pytest.raises(OperationFailed):
        store.put_pending(first, "v2")
    store.put_pending(first, "v1")  # same value: a retried step, nothing to do
    assert labels(store) == {first: {CURRENT}}


def test_a_new_pending_version_takes_the_label_from_the_old(
    created: tuple[SecretStore, str],
) -> None:
    store, first = created
    second, third = token(), token()
    store.put_pending(second, "v2")
    store.put_pending(third, "v3")
    assert labels(store) == {third: {PENDING}, first: {CURRENT}}
    assert value_of(store, label=PENDING) == "v3"
    assert value_of(store, version_id=second) == "v2"  # unlabelled, still readable by id


def test_moving_current_makes_the_old_version_previous(created: tuple[SecretStore, str]) -> None:
    store, first = created
    second = token()
    store.put_pending(second, "v2")
    store.move_label(CURRENT, second, from_version=first)

    # AWSPENDING stays on the new current version, as with AWS's own rotations
    assert labels(store) == {second: {CURRENT, PENDING}, first: {PREVIOUS}}
    assert value_of(store) == "v2"
    assert value_of(store, label=PREVIOUS) == "v1"

    store.move_label(CURRENT, second, from_version=first)  # a retried finish: no-op
    assert labels(store) == {second: {CURRENT, PENDING}, first: {PREVIOUS}}


def test_rollback_moves_current_back_to_previous(created: tuple[SecretStore, str]) -> None:
    store, first = created
    second = token()
    store.put_pending(second, "v2")
    store.move_label(CURRENT, second, from_version=first)

    store.move_label(CURRENT, first, from_version=second)
    assert labels(store) == {first: {CURRENT}, second: {PENDING, PREVIOUS}}
    assert value_of(store) == "v1"


def test_remove_pending_and_removing_again_is_a_no_op(created: tuple[SecretStore, str]) -> None:
    store, first = created
    second = token()
    store.put_pending(second, "v2")
    store.move_label(CURRENT, second, from_version=first)

    store.remove_label(PENDING, second)
    assert labels(store) == {second: {CURRENT}, first: {PREVIOUS}}
    store.remove_label(PENDING, second)
    store.remove_label(PENDING, first)
    store.remove_label(PENDING, token())
    assert labels(store) == {second: {CURRENT}, first: {PREVIOUS}}
    assert store.value(label=PENDING) is None


def test_two_rotations_in_a_row(created: tuple[SecretStore, str]) -> None:
    store, first = created
    previous = first
    for n in (2, 3):
        new = token()
        store.put_pending(new, f"v{n}")
        store.move_label(CURRENT, new, from_version=previous)
        store.remove_label(PENDING, new)
        previous_of_new = previous
        previous = new
    assert labels(store) == {previous: {CURRENT}, previous_of_new: {PREVIOUS}}
    assert value_of(store) == "v3"
    assert value_of(store, label=PREVIOUS) == "v2"
    assert value_of(store, version_id=first) == "v1"  # unlabelled now, not described


def test_a_label_elsewhere_than_expected_is_a_conflict(created: tuple[SecretStore, str]) -> None:
    store, first = created
    second, third = token(), token()
    store.put_pending(second, "v2")
    store.put_pending(third, "v3")
    with pytest.raises(Conflict, match=f"{CURRENT} .* is on version {first}"):
        store.move_label(CURRENT, third, from_version=second)
    with pytest.raises(Conflict):
        store.move_label(CURRENT, third, from_version=None)
    with pytest.raises(OperationFailed, match="has no version"):
        store.move_label(CURRENT, token(), from_version=first)
    assert labels(store) == {third: {PENDING}, first: {CURRENT}}


def test_any_label_can_move_to_an_unlabelled_version(created: tuple[SecretStore, str]) -> None:
    store, first = created
    second, third = token(), token()
    store.put_pending(second, "v2")
    store.put_pending(third, "v3")  # second is unlabelled now
    store.move_label(PENDING, second, from_version=third)
    assert labels(store) == {second: {PENDING}, first: {CURRENT}}
    store.move_label("OPERATOR_MARK", third, from_version=None)
    assert labels(store) == {second: {PENDING}, third: {"OPERATOR_MARK"}, first: {CURRENT}}


def test_current_can_only_be_moved_and_tokens_are_checked(
    created: tuple[SecretStore, str],
) -> None:
    store, first = created
    with pytest.raises(ValueError, match="never removed"):
        store.remove_label(CURRENT, first)
    with pytest.raises(ValueError, match="32 to 64"):
        store.put_pending("short", "v2")
    with pytest.raises(ValueError, match="32 to 64"):
        store.create("v2", "has spaces in it, so not a token at all")
    assert labels(store) == {first: {CURRENT}}


# --- references ---------------------------------------------------------------------------------


def test_open_store_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    by_cwd = open_store("file:rel/db.json", aws_region=None, aws_endpoint_url=None)
    assert isinstance(by_cwd, FileSecretStore) and by_cwd.name == str(tmp_path / "rel/db.json")
    beside = open_store(
        "file:db.json", aws_region=None, aws_endpoint_url=None, local_dir=tmp_path / "local"
    )
    assert beside.name == str(tmp_path / "local" / "db.json")
    absolute = open_store(f"file:{tmp_path}/a.json", aws_region=None, aws_endpoint_url=None)
    assert absolute.name == str(tmp_path / "a.json")

    remote = open_store("aws-sm:prod/db", aws_region="eu-west-1", aws_endpoint_url=None)
    assert isinstance(remote, AwsSecretStore) and remote.name == "prod/db"

    for bad in ("env:DATABASE_URL", "aws-sm:prod/db#password", "aws-sm:", "prod/db", "s3:x"):
        with pytest.raises(ConfigError):
            open_store(bad, aws_region=None, aws_endpoint_url=None)


# --- AWS only -----------------------------------------------------------------------------------


@pytest.fixture
def aws_store(aws_env: str) -> AwsSecretStore:
    name = f"ptool-test/{uuid.uuid4().hex[:12]}"
    store = AwsSecretStore(name, region="us-east-1", endpoint_url=aws_env)
    store.create("v1", token())
    return store


def _raise_on(store: AwsSecretStore, operation: str, error: Exception) -> None:
    def handler(**_: Any) -> None:
        raise error

    store.client.meta.events.register(f"before-call.secrets-manager.{operation}", handler)


@pytest.mark.parametrize("error", ["ClientError", "ParamValidationError"])
def test_aws_errors_never_quote_the_request(
    aws_store: AwsSecretStore, canary: str, error: str
) -> None:
    """botocore's errors can quote request parameters: messages use the code and name only."""
    quoting: Exception = (
        ClientError(
            {"Error": {"Code": "ValidationException", "Message": f"bad SecretString {canary}"}},
            "PutSecretValue",
        )
        if error == "ClientError"
        else ParamValidationError(report=f"Invalid type for SecretString, value: {canary}")
    )
    _raise_on(aws_store, "PutSecretValue", quoting)
    with pytest.raises(OperationFailed) as caught:
        aws_store.put_pending(token(), canary)
    said = everything_said(caught.value)
    assert canary not in said
    assert aws_store.name in said
    assert ("ValidationException" if error == "ClientError" else error) in said
    assert value_of(aws_store) == "v1"


def test_aws_access_denied_names_the_secret_and_the_permission(
    aws_store: AwsSecretStore,
) -> None:
    denied = ClientError(
        {"Error": {"Code": "AccessDeniedException", "Message": "User: arn:... is not authorized"}},
        "GetSecretValue",
    )
    _raise_on(aws_store, "GetSecretValue", denied)
    with pytest.raises(ConfigError) as caught:
        aws_store.value(label=CURRENT)
    assert aws_store.name in caught.value.message
    assert "secretsmanager:GetSecretValue" in (caught.value.hint or "")


@pytest.mark.usefixtures("aws_env")  # credentials, never used: nothing answers
def test_aws_unreachable_is_service_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = aws.client(
        "secretsmanager",
        region="us-east-1",
        endpoint_url=f"http://127.0.0.1:{port}",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    store = AwsSecretStore("prod/db", client=client)
    with pytest.raises(ServiceUnavailable, match="prod/db"):
        store.describe()


def test_aws_secret_scheduled_for_deletion(aws_store: AwsSecretStore) -> None:
    aws_store.client.delete_secret(SecretId=aws_store.name)
    assert aws_store.exists()  # the name is taken
    with pytest.raises(ConfigError, match="scheduled for deletion"):
        aws_store.describe()
    with pytest.raises(ConfigError, match="scheduled for deletion"):
        aws_store.put_pending(token(), "v2")  # moto itself would accept this one
    with pytest.raises(ConfigError, match="scheduled for deletion"):
        aws_store.create("v1", token())


def test_aws_binary_secret_is_refused(aws_env: str) -> None:
    store = AwsSecretStore(f"ptool-test/{uuid.uuid4().hex[:12]}", endpoint_url=aws_env)
    store.client.create_secret(Name=store.name, SecretBinary=b"\x00\x01")
    with pytest.raises(ConfigError, match="binary"):
        store.value()


# --- the file store only ------------------------------------------------------------------------


@pytest.fixture
def file_store(tmp_path: Path) -> FileSecretStore:
    store = FileSecretStore(tmp_path / "secrets" / "db.json")
    store.create("v1", token())
    return store


def raw_versions(store: FileSecretStore) -> list[dict[str, Any]]:
    versions: list[dict[str, Any]] = json.loads(store.path.read_text())["versions"]
    return versions


def test_file_modes(file_store: FileSecretStore) -> None:
    assert stat.S_IMODE(file_store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(file_store.path.parent.stat().st_mode) == 0o700
    lock = file_store.path.with_name(".db.json.lock")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    file_store.put_pending(token(), "v2")  # a rewrite keeps the mode
    assert stat.S_IMODE(file_store.path.stat().st_mode) == 0o600


def test_a_file_open_to_others_is_refused(file_store: FileSecretStore) -> None:
    os.chmod(file_store.path, 0o644)
    for attempt in (
        file_store.describe,
        file_store.value,
        lambda: file_store.put_pending(token(), "x"),
    ):
        with pytest.raises(ConfigError, match="0644") as caught:
            attempt()
        assert f"chmod 600 {file_store.path}" in (caught.value.hint or "")
    os.chmod(file_store.path, 0o600)
    assert value_of(file_store) == "v1"


def test_a_file_that_is_not_a_store_is_refused_without_quoting_it(
    tmp_path: Path, canary: str
) -> None:
    path = tmp_path / "db.json"
    path.write_text(json.dumps({"password": canary}))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not a ptool-ops secret file") as caught:
        FileSecretStore(path).describe()
    assert canary not in everything_said(caught.value)
    path.write_text('{"format": 1, "versions": [' + canary)
    with pytest.raises(ConfigError) as caught:
        FileSecretStore(path).value()
    assert canary not in everything_said(caught.value)


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers linger between reading and writing: without the lock, updates would be lost."""
    write = FileSecretStore._write

    def slow(self: FileSecretStore, entries: list[Any]) -> None:
        time.sleep(0.05)
        write(self, entries)

    monkeypatch.setattr(FileSecretStore, "_write", slow)


@pytest.mark.usefixtures("slow_writes")
def test_concurrent_writers_in_threads_all_land(file_store: FileSecretStore) -> None:
    tokens = [token() for _ in range(4)]
    start = threading.Barrier(len(tokens))
    failures: list[BaseException] = []

    def write(tok: str) -> None:
        store = FileSecretStore(file_store.path)  # its own lock descriptor, as another run
        start.wait()
        try:
            store.put_pending(tok, f"value-{tok}")
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=write, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    stored = {v["id"]: v["value"] for v in raw_versions(file_store)}
    assert {t: stored.get(t) for t in tokens} == {t: f"value-{t}" for t in tokens}
    assert sum(PENDING in v.labels for v in file_store.describe()) == 1


_WRITER = """
import sys, time
from pathlib import Path
from ptool_ops.secrets.store import FileSecretStore

write = FileSecretStore._write
def slow(self, entries):
    time.sleep(0.05)
    write(self, entries)
FileSecretStore._write = slow
store = FileSecretStore(Path(sys.argv[1]))
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
for tok in sys.argv[3:]:
    store.put_pending(tok, "value-" + tok)
"""


def test_concurrent_writers_in_processes_all_land(file_store: FileSecretStore) -> None:
    tokens = [token() for _ in range(4)]
    start_at = str(time.time() + 1.0)  # both interpreters have started by then
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(file_store.path), start_at, *pair],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pair in (tokens[:2], tokens[2:])
    ]
    for writer in writers:
        _, err = writer.communicate(timeout=30)
        assert writer.returncode == 0, err
    stored = {v["id"]: v["value"] for v in raw_versions(file_store)}
    assert {t: stored.get(t) for t in tokens} == {t: f"value-{t}" for t in tokens}


def test_a_busy_lock_times_out_as_a_conflict(
    file_store: FileSecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "LOCK_TIMEOUT", 0.2)
    fd = os.open(file_store.path.with_name(".db.json.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(Conflict, match="locked by another run"):
            file_store.put_pending(token(), "v2")
        assert value_of(file_store) == "v1"  # readers take no lock
    finally:
        os.close(fd)


def test_writes_are_atomic_and_leave_no_temp_files(
    file_store: FileSecretStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = token()
    file_store.put_pending(second, "v2")
    first = next(v.id for v in file_store.describe() if CURRENT in v.labels)
    file_store.move_label(CURRENT, second, from_version=first)
    assert sorted(os.listdir(file_store.path.parent)) == [".db.json.lock", "db.json"]

    before = file_store.path.read_bytes()

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OperationFailed, match="No space left on device"):
        file_store.put_pending(token(), "v3")
    assert file_store.path.read_bytes() == before
    assert sorted(os.listdir(file_store.path.parent)) == [".db.json.lock", "db.json"]


def test_only_a_few_unlabelled_versions_are_kept(file_store: FileSecretStore) -> None:
    tokens = [token() for _ in range(store_module.KEEP_UNLABELLED + 4)]
    for n, tok in enumerate(tokens):
        file_store.put_pending(tok, f"v{n}")
    stored = [v["id"] for v in raw_versions(file_store)]
    unlabelled = [v["id"] for v in raw_versions(file_store) if not v["labels"]]
    assert unlabelled == tokens[-1 - store_module.KEEP_UNLABELLED : -1]  # the newest few
    assert len(stored) == store_module.KEEP_UNLABELLED + 2  # plus CURRENT and PENDING
    assert value_of(file_store) == "v1"
    assert value_of(file_store, label=PENDING) == f"v{len(tokens) - 1}"


def test_the_file_store_needs_no_aws(tmp_path: Path) -> None:
    """Opening and using a file store imports no botocore (start-up cost, no AWS needed)."""
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from ptool_ops.secrets.store import open_store\n"
        f"s = open_store('file:{tmp_path}/x.json', aws_region=None, aws_endpoint_url=None)\n"
        "s.create('v1', '0' * 32)\ns.describe()\n"
        "assert 'botocore' not in sys.modules, 'botocore imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)
