"""pg_dump and pg_restore as byte streams: the password in the environment, never in argv;
stderr kept (bounded) for the error sentence; the child killed if we stop early."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import subprocess
import threading
from collections.abc import Iterable, Iterator
from typing import IO

from pydantic import SecretStr

from ptool_ops import pg
from ptool_ops.errors import DatabaseUnavailable, OperationFailed, PtoolError

READ_SIZE = 1024 * 1024
_F_SETPIPE_SZ = 1031  # Linux: a 1 MiB pipe lets pg_dump run ahead while we compress


def _grow_pipe(stream: IO[bytes] | None) -> None:
    if stream is None:
        return
    # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe still works
    with contextlib.suppress(OSError):
        fcntl.fcntl(stream.fileno(), _F_SETPIPE_SZ, READ_SIZE)


class _StderrTail:
    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=40)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self.lines.append(line)

    def reason(self) -> str:
        self._thread.join(timeout=5)
        errors = [line for line in self.lines if "error:" in line or "FATAL" in line]
        line = (errors or list(self.lines) or ["no message"])[-1 if not errors else 0]
        return line.split("error: ", 1)[-1].rstrip(".")


def _failure(tool: str, reason: str) -> PtoolError:
    if "connection to server" in reason or "could not connect" in reason:
        return DatabaseUnavailable(
            f"{tool} cannot connect: {reason}.",
            hint="Check that the database is reachable and the credentials are right.",
        )
    return OperationFailed(f"{tool} failed: {reason}.", hint="Nothing was stored or changed.")


def dump(tool: pg.Tool, url: SecretStr | str, args: list[str]) -> Iterator[bytes]:
    """Run ``pg_dump`` and yield its stdout; raises if it exits non-zero."""
    return output(tool, url, args, "pg_dump")


def output(tool: pg.Tool, url: SecretStr | str, args: list[str], what: str) -> Iterator[bytes]:
    """Run a client tool that takes ``-d CONNINFO`` (pg_dump, pg_basebackup) and yield its
    stdout; raises if it exits non-zero."""
    conninfo, env = pg.tool_invocation(url)
    proc = subprocess.Popen(
        [str(tool.path), "-d", conninfo, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    _grow_pipe(proc.stdout)
    tail = _StderrTail(proc.stderr)
    try:
        while chunk := proc.stdout.read(READ_SIZE):
            yield chunk
        code = proc.wait()
        if code != 0:
            raise _failure(what, tail.reason())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def restore(
    tool: pg.Tool,
    url: SecretStr | str,
    args: list[str],
    chunks: Iterable[bytes] | None = None,
) -> None:
    """Run ``pg_restore``, feeding ``chunks`` to its stdin (or reading a file from ``args``)."""
    conninfo, env = pg.tool_invocation(url)
    proc = subprocess.Popen(
        [str(tool.path), "-d", conninfo, "--exit-on-error", *args],
        stdin=subprocess.PIPE if chunks is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    tail = _StderrTail(proc.stderr)
    try:
        if chunks is not None:
            assert proc.stdin is not None
            _grow_pipe(proc.stdin)
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped reading: its exit code and stderr say why
        code = proc.wait()
        if code != 0:
            raise _failure("pg_restore", tail.reason())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()


def describe(tool: pg.Tool, args: list[str]) -> str:
    """``pg_restore`` without a database (``-l`` or ``-f -`` of a small archive): its
    stdout as text."""
    out = subprocess.run(
        [str(tool.path), *args], stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    if out.returncode != 0:
        lines = out.stderr.decode(errors="replace").strip().splitlines() or ["no message"]
        raise _failure("pg_restore", lines[-1].split("error: ", 1)[-1].rstrip("."))
    return out.stdout.decode(errors="replace")
