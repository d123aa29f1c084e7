"""The tour: a guided drill on a local environment of its own, run with the real commands.

It sets up the embedded local environment in a directory of its own (default
``./ptool-tour``), loads data, takes a way back (a logical backup and a base backup),
deletes one tenant's bookings as the operator ``booking_owner`` would by accident, brings
exactly those rows back with ``recover tenant``, rotates the API's database password while
the API serves, runs a restore drill, and ends with ``status``, ``audit log`` and the HTML
report. Every step is the command an operator types, run as a subprocess in that directory
(``python -m ptool_ops ... -o json``, or ``psql``); what the tour says comes from what the
commands returned, never from a script of its own.

The tour never touches another local environment: a directory that is not empty and was
not made by a tour is refused; one a tour made is started afresh (``local reset``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from ptool_ops import privileges
from ptool_ops.console import human_size
from ptool_ops.errors import Conflict, OperationFailed

#: the file that says a directory is a tour's own (and may be started afresh)
MARKER = ".ptool-tour"
#: what the tour shows of the audit trail: every finished operation, newest last (the one
#: place the tour names the audit command)
AUDIT_LOG = ("audit", "log", "--outcome", "ok", "--last", "20")
#: PTOOL_* variables the commands of the tour keep (who acts); every other one could point
#: them at another environment, so they are left out
KEPT_VARIABLES = ("PTOOL_ACTOR",)
REPORT_FILE = "tour-report.html"
STEP_TIMEOUT_S = 900
#: how the tour's chapters are called (also the --dry-run plan)
CHAPTERS = (
    "A local environment of its own",
    "Data",
    "The schema, as CI deploys it",
    "A way back, taken before anything goes wrong",
    "The accident",
    "Is the moment restorable?",
    "Recover exactly those rows",
    "Are they all back?",
    "Rotate the API's database password while it serves",
    "Prove the backups restore",
    "One screen of health",
    "Who did what",
    "The evidence on one page",
)
_SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")

Mark = Literal["ok", "bad", "info"]


class Narrator(Protocol):
    """Where the tour tells what it does (the CLI renders it)."""

    def chapter(self, number: int, title: str, text: str) -> None: ...
    def command(self, line: str) -> None: ...
    def say(self, text: str, mark: Mark = "info") -> None: ...
    def raw(self, text: str) -> None: ...


@dataclass
class Step:
    command: str
    exit_code: int
    elapsed_s: float


@dataclass
class TourResult:
    directory: str
    tenant: str = ""
    as_of: str = ""
    bookings_before: int = 0
    bookings_after_accident: int = 0
    bookings_after_recovery: int = 0
    #: md5 of the tenant's bookings (as text, by id) just before the accident
    fingerprint: str = ""
    #: the tenant's bookings after recovery are row for row those before the accident
    identical: bool = False
    all_back: bool = False
    api_requests: int = 0
    api_failures: int = 0
    report_file: str | None = None
    problems: list[str] = field(default_factory=list)
    kept: bool = False
    elapsed_s: float = 0.0
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.all_back and not self.problems

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"ok": self.ok, **asdict(self)}


def check_directory(directory: Path) -> bool:
    """Can ``directory`` hold the tour: new, empty, or a tour's own? Returns whether a
    previous tour's environment is there (to be started afresh)."""
    try:
        return _check_directory(directory)
    except OSError as err:  # a path that cannot be read: /proc/..., no permission
        raise Conflict(
            f"cannot use {directory} for the tour: {err.strerror or type(err).__name__}.",
            hint="Pass --dir with a new or empty directory.",
        ) from None


def _check_directory(directory: Path) -> bool:
    if directory.exists() and not directory.is_dir():
        raise Conflict(
            f"{directory} is a file, not a directory for the tour.",
            hint="Pass --dir with a new or empty directory.",
        )
    if directory.is_dir() and any(directory.iterdir()) and not (directory / MARKER).exists():
        raise Conflict(
            f"{directory} is not empty and was not made by a tour: the tour will not touch"
            " the local environment or files in it.",
            hint="Pass --dir with a new or empty directory; the tour makes its own local"
            " environment there.",
        )
    return (directory / ".ptool").exists()


def prepare(directory: Path) -> bool:
    """:func:`check_directory`, then the directory made and marked as the tour's."""
    previous = check_directory(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MARKER).write_text(
            "Made by 'ptool-ops tour': its local environment. Running the tour again starts"
            " it afresh; delete the directory when done.\n"
        )
    except OSError as err:
        raise Conflict(
            f"cannot use {directory} for the tour: {err.strerror or type(err).__name__}.",
            hint="Pass --dir with a new or empty directory.",
        ) from None
    return previous


def _dq(text: str) -> str:
    """``text`` as a shell word in double quotes when that needs no escaping."""
    if not re.search(r'["$`\\!]', text):
        return f'"{text}"'
    return shlex.quote(text)


class _Shell:
    """Runs the commands of the tour in its directory and says what it runs."""

    def __init__(self, directory: Path, narrator: Narrator, result: TourResult) -> None:
        self.directory = directory
        self.narrator = narrator
        self.result = result
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith("PTOOL_") or k in KEPT_VARIABLES
        }
        self.psql: Path | None = None
        self.db_url = ""
        self.pgpass = directory / ".ptool" / "local" / "pgpass"
        #: the console script beside this interpreter, as an operator runs it (the audit
        #: trail records the command as typed); else the module
        script = Path(sys.executable).parent / "ptool-ops"
        self.ptool_ops = [str(script)] if script.exists() else [sys.executable, "-m", "ptool_ops"]

    def ptool(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> tuple[Any, float]:
        """``ptool-ops ARGS``: its JSON result and how long it took."""
        line = shlex.join(["ptool-ops", *args])
        self.narrator.command(line)
        argv = [*self.ptool_ops, *args, "-o", "json"]
        proc, elapsed = self._run(line, argv, self.env)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            data = None
        if proc.returncode not in ok_codes:
            raise _failed(line, proc.returncode, data, proc.stderr, self.directory)
        return data, elapsed

    def sql(self, statement: str, *, tuples_only: bool = True) -> str:
        """``psql "$DB" -c STATEMENT`` as the operator; its output, shown as it is."""
        assert self.psql is not None
        flags = "-XAtc" if tuples_only else "-Xc"
        line = f'psql "$DB" {flags} {_dq(statement)}'
        self.narrator.command(line)
        env = {k: v for k, v in self.env.items() if k != "PGPASSWORD"}
        env["PGPASSFILE"] = str(self.pgpass)
        argv = [str(self.psql), self.db_url, flags, statement]
        proc, _ = self._run(line, argv, env)
        if proc.returncode != 0:
            raise _failed(line, proc.returncode, None, proc.stderr, self.directory)
        out = proc.stdout.strip()
        self.narrator.raw(out)
        return out

    def _run(
        self, line: str, argv: list[str], env: dict[str, str]
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        started = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=STEP_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise OperationFailed(
                f"the tour stopped: '{line}' did not finish within {STEP_TIMEOUT_S} s.",
                hint=f"Its environment is in {self.directory}.",
            ) from None
        elapsed = time.monotonic() - started
        self.result.steps.append(Step(line, proc.returncode, round(elapsed, 3)))
        return proc, elapsed


def _failed(line: str, code: int, data: Any, stderr: str, directory: Path) -> OperationFailed:
    """The tour's error for a command that failed: its own sentence and hint, its code."""
    message = hint = None
    if isinstance(data, dict) and data.get("message"):
        message, hint = str(data["message"]), data.get("hint")
    else:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        found = next((ln for ln in lines if "error" in ln.lower()), None)
        message = re.sub(r"^(psql: )?error:\s*", "", found, flags=re.IGNORECASE) if found else None
        message = message or (lines[-1] if lines else f"exit code {code}")
    err = OperationFailed(
        f"the tour stopped at '{line}' (exit {code}): {message.rstrip('.')}.",
        hint=(f"{hint} " if hint else "") + f"The tour's environment is in {directory}.",
    )
    if 1 <= code <= 11:
        err.exit_code = code  # the command's own meaning (docs: exit codes)
    return err


class _ApiLoad:
    """Requests to the API while something runs: ``GET /version`` reads the schema version
    through the API's database pool, so a request fails if its login does."""

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url}/version"
        self.sent = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tour-api-load", daemon=True)

    def __enter__(self) -> _ApiLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _loop(self) -> None:
        import httpx

        with httpx.Client(timeout=5) as http:
            while not self._stop.is_set():
                self.sent += 1
                try:
                    answer = http.get(self.url)
                    if answer.status_code != 200 or not answer.json().get("schema_version"):
                        self.failures.append(f"HTTP {answer.status_code}: {answer.text[:120]}")
                except (httpx.HTTPError, ValueError) as err:
                    self.failures.append(f"{type(err).__name__}: {err}")
                self._stop.wait(0.02)


def run(
    directory: Path,
    narrator: Narrator,
    *,
    tenants: int = 10,
    bookings: int = 20_000,
    keep: bool = False,
) -> TourResult:
    """The whole tour in ``directory`` (checked by :func:`prepare` first). Stops the local
    server at the end -- also when a step fails -- unless ``keep``."""
    started = time.monotonic()
    directory = directory.resolve()
    previous = prepare(directory)
    result = TourResult(directory=str(directory), kept=keep)
    shell = _Shell(directory, narrator, result)
    ignored = sorted(k for k in os.environ if k.startswith("PTOOL_") and k not in shell.env)
    try:
        _tour(shell, narrator, result, previous, ignored, tenants=tenants, bookings=bookings)
    except BaseException:
        if not keep:
            _stop(shell, narrator, failing=True)
        raise
    if not keep:
        _stop(shell, narrator)
    result.elapsed_s = round(time.monotonic() - started, 1)
    return result


def _stop(shell: _Shell, narrator: Narrator, *, failing: bool = False) -> None:
    """``local down``: the tour's server and API stop; its data stays."""
    from ptool_ops.errors import PtoolError

    narrator.chapter(0, "The end", "The tour stops the server it started; its data stays.")
    try:
        down, _ = shell.ptool("local", "down")
    except PtoolError as err:
        if not failing:
            raise
        narrator.say(f"could not stop the tour's environment: {err.message}", "bad")
        return
    if down and down.get("stopped"):
        narrator.say("the tour's booking API and PostgreSQL are stopped", "ok")


def _tour(
    shell: _Shell,
    narrator: Narrator,
    result: TourResult,
    previous: bool,
    ignored: list[str],
    *,
    tenants: int,
    bookings: int,
) -> None:
    rel = os.path.relpath(shell.directory)
    where = rel if not rel.startswith("..") else str(shell.directory)
    script = Path(sys.executable).parent / "ptool-ops"
    narrator.chapter(
        1,
        CHAPTERS[0],
        f"The tour works in {where}/ with the commands on-call runs, each shown as you would"
        f" type it after 'cd {shlex.quote(where)}'"
        + (f" (ptool-ops is {script})" if script.exists() else "")
        + ". It runs each with -o json and shows the figures it returns; run any of them"
        " yourself to see its own screen.",
    )
    if ignored:
        narrator.say(f"ignoring {', '.join(ignored)}: the tour acts on its own environment only")
    if previous:
        narrator.say("a previous tour's environment is here: starting afresh")
        reset, _ = shell.ptool("local", "reset", "--yes")
        narrator.say(f"deleted {reset['deleted']}", "ok")
    up, took = shell.ptool("local", "up")
    narrator.say(
        f"PostgreSQL on 127.0.0.1:{up['port']} (data: {up['data_dir']}), database"
        f" {up['database']} at schema version {up['schema_version']} (migrations applied:"
        f" {', '.join(up['applied_migrations']) or 'none'}), booking API at {up['api_url']}"
        f" ({took:.1f} s)",
        "ok",
    )
    url, _ = shell.ptool("local", "url")
    shell.db_url = url["url"]
    pgpass = os.path.relpath(url["pgpassfile"], shell.directory)
    narrator.say(
        f"the operator's login, {url['role']}: every command below but 'local' logs in as the"
        " role the privilege model names, never as the server's superuser; psql reads the"
        f" password from {pgpass}"
    )

    narrator.chapter(2, CHAPTERS[1], "Realistic tenants, artists, projects and bookings.")
    seeded, took = shell.ptool(
        "local", "seed", "--tenants", str(tenants), "--bookings", str(bookings)
    )
    narrator.say(
        f"{seeded['tenants']} tenants, {seeded['artists']} artists, {seeded['projects']}"
        f" projects, {seeded['bookings']} bookings, {seeded['events']} events ({took:.1f} s)",
        "ok",
    )

    narrator.chapter(
        3,
        CHAPTERS[2],
        f"'local up' applied the booking schema as {privileges.MIGRATOR}; 'migrate up' is what CI"
        " runs at every deploy (lint, a backup point, verify and invariants, rollback).",
    )
    migrated, took = shell.ptool("migrate", "up")
    applied = [m.get("version") for m in migrated.get("migrations") or []]
    notes = "; ".join(migrated.get("notes") or [])
    narrator.say(
        (f"applied {', '.join(str(v) for v in applied)}" if applied else notes or "done")
        + f" ({took:.1f} s)",
        "ok",
    )

    narrator.chapter(
        4,
        CHAPTERS[3],
        "A logical backup (pg_dump, streamed and checksummed into the repository) and a"
        " base backup, from which the archived WAL replays to any moment after it.",
    )
    dump, took = shell.ptool("backup", "create")
    narrator.say(
        f"backup {dump['id']}: {human_size(dump['raw_bytes'])} dumped,"
        f" {human_size(dump['stored_bytes'])} stored in {dump['repository']} ({took:.1f} s)",
        "ok",
    )
    base, took = shell.ptool("pitr", "base-backup")
    narrator.say(
        f"{base['backup_type']} base backup {base['id']}: {human_size(base['raw_bytes'])} read,"
        f" {human_size(base['stored_bytes'])} stored, LSN {base['start_lsn']}..{base['end_lsn']},"
        f" verified ({took:.1f} s)",
        "ok",
    )

    _accident(shell, narrator, result)
    _recover(shell, narrator, result)
    _check(shell, narrator, result)
    _rotate(shell, narrator, result, up.get("api_url"))
    _evidence(shell, narrator, result)


#: a tenant's bookings: how many, an md5 of them all (as text, by id), and the time now
_FINGERPRINT = (
    "SELECT count(*), md5(string_agg(b::text, ',' ORDER BY b.id)),"
    " to_json(clock_timestamp()) #>> '{}' FROM booking.bookings b"
    " JOIN booking.tenants t ON t.id = b.tenant_id WHERE t.slug = :slug"
)
_ACCIDENT = (
    "DELETE FROM booking.bookings WHERE tenant_id ="
    " (SELECT id FROM booking.tenants WHERE slug = :slug)"
)


def _for_tenant(template: str, slug: str) -> str:
    """``template`` with ``:slug`` as a literal (a slug is [a-z0-9-]: checked, no quoting)."""
    if not _SLUG.fullmatch(slug):
        raise OperationFailed(f"the tour found no tenant with bookings (psql said {slug!r}).")
    return template.replace(":slug", f"'{slug}'")


def _fingerprint(shell: _Shell, slug: str) -> tuple[int, str, str]:
    count, digest, now = shell.sql(_for_tenant(_FINGERPRINT, slug)).split("|")
    return int(count), digest, now


def _accident(shell: _Shell, narrator: Narrator, result: TourResult) -> None:
    from ptool_ops.local.cluster import LocalPaths, server_state
    from ptool_ops.pg import find_tool

    major = server_state(LocalPaths(shell.directory / ".ptool" / "local")).major
    tool = find_tool("psql", server_major=major)
    shell.psql = tool.path
    narrator.chapter(
        5,
        CHAPTERS[4],
        "A support script deletes one tenant's bookings, logged in as the operator"
        f" {privileges.OWNER}. (psql is {tool.path}, PostgreSQL {tool.major}.)",
    )
    pgpass = os.path.relpath(shell.pgpass, shell.directory)
    narrator.command(f"export PGPASSFILE={shlex.quote(pgpass)} DB={shlex.quote(shell.db_url)}")
    busiest = shell.sql(
        "SELECT t.slug, count(*) FROM booking.tenants t JOIN booking.bookings b"
        " ON b.tenant_id = t.id GROUP BY t.slug ORDER BY 2 DESC, 1 LIMIT 1"
    )
    slug = busiest.split("|")[0]
    result.tenant = slug
    narrator.say(
        f"the busiest tenant is {slug}; first its bookings are counted and fingerprinted, with"
        " the time just before the accident"
    )
    before, digest, as_of = _fingerprint(shell, slug)
    result.bookings_before, result.as_of, result.fingerprint = before, as_of, digest
    shell.sql(_for_tenant(_ACCIDENT, slug), tuples_only=False)
    after, _, _ = _fingerprint(shell, slug)
    result.bookings_after_accident = after
    narrator.say(
        f"{slug} had {before} bookings at {as_of} (fingerprint {digest[:12]}); now it has {after}",
        "bad",
    )


def _recover(shell: _Shell, narrator: Narrator, result: TourResult) -> None:
    narrator.chapter(
        6,
        CHAPTERS[5],
        "Recovery restores a copy at a moment from the base backup and the archived WAL."
        " The WAL holding the accident is still being written: 'pitr mark' names this moment"
        " and archives its segment now (archive_timeout would within a minute).",
    )
    mark, _ = shell.ptool("pitr", "mark", "after-the-accident")
    narrator.say(f"restore point {mark['name']!r} at LSN {mark['lsn_text']} ({mark['time']})", "ok")
    window, _ = shell.ptool("pitr", "window", ok_codes=(0, 1))
    for line in window.get("timelines") or []:
        gaps = len(line.get("gaps") or [])
        narrator.say(
            f"timeline {line['timeline']}: restorable from {line['earliest_time']} to WAL"
            f" archived {line['newest_archived_at']}, {gaps} gap(s)",
            "ok" if not gaps else "bad",
        )

    narrator.chapter(
        7,
        CHAPTERS[6],
        f"runbooks/tenant-recovery.md: plan from a copy at {result.as_of} (kept for the"
        " next steps), apply in one transaction, remove the copy. Every other tenant's"
        " writes since stay.",
    )
    slug = result.tenant
    planned, took = shell.ptool(
        "recover", "tenant", slug, "--as-of", result.as_of, "--keep-clone", ok_codes=(0, 1)
    )
    plan = planned["plan"]
    for table in plan["tables"]:
        if table["missing"] or table["changed"] or table["new"]:
            narrator.say(
                f"{table['table']}: {table['source_rows']} at the point, {table['live_rows']}"
                f" live: {table['missing']} missing, {table['changed']} changed,"
                f" {table['new']} new"
            )
    for action in plan.get("actions") or []:
        narrator.say(f"plan: {action}")
    copy_id = str(planned["source"]["id"])
    narrator.say(
        f"plan {plan['digest'][:12]}, {plan['conflicts']} conflict(s), from"
        f" {planned['source']['kind']} {copy_id} ({took:.1f} s)",
        "ok" if not planned["blocked"] else "bad",
    )
    done, took = shell.ptool("recover", "tenant", slug, "--from", copy_id, "--apply")
    applied = done.get("applied") or {}
    inserted = sum((applied.get("inserted") or {}).values())
    invariants = "hold" if (applied.get("invariants") or {}).get("ok") else "FAIL"
    narrator.say(
        f"in one transaction: {inserted} row(s) re-inserted with their original ids,"
        f" {applied.get('events', 0)} booking.recovered event(s) appended, invariants"
        f" {invariants} ({took:.1f} s)",
        "ok" if applied.get("applied") else "bad",
    )
    dropped, _ = shell.ptool("pitr", "drop", copy_id, "--yes")
    narrator.say(f"removed the copy {copy_id}" if dropped.get("removed") else "no copy left", "ok")


def _check(shell: _Shell, narrator: Narrator, result: TourResult) -> None:
    narrator.chapter(8, CHAPTERS[7], "The same count and fingerprint as before the accident.")
    after, digest, _ = _fingerprint(shell, result.tenant)
    result.bookings_after_recovery = after
    result.identical = digest == result.fingerprint
    result.all_back = result.identical and after == result.bookings_before
    counts = (
        f"before the accident {result.bookings_before}, after it"
        f" {result.bookings_after_accident}, after recovery {after}"
    )
    if result.all_back:
        narrator.say(
            f"every deleted booking is back, row for row ({counts}; fingerprint {digest[:12]})",
            "ok",
        )
    else:
        missing = result.bookings_before - after
        narrator.say(
            f"NOT all deleted bookings are back: {counts}"
            + (f" ({missing} missing)" if missing > 0 else "; the rows differ"),
            "bad",
        )


def _rotate(shell: _Shell, narrator: Narrator, result: TourResult, api_url: str | None) -> None:
    narrator.chapter(
        9,
        CHAPTERS[8],
        "runbooks/rotate-secret.md: app-db is the API's pair of alternating logins. While the"
        " tour asks the API for its schema version (a database read) every 20 ms, the login"
        " not in use gets a new password, the API is pointed at it and checked, then it"
        " becomes current.",
    )
    if api_url is None:
        narrator.say("the local booking API is not running: the rotation runs without load", "bad")
        rotated, took = shell.ptool("secrets", "rotate", "app-db")
    else:
        with _ApiLoad(api_url) as load:
            rotated, took = shell.ptool("secrets", "rotate", "app-db")
        result.api_requests, result.api_failures = load.sent, len(load.failures)
    for step in rotated.get("steps") or []:
        narrator.say(
            f"{step['name']}: {step['detail']}", "ok" if step["outcome"] == "done" else "bad"
        )
    narrator.say(
        f"app-db {rotated['outcome']}: now {rotated['role_after']} (was {rotated['role_before']})"
        f" ({took:.1f} s)",
        "ok",
    )
    if api_url is not None:
        failed = result.api_failures
        narrator.say(
            f"the API answered {result.api_requests - failed} of {result.api_requests} requests"
            " during the rotation" + (f"; {failed} failed" if failed else ": none failed"),
            "ok" if not failed else "bad",
        )
        if failed:
            result.problems.append(f"{failed} API request(s) failed during the rotation")


def _evidence(shell: _Shell, narrator: Narrator, result: TourResult) -> None:
    narrator.chapter(
        10,
        CHAPTERS[9],
        "The monthly restore drill: the newest backup into a scratch database and the"
        " newest archived point beside live, each checked and timed, then dropped.",
    )
    drill, _ = shell.ptool("drill", "run", ok_codes=(0, 1))
    for part in drill.get("parts") or []:
        narrator.say(
            f"{part['kind']} restore of {part['source']}: RTO {part['rto_s']:.1f} s"
            + (f"; {'; '.join(part['problems'])}" if part.get("problems") else ""),
            "ok" if part.get("ok") else "bad",
        )
    if drill.get("rpo_s") is not None:
        narrator.say(f"RPO {drill['rpo_s']:.1f} s (how old the newest archived WAL was)")
    if not drill.get("ok"):
        result.problems.append("the restore drill failed")

    narrator.chapter(11, CHAPTERS[10], "What cron and on-call look at; exit 1 names each breach.")
    status, _ = shell.ptool("status", ok_codes=(0, 1))
    db = status.get("database") or {}
    inv = status.get("invariants") or {}
    api = status.get("api") or {}
    narrator.say(
        f"{status['environment']}: {'healthy' if status['ok'] else 'unhealthy'}; PostgreSQL"
        f" {db.get('server_version')}, schema {db.get('schema_version')};"
        f" {len(inv.get('checks') or [])} invariants, {inv.get('violation_count')} violation(s);"
        f" API {'ready' if api.get('ready') else 'not ready'} as {api.get('role')}",
        "ok" if status["ok"] else "bad",
    )
    for check in status.get("checks") or []:
        mark: Mark = "info" if check["ok"] is None else "ok" if check["ok"] else "bad"
        narrator.say(f"{check['name']:<24} {check['detail']}", mark)
    result.problems.extend(f"status: {p}" for p in status.get("problems") or [])

    narrator.chapter(12, CHAPTERS[11], "Every mutating command is in a hash-chained audit trail.")
    events, _ = shell.ptool(*AUDIT_LOG)
    for event in events or []:
        narrator.say(
            f"{event.get('seq'):>3} {event.get('at', '')[:19]} {event.get('action', '?'):<17}"
            f" {event.get('outcome', '?'):<3} {event.get('command') or ''}"
        )

    narrator.chapter(
        13, CHAPTERS[12], "Backups, the window, drills, secrets and the audit chain as one page."
    )
    page, _ = shell.ptool("report", "--html", REPORT_FILE, ok_codes=(0, 1))
    result.report_file = page["file"]
    sections = page.get("sections") or {}
    problems = [p for s in sections.values() for p in s.get("problems") or []]
    narrator.say(
        f"wrote {page['file']} ({len(sections)} sections, {len(problems)} problem(s))",
        "ok" if not problems else "bad",
    )
    result.problems.extend(f"report: {p}" for p in problems)
