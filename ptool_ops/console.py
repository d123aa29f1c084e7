"""Output for people (rich) and machines (JSON), with secret redaction applied to both.

Redaction happens here, at the handlers, not at each print: every byte ptool-ops writes to
stdout, stderr or a log handler passes through one :class:`Redactor`, which masks the
password in connection URIs and conninfo strings and every secret value the settings know.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ptool_ops import tracing

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

MASK = "***"

# postgresql://user:secret@host, https://token@host is left alone (no user:password shape)
_URI_PASSWORD = re.compile(r"(?P<pre>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s'\"]*:)[^@\s'\"]+(?P<at>@)")
# libpq conninfo and environment assignments: password=secret, PGPASSWORD=secret,
# password: secret; token and secret only as assignments (token=..., SECRET=...): "token:"
# and "secret:" begin ordinary sentences here ("secret.api-token: not rotated yet")
_KEYWORD_PASSWORD = re.compile(
    r"(?P<pre>\b(?:(?:password|PGPASSWORD|passwd)\s*[=:]|(?:token|secret)\s*=)\s*['\"]?)"
    r"[^\s'\",;&]+",
    re.IGNORECASE,
)


class OutputFormat(enum.StrEnum):
    text = "text"
    json = "json"


class Redactor:
    """Masks secrets in text. Secrets are registered as they are loaded."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, *values: str | None) -> None:
        for value in values:
            # very short values would mask ordinary words; no secret we generate is that short
            if value and len(value) >= 6 and value not in self._secrets:
                self._secrets.add(value)
                self._pattern = None

    def __call__(self, text: str) -> str:
        if self._secrets:
            if self._pattern is None:
                ordered = sorted(self._secrets, key=len, reverse=True)
                self._pattern = re.compile("|".join(re.escape(s) for s in ordered))
            text = self._pattern.sub(MASK, text)
        text = _URI_PASSWORD.sub(rf"\g<pre>{MASK}\g<at>", text)
        return _KEYWORD_PASSWORD.sub(rf"\g<pre>{MASK}", text)

    def data(self, value: Any) -> Any:
        """Redact every string inside a JSON-able structure."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value


class RedactingStream:
    """A text stream wrapper that redacts whatever is written through it."""

    def __init__(self, stream: IO[str], redactor: Redactor) -> None:
        self._stream = stream
        self._redactor = redactor

    def write(self, text: str) -> int:
        self._stream.write(self._redactor(text))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", "utf-8")


class RedactingFilter(logging.Filter):
    """A logging filter that renders each record's message redacted (handlers and files alike)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._redactor(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._redactor(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def human_size(n: float | None) -> str:
    """Bytes for people: ``618.6 KiB``; ``?`` when unknown."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} TiB"


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, paths and datetimes to plain JSON values."""
    if hasattr(value, "to_dict") and not isinstance(value, type):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Path):
        return str(value)
    return value


#: the width of output to a pipe or file: wide enough that no table cell is cut or wrapped
#: (rich would assume 80 columns and truncate cells with "…")
PIPE_WIDTH = 1000


def _width(stream: Any) -> int | None:
    """None (rich asks the terminal, or COLUMNS) on a terminal; :data:`PIPE_WIDTH` else."""
    try:
        if stream.isatty() or os.environ.get("COLUMNS"):
            return None
    except (AttributeError, ValueError):
        pass
    return PIPE_WIDTH


class Output:
    """Everything a command shows: results on stdout, messages and progress on stderr."""

    def __init__(
        self,
        fmt: OutputFormat,
        redactor: Redactor,
        *,
        verbose: int = 0,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
    ) -> None:
        self.format = fmt
        self.redactor = redactor
        self.verbose = verbose
        self._stdout = RedactingStream(stdout or sys.stdout, redactor)
        self._stderr = RedactingStream(stderr or sys.stderr, redactor)
        self._out: Console | None = None
        self._err: Console | None = None

    @property
    def json(self) -> bool:
        return self.format is OutputFormat.json

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            self._out = Console(
                file=self._stdout,  # type: ignore[arg-type]
                highlight=False,
                soft_wrap=True,
                width=_width(self._stdout),
            )
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(
                file=self._stderr,  # type: ignore[arg-type]
                highlight=False,
                soft_wrap=True,
                width=_width(self._stderr),
            )
        return self._err

    def result(self, data: Any, render: Callable[[Console], None] | None = None) -> None:
        """Show a command's result: JSON on stdout for machines, ``render`` for people."""
        if self.json or render is None:
            payload = self.redactor.data(to_jsonable(data))
            self._stdout.write(json.dumps(payload, indent=2, sort_keys=False) + "\n")
            self._stdout.flush()
        else:
            render(self.out)

    def info(self, message: str) -> None:
        """A line for people on stderr (kept off stdout so JSON stays parseable)."""
        if not self.json:
            self.err.print(message)

    def detail(self, message: str) -> None:
        if self.verbose and not self.json:
            self.err.print(f"[dim]{message}[/dim]")

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {message}", markup=True)

    def error(self, message: str, hint: str | None, data: dict[str, object]) -> None:
        if self.json:
            payload = self.redactor.data(to_jsonable(data))
            self._stdout.write(json.dumps(payload) + "\n")
            self._stdout.flush()
        from rich.markup import escape

        line = f"[bold red]error:[/bold red] {escape(message)}"
        if hint:
            line += f"\n[dim]{escape(hint)}[/dim]"
        self.err.print(line)

    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[ProgressTask]:
        """A progress bar on stderr for people at a terminal; silent for JSON and pipes.
        Traced as a span of the command (:mod:`ptool_ops.tracing`), whatever is shown."""
        with tracing.span(description), self._bar(description, total) as task:
            yield task

    @contextmanager
    def _bar(self, description: str, total: int | None) -> Iterator[ProgressTask]:
        if self.json or not self._stderr.isatty():
            yield ProgressTask(None, None)
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.err,
            transient=True,
        ) as bar:
            task = bar.add_task(description, total=total)
            yield ProgressTask(bar, task)


class ProgressTask:
    def __init__(self, bar: Progress | None, task: Any) -> None:
        self._bar = bar
        self._task = task

    def update(
        self, completed: int, total: int | None = None, description: str | None = None
    ) -> None:
        if self._bar is not None:
            kwargs: dict[str, Any] = {"completed": completed}
            if total is not None:
                kwargs["total"] = total
            if description is not None:
                kwargs["description"] = description
            self._bar.update(self._task, **kwargs)


def configure_logging(redactor: Redactor, verbose: int, stream: IO[str] | None = None) -> None:
    """Send ptool_ops logs to stderr at the requested verbosity, always redacted."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(RedactingStream(stream or sys.stderr, redactor))
    handler.addFilter(RedactingFilter(redactor))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("ptool_ops")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
