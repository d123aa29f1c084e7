"""Unpacking a base backup's tar (ptool_ops/pitr/untar.py): every byte and mode lands
where the tar says, whatever the chunking; what a base backup never holds is refused before
anything of it is written; a cut-short stream or a failed write is a sentence, not a
half-silent success; and the stream is always read to its end (where the repository
checks size and checksum)."""

from __future__ import annotations

import io
import os
import random
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ptool_ops.errors import OperationFailed
from ptool_ops.pitr import untar


def _tar(members: list[tuple[str, bytes | None, int]], *, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A ustar archive: (name, data or None for a directory, mode)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.type = kind
                info.size = len(data) if kind == tarfile.REGTYPE else 0
                if kind == tarfile.SYMTYPE:
                    info.linkname = "/etc/passwd"
                tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return out.getvalue()


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    at, n = 0, 0
    while at < len(data):
        size = sizes[n % len(sizes)]
        yield data[at : at + size]
        at, n = at + size, n + 1


class _Counting:
    """A chunk source that says whether it was read to its end."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.exhausted = False

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks
        self.exhausted = True


def _members() -> list[tuple[str, bytes | None, int]]:
    rng = random.Random(7)
    big = rng.randbytes(untar.PIECE * 2 + 12345)  # several pieces, shared by the writers
    middle = rng.randbytes(untar.SMALL + 1)  # queued to a writer
    return [
        ("base", None, 0o700),
        ("base/1", None, 0o750),
        ("base/1/16384", big, 0o600),
        ("base/1/16385", middle, 0o640),
        ("base/1/16386", b"", 0o600),
        ("global", None, 0o700),
        ("global/pg_control", rng.randbytes(8192), 0o600),
        ("PG_VERSION", b"18\n", 0o600),
        ("pg_wal/000000010000000000000002", rng.randbytes(untar.SMALL - 1), 0o600),
    ]


@pytest.mark.parametrize("sizes", [[1 << 20], [511, 7, 70_000], [3 * 1024 * 1024 + 1]])
def test_every_file_and_mode_lands_whatever_the_chunking(tmp_path: Path, sizes: list[int]) -> None:
    members = _members()
    source = _Counting(_chunks(_tar(members), sizes))
    into = tmp_path / "pgdata"
    seen: list[int] = []

    files = untar.unpack(source, into, what="base backup B", progress=seen.append)

    assert files == sum(1 for _, data, _ in members if data is not None)
    for name, data, mode in members:
        path = into / name
        assert os.stat(path).st_mode & 0o777 == mode, name
        if data is not None:
            assert path.read_bytes() == data, name
    assert source.exhausted, "the stream must be read to its end (the checksum is there)"
    assert seen == sorted(seen) and seen[-1] > len(members[2][1] or b"")


@pytest.mark.parametrize("name", ["../escaped", "/tmp/absolute", "base/../../escaped"])
def test_a_name_outside_the_directory_is_refused(tmp_path: Path, name: str) -> None:
    data = _tar([("base", None, 0o700), (name, b"x" * 10, 0o600)])

    with pytest.raises(OperationFailed, match="a name outside the data directory"):
        untar.unpack(_chunks(data, [4096]), tmp_path / "pgdata", what="base backup B")

    assert not (tmp_path / "escaped").exists()
    assert not Path("/tmp/absolute").exists()


def test_a_link_is_refused(tmp_path: Path) -> None:
    data = _tar([("pg_wal", b"", 0o777)], kind=tarfile.SYMTYPE)

    with pytest.raises(
        OperationFailed,
        match="holds 'pg_wal', a symbolic link; a base backup holds directories and regular",
    ):
        untar.unpack(_chunks(data, [4096]), tmp_path / "pgdata", what="base backup B")

    assert not (tmp_path / "pgdata" / "pg_wal").exists()


def test_a_stream_cut_inside_a_file_fails_naming_it(tmp_path: Path) -> None:
    data = _tar(_members())
    cut = data.index(b"16384") + untar.BLOCK + untar.PIECE  # inside the big file

    with pytest.raises(OperationFailed, match=r"ends inside 'base/1/16384' \("):
        untar.unpack(_chunks(data[:cut], [65536]), tmp_path / "pgdata", what="base backup B")


def test_a_damaged_header_fails(tmp_path: Path) -> None:
    data = bytearray(_tar(_members()))
    data[148:156] = b"0000000\0"  # the first header's checksum

    with pytest.raises(OperationFailed, match="base backup B is not a readable tar after 0"):
        untar.unpack(_chunks(bytes(data), [4096]), tmp_path / "pgdata", what="base backup B")


def test_a_write_that_fails_is_a_sentence_and_nothing_is_overwritten(tmp_path: Path) -> None:
    into = tmp_path / "pgdata"
    (into / "global").mkdir(parents=True)
    (into / "global" / "pg_control").write_bytes(b"already here")

    with pytest.raises(OperationFailed, match=r"cannot write .*pg_control while unpacking"):
        untar.unpack(_chunks(_tar(_members()), [1 << 20]), into, what="base backup B")

    assert (into / "global" / "pg_control").read_bytes() == b"already here"


def test_an_error_of_the_source_propagates(tmp_path: Path) -> None:
    """The repository raises at the stream's end when the checksum differs: that error
    is the restore's, after the files were written."""

    class Damaged(Exception):
        pass

    def chunks() -> Iterator[bytes]:
        yield from _chunks(_tar(_members()), [1 << 20])
        raise Damaged("checksum")

    with pytest.raises(Damaged):
        untar.unpack(chunks(), tmp_path / "pgdata", what="base backup B")
