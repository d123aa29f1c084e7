"""``ptool-ops wal push %p`` and ``ptool-ops wal fetch %f %p``: PostgreSQL's archive_command
and restore_command.

They run once per WAL segment, so the console script sends them here without loading the
rest of the command tree (:mod:`ptool_ops.cli`), and with ``--repo`` (what ``ptool-ops pitr
archive-command`` writes) they skip the settings as well. Their exit codes follow
PostgreSQL's contract, not the general table: ``fetch`` exits 1 only when the file is not
in the archive and 128 for every other failure (a usage error and our own bugs included),
so recovery stops instead of promoting a short database; ``push`` exits 0 only once the
file is stored.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from ptool_ops.repo.repository import Repository


def _repository(repo_url: str | None, key_file: Path | None, level: int) -> Repository:
    """The repository named on the command line, or the environment's."""
    if repo_url is None:
        from ptool_ops.environment import Environment
        from ptool_ops.settings import load_environment

        env_name = os.environ.get("PTOOL_ENV")
        return Environment(load_environment(env_name)).repository()
    from ptool_ops.repo import open_storage
    from ptool_ops.repo.crypto import parse_key
    from ptool_ops.repo.repository import Repository

    key = None
    if key_file is not None:
        try:
            key = parse_key(key_file.read_text())
        except OSError as err:
            from ptool_ops.errors import ConfigError

            raise ConfigError(f"cannot read the key file {key_file}: {err.strerror}.") from None
    storage = open_storage(repo_url, part_size=64 * 1024 * 1024)
    return Repository(storage, key=key, compression_level=level)


def _say(command: str, err: BaseException) -> None:
    from ptool_ops.errors import PtoolError

    if isinstance(err, PtoolError):
        hint = f" {err.hint}" if err.hint else ""
        print(f"ptool-ops wal {command}: {err.message}{hint}", file=sys.stderr)
    else:
        traceback.print_exc(file=sys.stderr)
        print(f"ptool-ops wal {command}: internal error: {type(err).__name__}.", file=sys.stderr)


#: how much the archiver yields to the server's queries: archiving a segment a little later
#: costs seconds of RPO; compressing it at full priority beside a backfill costs the API's p99
#: (bench/migrate_under_load.py --expand-contract: 2.34x the quiet p99 archiving, 1.59x not)
ARCHIVE_NICENESS = 10


def _push(args: argparse.Namespace) -> int:
    import os

    from ptool_ops.errors import EXIT_INTERNAL, PtoolError
    from ptool_ops.pitr import wal

    with contextlib.suppress(OSError):
        os.nice(ARCHIVE_NICENESS)
    try:
        repo = _repository(args.repo, args.key_file, args.level)
        wal.push(repo, Path(args.path), archive_name=args.archive)
    except PtoolError as err:
        _say("push", err)
        return err.exit_code
    except Exception as err:  # PostgreSQL retries; the log says why
        _say("push", err)
        return EXIT_INTERNAL
    return 0


def _spawn_prefetcher(args: argparse.Namespace) -> Callable[[str], None]:
    """Start (detached, so PostgreSQL does not wait for it) a prefetcher after a segment."""

    def start(after: str) -> None:
        from ptool_ops.pitr.commands import prefetch_command, spawn_detached

        spawn_detached(
            prefetch_command(
                args.repo,
                after=after,
                spool=Path(args.spool),
                ahead=args.prefetch,
                key_file=args.key_file,
                archive_name=args.archive,
            )
        )

    return start


def _prefetch_quietly(args: argparse.Namespace) -> Callable[[str], None]:
    """The file is in place already: a prefetcher that cannot start must not fail it."""
    start = _spawn_prefetcher(args)

    def guarded(after: str) -> None:
        import contextlib

        with contextlib.suppress(Exception):  # a prefetcher only speeds things up
            start(after)

    return guarded


def _prefetch(args: argparse.Namespace) -> int:
    from ptool_ops.pitr import wal

    try:
        repo = _repository(args.repo, args.key_file, 3)
        wal.prefetch(
            repo, args.after, Path(args.spool), archive_name=args.archive, ahead=args.ahead
        )
    except BaseException:  # a prefetcher only helps: the real fetch reports failures
        return 1
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from ptool_ops.pitr import wal

    try:
        repo = _repository(args.repo, args.key_file, 3)
        spool = Path(args.spool) if args.spool else None
        wal.fetch(
            repo,
            args.name,
            Path(args.dest),
            archive_name=args.archive,
            spool=spool,
            on_segment=_prefetch_quietly(args) if spool and args.prefetch > 0 else None,
        )
    except wal.NotArchived:
        return int(args.not_archived_exit)
    except BaseException as err:  # anything else must stop recovery
        _say("fetch", err)
        return wal.FETCH_FATAL
    return 0


class _Parser(argparse.ArgumentParser):
    """Usage errors raise instead of exiting 2: for ``fetch`` 2 would mean "not found"."""

    def error(self, message: str) -> NoReturn:
        raise _BadUsage(f"{self.prog}: {message}")


class _BadUsage(Exception):
    pass


def parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="ptool-ops wal",
        description="The WAL archive: PostgreSQL's archive_command (push) and "
        "restore_command (fetch).",
    )
    subs = root.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--repo", help="repository URL (default: the environment's repo_url); skips settings"
        )
        sub.add_argument(
            "--key-file", type=Path, help="file holding the backup key, for an encrypted archive"
        )
        sub.add_argument("--archive", default="wal", help="archive within the pitr/ prefix")

    push = subs.add_parser(
        "push", help="archive one WAL file: archive_command = 'ptool-ops wal push %%p'"
    )
    push.add_argument("path", help="%%p: the file to archive, relative to the data directory")
    push.add_argument("--level", type=int, default=3, choices=range(1, 20), metavar="1-19")
    common(push)
    push.set_defaults(run=_push)
    fetch = subs.add_parser(
        "fetch",
        help="restore one WAL file: restore_command = 'ptool-ops wal fetch %%f %%p'; exit 1 "
        "when it is not in the archive, 128 on any other failure",
    )
    fetch.add_argument("name", help="%%f: the file PostgreSQL asks for")
    fetch.add_argument("dest", help="%%p: where to put it")
    fetch.add_argument("--spool", help="directory of checked segments fetched ahead")
    fetch.add_argument(
        "--not-archived-exit",
        type=int,
        default=1,
        help="exit code for 'not in the archive' (the generated restore_command uses 99 and "
        "maps it to 1 in the shell, so a Python that cannot start is never read as 'not found')",
    )
    fetch.add_argument(
        "--prefetch", type=int, default=0, help="keep this many segments fetched ahead"
    )
    common(fetch)
    fetch.set_defaults(run=_fetch)
    ahead = subs.add_parser(
        "prefetch", help="fetch and check segments after AFTER into --spool (started by fetch)"
    )
    ahead.add_argument("after", help="the segment recovery just asked for")
    ahead.add_argument("--spool", required=True)
    ahead.add_argument("--ahead", type=int, default=8)
    common(ahead)
    ahead.set_defaults(run=_prefetch)
    return root


def standalone(global_options: list[str], args: list[str]) -> int:
    """Run ``wal …`` without the rest of the CLI. ``--env`` among the global options picks
    the environment (when no ``--repo`` is given)."""
    from ptool_ops.cli.args import global_value

    env_name = global_value(global_options, "--env", "-e")
    if env_name:
        os.environ["PTOOL_ENV"] = env_name
    fetching = args[:1] == ["fetch"]
    try:
        parsed = parser().parse_args(args)
    except _BadUsage as err:
        print(err, file=sys.stderr)
        return 128 if fetching else 2
    except SystemExit as done:  # --help
        return 128 if fetching and done.code else int(done.code or 0)
    code: int = parsed.run(parsed)
    return code
