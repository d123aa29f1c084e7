"""Optional OpenTelemetry tracing: a span per command, a child span per step (docs/tracing.md).

Off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
set: then the CLI's root group (:func:`command`) sets up the SDK with an OTLP/HTTP exporter
behind a batch processor, runs the command in a span named after it (``ptool-ops backup
create``) and, when the command ends, sends what is left with a bounded wait, so a dead
collector costs a command a few seconds at most, never a hang. Off, nothing is imported:
:func:`span` and :func:`steps` cost a function call, and ``--help`` stays fast. Set but
without the ``otel`` extra installed, one warning line on stderr and the command runs.

What a span may carry: command and step names, the environment's name, exit codes,
counts and an error's *type*. Never an error's message, an argument's value, a URL or a
secret; and every name and string attribute passes the command's :class:`Redactor` on the
way in, as everything else ptool-ops writes does.

Library code marks its steps with ``with tracing.span("checksums"):``, or, for a fixed
sequence that already tracks its current step in a variable, with :func:`steps`::

    with tracing.steps("preflight") as traced:
        ...
        step = traced("dumping")  # ends 'preflight', starts 'dumping'

The SDK's provider is kept here, not made OpenTelemetry's global one: each command sets it
up and shuts it down, so commands run in one process (the tests' CliRunner) stay apart.
A program that embeds ptool-ops and has set up OpenTelemetry itself gets our spans in its
own traces: when ``opentelemetry.trace`` is already loaded, its global tracer is used.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer

#: what a span attribute may hold
Attribute = str | bool | int | float

#: the environment variables that turn tracing on (either)
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
#: seconds an export may take, unless OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT says otherwise
EXPORT_TIMEOUT_S = 2.0
SERVICE_NAME = "ptool-ops"


class Span:
    """A span as library code sees it: attributes can be added (redacted on the way in)."""

    def __init__(self, span: OtelSpan | None = None) -> None:
        self._span = span

    def set(self, **attributes: Attribute) -> None:
        if self._span is not None:
            self._span.set_attributes(_clean(attributes))


_NO_SPAN = Span()


@dataclass
class _Tracing:
    """The set-up of the command being traced."""

    tracer: Tracer
    provider: TracerProvider
    failed: Callable[[], int]  # spans the exporter could not deliver so far
    wait_s: float
    redact: Callable[[str], str]
    root: Context | None = None  # the command span's: the parent of spans on other threads


_active: _Tracing | None = None


def wanted() -> bool:
    """Whether the environment asks for traces (an OTLP endpoint, the SDK not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(os.environ.get(name) for name in ENDPOINT_VARS)


def _tracer() -> Tracer | None:
    if _active is not None:
        return _active.tracer
    trace = sys.modules.get("opentelemetry.trace")  # loaded by a program embedding us
    if trace is None:
        return None
    tracer: Tracer = trace.get_tracer("ptool_ops")  # its global provider's (no-op if none)
    return tracer


def _clean(attributes: dict[str, Attribute]) -> dict[str, Attribute]:
    """Keyword attributes as ``ptool.<name>``, their strings redacted."""
    redact = _active.redact if _active is not None else None
    return {
        f"ptool.{key}": redact(value) if redact is not None and isinstance(value, str) else value
        for key, value in attributes.items()
    }


def _name(text: str) -> str:
    return _active.redact(text) if _active is not None else text


def _parent() -> Context | None:
    """The current context; on a thread that has none, the command span's."""
    from opentelemetry import trace

    if trace.get_current_span().get_span_context().is_valid or _active is None:
        return None
    return _active.root


def _failure(exc: BaseException) -> bool:
    """Whether ``exc`` ends a span as an error (an exit with code 0 does not)."""
    return not _is_exit(exc) or _exit_of(exc)[0] != 0


def _is_exit(exc: BaseException) -> bool:
    from typer.exceptions import Exit  # also what Typer's own Click raises

    return isinstance(exc, SystemExit | Exit)


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _mark_failed(span: OtelSpan, error: BaseException | None, code: int | None = None) -> None:
    """An error status with the exception's type: never its message (it may name a host,
    a role, a value)."""
    from opentelemetry.trace import Status, StatusCode

    kind = _type_name(error) if error is not None else f"exit {code}"
    span.set_attribute("error.type", kind)
    span.set_status(Status(StatusCode.ERROR, kind))


@contextmanager
def span(name: str, **attributes: Attribute) -> Iterator[Span]:
    """A child span of the current one for the block (nothing, and no import, untraced).
    An exception leaving the block marks it failed, with the exception's type only."""
    tracer = _tracer()
    if tracer is None:
        yield _NO_SPAN
        return
    with tracer.start_as_current_span(
        _name(name),
        context=_parent(),
        attributes=_clean(attributes),
        record_exception=False,  # an exception event carries the message and traceback
        set_status_on_exception=False,
    ) as current:
        try:
            yield Span(current)
        except BaseException as exc:
            if _failure(exc):
                _mark_failed(current, exc)
            raise


def _same(name: str) -> str:
    return name


@contextmanager
def steps(first: str, **attributes: Attribute) -> Iterator[Callable[[str], str]]:
    """Spans for a fixed sequence of steps, one after the other, for the block: the first
    starts now; calling the yielded function with the next step's name ends the current
    step's span and starts the next (returning the name, so ``step = traced("copy")`` keeps
    the step variable an error message names). An exception leaving the block marks the
    step it happened in failed. Spans opened inside a step must close within it."""
    tracer = _tracer()
    if tracer is None:
        yield _same
        return
    from opentelemetry import context, trace

    parent = _parent() or context.get_current()
    clean = _clean(attributes)
    current: list[tuple[OtelSpan, Token[Context]]] = []

    def end() -> None:
        while current:
            step, token = current.pop()
            context.detach(token)
            step.end()

    def enter(name: str) -> str:
        end()
        step = tracer.start_span(_name(name), context=parent, attributes=clean)
        current.append((step, context.attach(trace.set_span_in_context(step, parent))))
        return name

    enter(first)
    try:
        yield enter
    except BaseException as exc:
        if current and _failure(exc):
            _mark_failed(current[-1][0], exc)
        raise
    finally:
        end()


# --- the command span (ptool_ops.cli.main.RootGroup.invoke) -------------------------------


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


def _set_up(redact: Callable[[str], str]) -> _Tracing | None:
    """The SDK, its OTLP/HTTP exporter and batch processor; None (and a warning) when the
    ``otel`` extra is not installed."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        _warn(
            f"{next(v for v in ENDPOINT_VARS if os.environ.get(v))} is set, but OpenTelemetry is"
            " not installed (pip install 'ptool-ops[otel]'); this command is not traced."
        )
        return None
    import logging
    from collections.abc import Sequence
    from importlib.metadata import PackageNotFoundError, version

    # the SDK's own complaints (a refused connection, with the endpoint) would reach stderr
    # unredacted through logging's last resort; a failed export is reported once, below
    quiet = logging.getLogger("opentelemetry")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    quiet.propagate = False

    class Counting(SpanExporter):
        """The OTLP exporter, counting the spans it could not deliver."""

        def __init__(self, inner: SpanExporter) -> None:
            self.inner = inner
            self.failed = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            try:
                result = self.inner.export(spans)
            except Exception:
                result = SpanExportResult.FAILURE
            if result is not SpanExportResult.SUCCESS:
                self.failed += len(spans)
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    exporter = Counting(OTLPSpanExporter(timeout=_export_timeout()))
    try:
        ours = version("ptool-ops")
    except PackageNotFoundError:
        ours = "unknown"
    resource = Resource.create({"service.version": ours})  # + OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    wait_s = _export_timeout() + 1.0
    return _Tracing(
        provider.get_tracer("ptool_ops", ours), provider, lambda: exporter.failed, wait_s, redact
    )


def _export_timeout() -> float:
    """Seconds an export may take: OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT (in seconds, as the
    Python exporter reads it), else :data:`EXPORT_TIMEOUT_S`."""
    given = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    )
    try:
        return float(given) if given else EXPORT_TIMEOUT_S
    except ValueError:
        return EXPORT_TIMEOUT_S


def _shut_down(setup: _Tracing) -> None:
    """Send what is left; wait at most ``wait_s`` (a daemon thread does the sending)."""
    failures: list[BaseException] = []

    def send() -> None:
        try:
            setup.provider.shutdown()
        except Exception as err:  # a tracing failure never becomes the command's
            failures.append(err)

    sender = threading.Thread(target=send, name="otel-shutdown", daemon=True)
    sender.start()
    sender.join(setup.wait_s)
    if sender.is_alive():
        _warn(f"the trace collector took no spans within {setup.wait_s:.0f} s; the trace is lost.")
    elif setup.failed() or failures:
        what = f"{setup.failed()} span(s)" if setup.failed() else "the trace"
        _warn(f"{what} could not be sent to the trace collector.")


def command_name(ctx: Any) -> str:
    """``ptool-ops backup create``: the root's name and the subcommands the arguments name
    (never an argument's value: only words that are commands of the group before them)."""
    names = [SERVICE_NAME]
    group = ctx.command
    # the words after the root's options, before the root resolves them (Typer's Click)
    for word in [*getattr(ctx, "_protected_args", ()), *ctx.args]:
        get = getattr(group, "get_command", None)  # a group's; a command has none
        found = get(ctx, word) if get is not None else None
        if found is None:
            break
        names.append(word)
        group = found
    return " ".join(names)


def _exit_of(exc: BaseException) -> tuple[int, BaseException | None]:
    """The exit code an exception leaving the root group means, and the error behind it
    (``raise Exit(code) from None`` keeps it as the context)."""
    if isinstance(exc, SystemExit):
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    else:
        found = getattr(exc, "exit_code", None)
        code = found if isinstance(found, int) else 1
    error = exc.__context__ if _is_exit(exc) else exc
    return code, error


def _outcome(code: int) -> str:
    return {0: "ok", 1: "problems", 130: "interrupted"}.get(code, "error")


@contextmanager
def command(ctx: Any) -> Iterator[None]:
    """The command's span around the root group's invocation, when tracing is wanted:
    named by :func:`command_name`, with the environment's name, the exit code and the
    outcome; its steps' spans are its children. Its end sends the trace."""
    global _active
    if not wanted() or _active is not None:  # not asked for; or already inside a command
        yield
        return

    def redact(text: str) -> str:
        redactor = getattr(ctx.find_root().obj, "redactor", None)  # the AppContext's
        return redactor(text) if callable(redactor) else text

    try:
        setup = _set_up(redact)
    except Exception as err:  # a bad OTEL_* setting, say: the command runs untraced
        _warn(f"tracing could not be set up ({_type_name(err)}); this command is not traced.")
        setup = None
    if setup is None:
        yield
        return
    from opentelemetry import context, trace

    name = command_name(ctx)
    root = setup.tracer.start_span(
        name, attributes={"ptool.command": name[len(SERVICE_NAME) :].strip()}
    )
    token = context.attach(trace.set_span_in_context(root))
    setup.root = context.get_current()
    _active = setup
    code, error = 0, None
    try:
        yield
    except BaseException as exc:
        code, error = _exit_of(exc)
        raise
    finally:
        try:
            obj = ctx.find_root().obj
            environment = getattr(obj, "env_name", None) or "local"  # settings.LOCAL
            root.set_attributes(
                {
                    "ptool.environment": redact(str(environment)),
                    "ptool.dry_run": bool(getattr(obj, "dry_run", False)),
                    "process.exit.code": code,
                    "ptool.outcome": _outcome(code),
                }
            )
            if code != 0:
                _mark_failed(root, error, code)
            context.detach(token)
            root.end()
        finally:
            _active = None
            _shut_down(setup)
