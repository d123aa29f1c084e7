"""The repository layer on real backends: atomic writes, multipart, SSE, abort on failure,
checksums, encryption (wrong key, flipped byte, truncation)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ptool_ops.errors import ConfigError
from ptool_ops.repo import crypto
from ptool_ops.repo.errors import CorruptObject, ObjectMissing, WrongKey
from ptool_ops.repo.file import FileStorage
from ptool_ops.repo.repository import Repository
from ptool_ops.repo.s3 import S3Storage
from ptool_ops.repo.storage import Storage

MiB = 1024 * 1024


_buckets = iter(range(10_000))


@pytest.fixture
def s3_storage(aws_env: str, s3_bucket: Any) -> S3Storage:
    bucket = f"repo-{os.getpid()}-{next(_buckets)}"
    s3_bucket(bucket)
    return S3Storage(bucket, "pre/fix", part_size=5 * MiB, endpoint_url=aws_env)


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return FileStorage(tmp_path / "repo")
    return request.getfixturevalue("s3_storage")  # type: ignore[no-any-return]


def _chunks(total: int, size: int = 700_000) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        yield os.urandom(n)
        sent += n


class Boom(Exception):
    pass


def _failing(after: int) -> Iterator[bytes]:
    yield from _chunks(after)
    raise Boom


def test_put_get_list_delete(storage: Storage) -> None:
    storage.put_bytes("a/b.txt", b"hello")
    assert storage.exists("a/b.txt") and not storage.exists("a/c.txt")
    assert storage.get_bytes("a/b.txt") == b"hello"
    assert [o.key for o in storage.list("a/")] == ["a/b.txt"]
    storage.delete("a/b.txt")
    storage.delete("a/b.txt")  # idempotent
    assert not storage.exists("a/b.txt")
    with pytest.raises(ObjectMissing):
        storage.get_bytes("a/b.txt")


def test_big_stream_round_trips_and_failures_leave_nothing(storage: Storage) -> None:
    data = b"".join(_chunks(12 * MiB + 123))
    storage.put_stream("big", [data[i : i + MiB] for i in range(0, len(data), MiB)])
    assert storage.get_bytes("big") == data
    with pytest.raises(Boom):
        storage.put_stream("broken", _failing(11 * MiB))
    assert not storage.exists("broken")
    assert storage.list_partial("") == []


def test_s3_parts_are_equal_and_encrypted_at_rest(s3_storage: S3Storage) -> None:
    storage = s3_storage
    storage.put_stream("big", _chunks(11 * MiB))
    storage.put_bytes("small", b"tiny")
    client: Any = storage.client
    full = f"{storage.prefix}/big"
    head = client.head_object(Bucket=storage.bucket, Key=full)
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB
    assert head["ServerSideEncryption"] == "AES256"
    assert (
        client.head_object(Bucket=storage.bucket, Key=full, PartNumber=2)["ContentLength"]
        == 5 * MiB
    )
    small = client.head_object(Bucket=storage.bucket, Key=f"{storage.prefix}/small")
    assert "-" not in small["ETag"]  # one PutObject
    assert small["ServerSideEncryption"] == "AES256"


def test_s3_checks_a_crc32_of_every_part_unless_turned_off(
    s3_storage: S3Storage, aws_env: str
) -> None:
    import base64
    import zlib

    client: Any = s3_storage.client

    def stored_crc(storage: S3Storage, key: str) -> str | None:
        head = client.head_object(
            Bucket=storage.bucket, Key=f"{storage.prefix}/{key}", ChecksumMode="ENABLED"
        )
        return head.get("ChecksumCRC32")

    s3_storage.put_stream("big", _chunks(11 * MiB))
    s3_storage.put_bytes("small", b"tiny")
    assert stored_crc(s3_storage, "big")  # the composite of the 3 checked parts' CRC32s
    assert (
        stored_crc(s3_storage, "small")
        == base64.b64encode(zlib.crc32(b"tiny").to_bytes(4, "big")).decode()
    )

    off = S3Storage(
        s3_storage.bucket, "off", part_size=5 * MiB, checksum=False, endpoint_url=aws_env
    )
    off.put_stream("big", _chunks(11 * MiB))
    assert stored_crc(off, "big") is None
    assert off.get_bytes("big") and off.list_partial("") == []


def test_killed_upload_is_partial_until_aborted(storage: Storage) -> None:
    writer = storage.open_writer("x/killed")
    for chunk in _chunks(6 * MiB):
        writer.write(chunk)  # a writer that is neither committed nor aborted
    if isinstance(storage, S3Storage):
        writer._parts[0].result()  # type: ignore[attr-defined]
    partial = storage.list_partial("")
    assert [p.key for p in partial] == ["x/killed"]
    assert list(storage.list("x/")) == []
    storage.abort_partial(partial[0])
    assert storage.list_partial("") == []


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository(FileStorage(tmp_path / "r"), key=crypto.parse_key("a" * 64))


def test_encrypted_object_round_trip_and_checksum(repo: Repository) -> None:
    data = b"booking " * 500_000
    entry = repo.write_object("o", [data[i : i + 65536] for i in range(0, len(data), 65536)])
    assert entry.raw_size == len(data) and entry.size < len(data)
    assert entry.encryption is not None
    assert b"booking" not in repo.storage.get_bytes("o")
    assert b"".join(repo.read_object(entry)) == data
    empty = repo.write_object("e", [])
    assert b"".join(repo.read_object(empty)) == b""


def _flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("encrypted", [True, False])
def test_one_flipped_byte_is_caught(tmp_path: Path, encrypted: bool) -> None:
    key = crypto.parse_key("a" * 64) if encrypted else None
    repo = Repository(FileStorage(tmp_path / "r"), key=key)
    entry = repo.write_object("o", [os.urandom(3 * MiB)])
    _flip(tmp_path / "r" / "o", entry.size // 2)
    with pytest.raises(CorruptObject, match=r"damaged|authentication"):
        b"".join(repo.read_object(entry))
    with pytest.raises(CorruptObject, match="SHA-256"):
        repo.checksum(entry)


def test_wrong_or_missing_key_fails_before_reading(tmp_path: Path) -> None:
    writer = Repository(FileStorage(tmp_path / "r"), key=crypto.parse_key("a" * 64))
    entry = writer.write_object("o", [b"secret data"])
    other = Repository(FileStorage(tmp_path / "r"), key=crypto.parse_key("b" * 64))
    with pytest.raises(WrongKey, match="encrypted with key"):
        other.read_object(entry).__next__()
    keyless = Repository(FileStorage(tmp_path / "r"))
    with pytest.raises(WrongKey, match="no backup key"):
        keyless.check_key(entry)
    # a manifest that lies about the key id still cannot decrypt: authentication fails
    forged = entry.model_copy(
        update={
            "encryption": entry.encryption.model_copy(
                update={"key_id": crypto.key_id(crypto.parse_key("b" * 64))}
            )
        }  # type: ignore[union-attr]
    )
    with pytest.raises(CorruptObject, match="authentication"):
        b"".join(other.read_object(forged))


def test_truncated_ciphertext_is_caught() -> None:
    key = crypto.parse_key("c" * 64)
    enc = crypto.Encryptor(key, chunk_size=1024)
    sealed = enc.update(os.urandom(5000)) + enc.finalize()
    cut = sealed[: crypto.HEADER_SIZE + 2 * (1024 + crypto.TAG_SIZE)]  # drop the final chunks
    dec = crypto.Decryptor(key, "o")
    with pytest.raises(CorruptObject):
        dec.update(cut)
        dec.finalize()


@pytest.mark.parametrize("text", ["short", "z" * 64, "YWJj"])
def test_bad_keys_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="32 bytes"):
        crypto.parse_key(text)
