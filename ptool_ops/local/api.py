"""The local environment's booking API stand-in as a background process.

``start`` launches ``python -m ptool_ops.booking.standin`` in its own session (so it outlives
the command that started it) on a loopback port (the one it had before, else a free one),
waits for ``/health``, and records pid and port in ``api.json``; ``stop`` sends SIGTERM
(uvicorn drains in-flight requests) and waits; ``reload`` sends SIGHUP so the stand-in
re-reads its credentials.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ptool_ops.errors import OperationFailed
from ptool_ops.local.cluster import LocalPaths, _alive

START_TIMEOUT_S = 20
STOP_TIMEOUT_S = 15


@dataclass(frozen=True)
class ApiProcess:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _statefile(paths: LocalPaths) -> Path:
    return paths.root / "api.json"


def _read(paths: LocalPaths) -> dict[str, int | None]:
    try:
        doc = json.loads(_statefile(paths).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _write(paths: LocalPaths, pid: int | None, port: int) -> None:
    _statefile(paths).write_text(json.dumps({"pid": pid, "port": port}) + "\n")


def last_url(paths: LocalPaths) -> str | None:
    """Where the API runs or ran last (for messages about a stopped API)."""
    port = _read(paths).get("port")
    return f"http://127.0.0.1:{port}" if port else None


def _log(paths: LocalPaths) -> Path:
    return paths.log_dir / "api.log"


def running(paths: LocalPaths) -> ApiProcess | None:
    state = _read(paths)
    pid, port = state.get("pid"), state.get("port")
    if not isinstance(pid, int) or not isinstance(port, int):
        return None
    return ApiProcess(pid, port) if _alive(pid) and _is_standin(pid) else None


def _is_standin(pid: int) -> bool:
    try:
        return b"ptool_ops.booking.standin" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid file


def start(
    paths: LocalPaths, db_port: int, port: int | None = None, *, old_pool_linger_s: float = 0.0
) -> tuple[ApiProcess, bool]:
    """Start the stand-in unless it runs; returns it and whether it was started now.
    ``old_pool_linger_s``: on a reload it keeps its old pool open that long (a deployment
    whose old instances drain slowly)."""
    current = running(paths)
    if current is not None:
        return current, False
    previous = _read(paths).get("port")
    chosen = port or (previous if isinstance(previous, int) and _port_free(previous) else None)
    chosen = chosen or _free_port()
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    log = _log(paths)
    with log.open("ab") as handle:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ptool_ops.booking.standin",
                "--secrets",
                str(paths.secrets),
                "--db-port",
                str(db_port),
                "--port",
                str(chosen),
                *(["--old-pool-linger-s", f"{old_pool_linger_s:g}"] if old_pool_linger_s else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            start_new_session=True,
            close_fds=True,
        )
    _write(paths, proc.pid, chosen)
    process = ApiProcess(proc.pid, chosen)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _write(paths, None, chosen)
            raise OperationFailed(
                f"the local booking API exited at start (code {proc.returncode}).",
                hint=f"See {log}.",
            )
        if _answers(process.port):
            return process, True
        time.sleep(0.1)
    stop(paths)
    raise OperationFailed(
        f"the local booking API did not answer within {START_TIMEOUT_S} s.", hint=f"See {log}."
    )


def _answers(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def stop(paths: LocalPaths) -> bool:
    process = running(paths)
    if process is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _alive(process.pid):
        _reap(process.pid)
        time.sleep(0.05)
    if _alive(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        _reap(process.pid)
    _write(paths, None, process.port)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status when we are the parent (tests start and stop in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def reload(paths: LocalPaths) -> bool:
    """Ask the stand-in to re-read its credentials (SIGHUP)."""
    process = running(paths)
    if process is None:
        return False
    os.kill(process.pid, signal.SIGHUP)
    return True


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
