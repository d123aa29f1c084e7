"""Real processes killed at a named step: ``ptool-ops`` run as its own process, frozen
(SIGSTOP) a couple of milliseconds at a time while the test looks at what it has done so
far -- the repository's files and objects, ``pg_stat_activity``, ``pg_locks``,
``pg_database``, its open files -- and SIGKILLed, still frozen, the moment the step is
reached. The product has no test hook: the test watches real progress, and since the
process cannot move while it is looked at, what the test saw is exactly what it killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.backup.conftest import Env

PTOOL = Path(sys.executable).with_name("ptool-ops")


@dataclass
class Outcome:
    killed: bool  # False: it finished before the step was seen
    returncode: int
    stdout: str
    stderr: str


def spawn(env: Env, *args: str) -> subprocess.Popen[bytes]:
    """``ptool-ops --env t ARGS`` in the CLI's working directory and environment."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PTOOL_")}
    child_env.update(env.cli.env)
    # a killed restore leaves its temp directory: keep it in the test's own
    temp = env.cli.cwd.parent / "tmp"
    temp.mkdir(exist_ok=True)
    child_env["TMPDIR"] = str(temp)
    return subprocess.Popen(
        [str(PTOOL), "--env", "t", *args],
        cwd=env.cli.cwd,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def run(env: Env, *args: str, timeout: float = 300) -> Outcome:
    """Run to the end as its own process (its lease names its pid)."""
    proc = spawn(env, *args)
    out, err = proc.communicate(timeout=timeout)
    _record(out, err)
    return Outcome(False, proc.returncode, out.decode(), err.decode())


def _record(out: bytes, err: bytes) -> None:
    from tests import conftest

    conftest._seen_output.append(out.decode(errors="replace") + err.decode(errors="replace"))


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in {"T", "t", "Z", "X"}
    except (OSError, IndexError):
        return True


def kill_at(
    proc: subprocess.Popen[bytes],
    reached: Callable[[], bool],
    *,
    timeout: float = 180,
    slice_s: float = 0.002,
) -> Outcome:
    """Let ``proc`` run ``slice_s`` at a time; between slices, frozen, ask ``reached()``;
    SIGKILL it (still frozen) once it says yes."""
    deadline = time.monotonic() + timeout
    killed = False
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("the step was never reached")
            os.kill(proc.pid, signal.SIGSTOP)
            while not _stopped(proc.pid):
                time.sleep(0.0002)
            try:
                if reached():
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = True
                    break
            finally:
                if not killed and proc.poll() is None:
                    os.kill(proc.pid, signal.SIGCONT)
            time.sleep(slice_s)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
    out, err = proc.communicate(timeout=60)
    _record(out, err)
    return Outcome(killed, proc.returncode, out.decode(), err.decode())


def open_files(pid: int) -> list[str]:
    """What ``pid`` has open (its own descriptors, not its children's)."""
    found = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
    except OSError:
        return []
    return found
