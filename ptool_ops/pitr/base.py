"""Base backups: ``pg_basebackup`` streamed into the repository, full or incremental.

Layout::

    pitr/base/<id>/base.tar.zst[...]       the tar pg_basebackup writes to stdout (WAL included)
    pitr/base/<id>/backup_manifest.zst     PostgreSQL's own manifest (an incremental's parent)
    pitr/base/<id>/manifest.json           ours, written last: a base backup without it is
                                           incomplete and never chosen
    pitr/base/<id>/lease.json              while it runs (prune deletes nothing meanwhile)

``--incremental`` (PostgreSQL 17+, ``summarize_wal = on``) hands pg_basebackup the newest
complete base backup's ``backup_manifest``: only blocks changed since are sent, and a
restore combines the chain with ``pg_combinebackup``. Every backup records its chain back
to a full one, so retention can keep what an incremental needs.

After storing, the stored tar is read back (checksum, decryption, decompression) and
checked by ``pg_verifybackup`` against PostgreSQL's manifest: a base backup is listed only
once its stored copy is proven whole. Our manifest records what choosing it needs, from
PostgreSQL's own sources: start and end LSN and timeline (``WAL-Ranges``), the system
identifier, the server's clock *after* the backup ended (a time target must lie after
it), and the next transaction id after it ended (an xid target must be at least that).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ptool_ops import pg, privileges
from ptool_ops.audit import audited
from ptool_ops.errors import ConfigError, OperationFailed, PtoolError
from ptool_ops.pitr import archive, locks
from ptool_ops.pitr.target import format_lsn, parse_lsn
from ptool_ops.repo.errors import UnreadableManifest
from ptool_ops.repo.lease import Lease
from ptool_ops.repo.manifest import Manifest, ObjectEntry

if TYPE_CHECKING:
    from ptool_ops.environment import Environment
    from ptool_ops.repo.repository import Repository

PREFIX = "pitr/base"
KIND = "pitr-base"

#: called with (phase, bytes done, bytes expected or 0)
Progress = Callable[[str, int, int], None]


def base_dir(backup_id: str) -> str:
    return f"{PREFIX}/{backup_id}"


def manifest_key(backup_id: str) -> str:
    return f"{PREFIX}/{backup_id}/manifest.json"


class BaseBackupManifest(Manifest):
    kind: str = KIND
    backup_type: Literal["full", "incremental"]
    #: the base backup this one is incremental to (None for a full one)
    parent: str | None = None
    #: the full backup first, this one last
    chain: list[str]
    system_identifier: str
    server_version_num: int
    timeline: int
    start_lsn: str
    end_lsn: str
    #: the server's clock when pg_basebackup had finished: a time target must be after it
    end_time: datetime
    #: the next transaction id when it had finished: an xid target must be at least this
    next_xid: int
    label: str
    pg_basebackup_version: str
    tar_object: str
    manifest_object: str

    @property
    def start(self) -> int:
        return parse_lsn(self.start_lsn)

    @property
    def end(self) -> int:
        return parse_lsn(self.end_lsn)

    @property
    def major(self) -> int:
        return self.server_version_num // 10000


@dataclass
class BaseBackupResult:
    id: str
    backup_type: str
    parent: str | None
    chain: list[str]
    repository: str
    start_lsn: str
    end_lsn: str
    timeline: int
    raw_bytes: int
    stored_bytes: int
    elapsed_s: float
    verified_s: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def new_id(kind: str) -> str:
    from ptool_ops.backup.listing import new_id as stamp

    return f"{stamp()}-{'F' if kind == 'full' else 'I'}"


def list_base_backups(repo: Repository) -> list[BaseBackupManifest]:
    """Every complete base backup, oldest end LSN first (ordered by what PostgreSQL
    recorded, never by name). Unreadable manifests are skipped here (``pitr window``
    names them)."""
    found: list[BaseBackupManifest] = []
    for info in repo.storage.list(f"{PREFIX}/"):
        if not info.key.endswith("/manifest.json"):
            continue
        with contextlib.suppress(UnreadableManifest):
            found.append(repo.read_manifest(info.key, BaseBackupManifest))
    found.sort(key=lambda m: (m.end, m.end_time))
    return found


def _server(conn: Any) -> tuple[str, int, int]:
    row = conn.execute(
        "SELECT (SELECT system_identifier::text FROM pg_catalog.pg_control_system()),"
        " current_setting('server_version_num')::int"
    ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1]), archive.current_timeline(conn)


def _verify(repo: Repository, tar: ObjectEntry, tool_dir: Path, work: Path) -> dict[str, Any]:
    """Read the stored tar back into ``work`` and run pg_verifybackup on it; PostgreSQL's
    manifest (parsed) is returned."""
    target = work / "base.tar"
    with target.open("wb") as handle:
        for chunk in repo.read_object(tar):
            handle.write(chunk)
    with tarfile.open(target) as archive:
        member = archive.extractfile("backup_manifest")
        if member is None:
            raise OperationFailed("the base backup's tar has no backup_manifest.")
        raw = member.read()
    (work / "backup_manifest").write_bytes(raw)
    out = subprocess.run(
        [str(tool_dir / "pg_verifybackup"), "--format=tar", "--no-parse-wal", str(work)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["no message"])[0]
        raise OperationFailed(
            f"pg_verifybackup rejects the stored base backup: {reason}.",
            hint="The stored copy is not whole; the backup is not listed. Run it again.",
        )
    data: dict[str, Any] = json.loads(raw)
    return data


def _parent_manifest(repo: Repository, parent: BaseBackupManifest, work: Path) -> Path:
    path = work / "parent" / f"{parent.id}.backup_manifest"
    path.parent.mkdir()
    entry = next(o for o in parent.objects if o.key == parent.manifest_object)
    with path.open("wb") as handle:
        for chunk in repo.read_object(entry):
            handle.write(chunk)
    return path


def choose_parent(
    backups: list[BaseBackupManifest], system_id: str, timeline: int
) -> BaseBackupManifest | None:
    """The newest complete base backup of this cluster and timeline."""
    same = [b for b in backups if b.system_identifier == system_id and b.timeline == timeline]
    return same[-1] if same else None


def base_backup(
    env: Environment,
    *,
    incremental: bool = False,
    progress: Progress | None = None,
) -> BaseBackupResult:
    """Take a base backup of the environment's server into its repository."""
    from importlib.metadata import version

    repo = env.repository()
    repo.ensure_initialised()
    login = env.database("pitr.base_backup")
    kind: Literal["full", "incremental"] = "incremental" if incremental else "full"
    backup_id = new_id(kind)
    report: Progress = progress or (lambda phase, done, total: None)
    lease = Lease(repo.storage, locks.base_lease_key(backup_id), "pitr base-backup")
    step = "preflight"
    with audited(
        env,
        "pitr.base_backup",
        {"backup_id": backup_id, "type": kind, "repository": repo.url},
        done=lambda: f"base backup {backup_id} was stored in {repo.url}",
    ) as entry:
        try:
            clock = time.monotonic()
            started = datetime.now(UTC)
            # held before the parent is chosen: a prune keeps what a running backup uses
            lease.create()
            step = "waiting for a running prune"
            locks.wait_for_prune(repo, f"base backup {backup_id}")
            step = "preflight"
            with login.connect(autocommit=True) as conn:
                privileges.require(conn, "pitr.base_backup")
                facts = pg.server_facts(conn)
                system_id, version_num, timeline = _server(conn)
                if facts.archive_mode == "off":
                    raise ConfigError(
                        f"the server of {env.name!r} does not archive its WAL "
                        "(archive_mode = off), so a base backup could not be restored to "
                        "any point after it.",
                        hint="Set archive_mode = on and archive_command to what 'ptool-ops "
                        "pitr archive-command' prints, restart the server, then back up.",
                    )
                parent = None
                if incremental:
                    if version_num < 170000:
                        raise ConfigError(
                            f"incremental base backups need PostgreSQL 17 or newer; the server "
                            f"runs {facts.version}.",
                            hint="Take a full base backup (without --incremental).",
                        )
                    summarize = conn.execute("SHOW summarize_wal").fetchone()
                    if summarize is None or summarize[0] != "on":
                        raise ConfigError(
                            "incremental base backups need summarize_wal = on on the server.",
                            hint="Set summarize_wal = on (a reload is enough), or take a full "
                            "base backup.",
                        )
                    parent = choose_parent(list_base_backups(repo), system_id, timeline)
                    if parent is None:
                        raise ConfigError(
                            "there is no complete base backup of this server's timeline "
                            f"{timeline} in {repo.url} to take an incremental one against.",
                            hint="Take a full base backup first: 'ptool-ops pitr base-backup'.",
                        )
            tool = pg.find_tool(
                "pg_basebackup",
                server_major=version_num // 10000,
                need_tls=pg.needs_tls(login.url),
                pg_bin_dir=env.pg_bin_dir,
            )
            from ptool_ops.backup import tools

            prefix = base_dir(backup_id)
            label = f"ptool-ops {backup_id}"
            with tempfile.TemporaryDirectory(prefix="ptool-base-") as scratch:
                work = Path(scratch)
                args = ["-D", "-", "-Ft", "-X", "fetch", "-c", "fast", "-l", label, "-w"]
                if parent is not None:
                    step = "fetching the parent's manifest"
                    args.append(f"--incremental={_parent_manifest(repo, parent, work)}")
                step = "streaming pg_basebackup"
                report("streaming", 0, facts.size_bytes)
                tar = repo.write_object(
                    f"{prefix}/base.tar.zst",
                    tools.output(tool, login.url, args, "pg_basebackup"),
                    progress=lambda raw, stored: report("streaming", raw, facts.size_bytes),
                )
                with login.connect(autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT now(), pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
                    ).fetchone()
                    assert row is not None
                    end_time, next_xid = row[0], int(row[1])
                elapsed = round(time.monotonic() - clock, 3)
                step = "verifying the stored copy"
                report("verifying", 0, tar.raw_size)
                verify_clock = time.monotonic()
                (work / "verify").mkdir()
                pg_manifest = _verify(repo, tar, tool.path.parent, work / "verify")
                verified_s = round(time.monotonic() - verify_clock, 3)
                ranges = pg_manifest.get("WAL-Ranges") or []
                if not ranges:
                    raise OperationFailed("PostgreSQL's backup manifest names no WAL range.")
                step = "storing PostgreSQL's manifest"
                manifest_entry = repo.write_object(
                    f"{prefix}/backup_manifest.zst",
                    iter([(work / "verify" / "backup_manifest").read_bytes()]),
                )
            lease.check()
            step = "writing the manifest"
            manifest = BaseBackupManifest(
                id=backup_id,
                environment=env.name,
                started_at=started,
                finished_at=datetime.now(UTC),
                tool_version=version("ptool-ops"),
                objects=[tar, manifest_entry],
                backup_type=kind,
                parent=parent.id if parent else None,
                chain=[*(parent.chain if parent else []), backup_id],
                system_identifier=str(pg_manifest.get("System-Identifier", system_id)),
                server_version_num=version_num,
                timeline=int(ranges[-1]["Timeline"]),
                start_lsn=format_lsn(parse_lsn(ranges[0]["Start-LSN"])),
                end_lsn=format_lsn(parse_lsn(ranges[-1]["End-LSN"])),
                end_time=end_time,
                next_xid=next_xid,
                label=label,
                pg_basebackup_version=tool.version,
                tar_object=tar.key,
                manifest_object=manifest_entry.key,
            )
            repo.storage.put_bytes(manifest_key(backup_id), manifest.to_json())
        except PtoolError as err:
            raise type(err)(
                f"base backup {backup_id} failed while {step}: {err.message.rstrip('.')}.",
                hint=err.hint,
            ) from None
        except (OSError, KeyError, ValueError, tarfile.TarError) as err:
            # a full scratch disk, a tar or manifest without what PostgreSQL always writes
            raise OperationFailed(
                f"base backup {backup_id} failed while {step}: {type(err).__name__}: {err}.",
                hint="It is not listed; free space under the temporary directory (TMPDIR) "
                "and run it again.",
            ) from None
        finally:
            lease.release()
        result = BaseBackupResult(
            id=backup_id,
            backup_type=kind,
            parent=manifest.parent,
            chain=manifest.chain,
            repository=repo.url,
            start_lsn=manifest.start_lsn,
            end_lsn=manifest.end_lsn,
            timeline=manifest.timeline,
            raw_bytes=tar.raw_size,
            stored_bytes=manifest.stored_bytes,
            elapsed_s=elapsed,
            verified_s=verified_s,
        )
        entry.details.update(result.to_dict())
        return result


def extract(
    repo: Repository,
    backup: BaseBackupManifest,
    into: Path,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Unpack one base backup's tar into ``into`` (made if missing), checksummed, decrypted
    and decompressed on the way (:mod:`ptool_ops.pitr.untar`); the checksum is checked at
    the stream's end, so a damaged object fails the restore. ``progress`` is told the
    bytes unpacked so far."""
    from ptool_ops.pitr import untar

    entry = next(o for o in backup.objects if o.key == backup.tar_object)
    repo.check_key(entry)
    untar.unpack(repo.read_object(entry), into, what=f"base backup {backup.id}", progress=progress)


def materialise(
    repo: Repository,
    chain: list[BaseBackupManifest],
    data_dir: Path,
    progress: Progress | None = None,
) -> None:
    """A data directory from a chain (full first): one extract, or each into a scratch
    directory and ``pg_combinebackup`` into ``data_dir``. ``progress`` is told
    ("fetching", bytes unpacked, bytes in all) and ("combining", 0, 1)."""
    report: Progress = progress or (lambda phase, done, total: None)
    sizes = [next(o.raw_size for o in b.objects if o.key == b.tar_object) for b in chain]
    total = sum(sizes)

    def fetched(before: int) -> Callable[[int], None]:
        return lambda done: report("fetching", before + done, total)

    report("fetching", 0, total)
    if len(chain) == 1:
        extract(repo, chain[0], data_dir, fetched(0))
        return
    scratch = data_dir.parent / f".{data_dir.name}.chain"
    scratch.mkdir(parents=True, exist_ok=False)
    try:
        parts = []
        for n, backup in enumerate(chain):
            part = scratch / backup.id
            extract(repo, backup, part, fetched(sum(sizes[:n])))
            parts.append(str(part))
        report("combining", 0, 1)
        tool = pg.find_tool("pg_combinebackup", server_major=chain[-1].major)
        out = subprocess.run(
            [str(tool.path), *parts, "-o", str(data_dir)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            reason = (out.stderr.strip().splitlines() or ["no message"])[-1]
            raise OperationFailed(
                f"pg_combinebackup could not combine {', '.join(b.id for b in chain)}: {reason}.",
                hint="Nothing live was touched. Restore from the full backup alone, or from "
                "another chain.",
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
