"""The archive_command and restore_command ptool-ops writes into a server's configuration.

They call this interpreter by its absolute path in isolated mode (``python -I -m
ptool_ops``): the server's environment has no PATH worth trusting and no virtualenv, and
``-I`` keeps the data directory (the commands' working directory) off ``sys.path``. The
repository is named with ``--repo`` so the command skips the settings (start-up cost is
paid once per 16 MB segment); a key, when the repository is encrypted, is read from a file
(never a process argument).
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from ptool_ops.pitr import archive

#: what the generated restore_command's ``wal fetch`` exits with for "not archived" (the
#: shell around it turns it into PostgreSQL's 1, and every other code into 128)
NOT_ARCHIVED_EXIT = 99
#: segments a restore's prefetcher keeps checked and ready (16 MB each)
PREFETCH_AHEAD = 8


def _base(repo_url: str | None, key_file: Path | None, archive_name: str) -> list[str]:
    parts = ["--repo", repo_url] if repo_url is not None else []
    if key_file is not None:
        parts += ["--key-file", str(key_file)]
    if archive_name != archive.LIVE:
        parts += ["--archive", archive_name]
    return parts


def _line(words: list[str], placeholders: str) -> str:
    # '%' starts a placeholder in these settings: a literal one is written '%%'
    escaped = [shlex.quote(w).replace("%", "%%") for w in words]
    return " ".join(escaped) + " " + placeholders


def _python() -> list[str]:
    return [sys.executable, "-I", "-m", "ptool_ops", "wal"]


def archive_command(
    repo_url: str, *, key_file: Path | None = None, archive_name: str = archive.LIVE
) -> str:
    base = [*_python(), "push"]
    return _line(base + _base(repo_url, key_file, archive_name), "%p")


def restore_command(
    repo_url: str,
    *,
    key_file: Path | None = None,
    archive_name: str = archive.LIVE,
    spool: Path | None = None,
    prefetch: int = PREFETCH_AHEAD,
) -> str:
    """``wal fetch``; with ``spool``, segments are fetched and checked ahead by a
    prefetcher, and a segment found there is moved into place by the shell alone (the
    interpreter's start-up is the cost of a segment otherwise: replay waits for it)."""
    base = [*_python(), "fetch", *_base(repo_url, key_file, archive_name)]
    base += ["--not-archived-exit", str(NOT_ARCHIVED_EXIT)]
    if spool is not None:
        base += ["--spool", str(spool), "--prefetch", str(prefetch)]
    # only our own "not archived" becomes 1: an interpreter that cannot even start (a
    # broken virtualenv, a module it cannot import) exits 1 too, and PostgreSQL would read
    # that as the end of the archive and promote a short database
    fetch = (
        "{ "
        + _line(base, "%f %p")
        + f"; rc=$?; [ $rc -eq 0 ] && exit 0; [ $rc -eq {NOT_ARCHIVED_EXIT} ] && exit 1;"
        " exit 128; }"
    )
    if spool is None:
        return fetch
    ready = shlex.quote(str(spool)).replace("%", "%%") + "/%f"
    return f"test -f {ready} && mv -f {ready} %p || {fetch}"


def prefetch_command(
    repo_url: str | None,
    *,
    after: str,
    spool: Path,
    ahead: int = PREFETCH_AHEAD,
    key_file: Path | None = None,
    archive_name: str = archive.LIVE,
) -> list[str]:
    """``wal prefetch`` (an argument list): segments after ``after`` fetched and checked
    into ``spool``. ``wal fetch`` starts it after a segment it fetched itself, ``pitr
    restore`` while the base backup unpacks; without ``repo_url`` it reads the settings."""
    return [
        *_python(),
        "prefetch",
        after,
        "--spool",
        str(spool),
        "--ahead",
        str(ahead),
        *_base(repo_url, key_file, archive_name),
    ]


def spawn_detached(argv: list[str], **run_as: Any) -> None:
    """Start ``argv`` (our own interpreter and arguments) in a session of its own, its
    output discarded, and do not wait for it (``run_as``: user, group, env, cwd)."""
    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        **run_as,
    )


def conf_value(text: str) -> str:
    """A value for postgresql.conf: single-quoted, quotes doubled."""
    return "'" + text.replace("'", "''") + "'"
