"""OpenTelemetry tracing (ptool_ops.tracing): real commands in their own processes send
their spans to a real OTLP/HTTP receiver on loopback; without the variables nothing of
OpenTelemetry is even imported."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import CANARY, OWNER, Cli, TestDatabase, drop_database

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="the otel extra")
trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

PTOOL = Path(sys.executable).with_name("ptool-ops")


@dataclass
class Received:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error
    status_message: str
    resource: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


class Collector:
    """An OTLP/HTTP receiver on a free loopback port: POST /v1/traces, protobuf bodies
    decoded with opentelemetry-proto's ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.spans: list[Received] = []
        self.paths: list[str] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                collector.paths.append(self.path)
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                collector.take(body)
                reply = trace_service.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def take(self, body: bytes) -> None:
        request = trace_service.ExportTraceServiceRequest.FromString(body)
        self.bodies.append(body)
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Received(
                            span.name,
                            span.trace_id.hex(),
                            span.span_id.hex(),
                            span.parent_span_id.hex(),
                            _attributes(span.attributes),
                            span.status.code,
                            span.status.message,
                            resource,
                        )
                    )

    def named(self, name: str) -> Received:
        found = [s for s in self.spans if s.name == name]
        assert len(found) == 1, (name, [s.name for s in self.spans])
        return found[0]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


def _child_env(cli: Cli, **extra: str) -> dict[str, str]:
    """The process's environment without PTOOL_* and OTEL_* variables, the CLI fixture's
    (its canary among them), and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PTOOL_", "OTEL_"))}
    env.pop("COLUMNS", None)
    env.update(cli.env)
    env.update(extra)
    return env


def _run(cli: Cli, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PTOOL), *args],
        cwd=cli.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _ancestors(span: Received, by_id: dict[str, Received]) -> list[str]:
    names = []
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        names.append(span.name)
    return names


def test_a_backup_and_its_restore_are_traces_of_their_steps(
    cli: Cli, booking_db: TestDatabase, collector: Collector, tmp_path: Path
) -> None:
    url = booking_db.url(OWNER)
    password = urlsplit(url).password
    assert password
    cli.write_config(
        f'[environments.t]\ndatabase_url = "{url}"\nrepo_url = "file://{tmp_path / "repo"}"\n'
    )
    env = _child_env(cli, OTEL_EXPORTER_OTLP_ENDPOINT=collector.url)
    result = _run(cli, ["--env", "t", "backup", "create", "-o", "json"], env)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr

    assert set(collector.paths) == {"/v1/traces"}
    command = collector.named("ptool-ops backup create")
    assert command.parent_id == ""  # the root of its trace
    assert command.attributes["ptool.command"] == "backup create"
    assert command.attributes["ptool.environment"] == "t"
    assert command.attributes["process.exit.code"] == 0
    assert command.attributes["ptool.outcome"] == "ok"
    assert command.status_code != 2
    assert command.resource["service.name"] == "ptool-ops"

    by_id = {s.span_id: s for s in collector.spans}
    assert {s.trace_id for s in collector.spans} == {command.trace_id}
    # every span but the command's has a parent that was sent, and descends from the command
    for span in collector.spans:
        if span is not command:
            assert _ancestors(span, by_id)[-1] == command.name
    # the progress bar's span, and in it the backup's steps, one after the other
    (progress,) = [s for s in collector.spans if s.parent_id == command.span_id]
    assert progress.name == "dumping"
    steps = [s.name for s in collector.spans if s.parent_id == progress.span_id]
    assert steps[0] == "preflight" and steps[-1] == "writing the manifest", steps
    assert {"exporting the snapshot", "dumping the data", "checking the stored objects"} <= set(
        steps
    )

    # no secret, no URL, in anything sent: the canary, the login's password, the database URL
    sent = b"".join(collector.bodies)
    for secret in (CANARY, password, url, urlsplit(url).netloc):
        assert secret.encode() not in sent
    for span in collector.spans:
        for value in span.attributes.values():
            assert "://" not in str(value)
    assert CANARY not in result.stdout + result.stderr

    # the restore: one more trace, its plan's steps as spans
    collector.spans.clear()
    target = f"{booking_db.name}_traced"
    try:
        restored = _run(
            cli,
            ["--env", "t", "backup", "restore", "latest", "--target-db", target, "-o", "json"],
            env,
        )
    finally:
        drop_database(booking_db.server, target)
    assert restored.returncode == 0, restored.stderr
    command = collector.named("ptool-ops backup restore")
    (progress,) = [s for s in collector.spans if s.parent_id == command.span_id]
    steps = [s.name for s in collector.spans if s.parent_id == progress.span_id]
    assert steps == ["checksums", "create-database", "restore-post-data", "schedule"]
    assert collector.named("schedule").attributes["ptool.jobs"] == 2
    assert password.encode() not in b"".join(collector.bodies)


def test_a_failed_command_is_an_error_span_with_the_type_only(
    cli: Cli, collector: Collector
) -> None:
    env = _child_env(cli, OTEL_EXPORTER_OTLP_ENDPOINT=collector.url)
    result = _run(cli, ["--env", "nope", "status"], env)
    assert result.returncode == 3
    command = collector.named("ptool-ops status")
    assert command.status_code == 2  # error
    assert command.attributes["error.type"] == "ptool_ops.errors.ConfigError"
    assert command.status_message == "ptool_ops.errors.ConfigError"
    assert command.attributes["process.exit.code"] == 3
    assert command.attributes["ptool.outcome"] == "error"
    assert command.attributes["ptool.environment"] == "nope"
    # the error's sentence went to the operator, not into the trace
    assert "unknown environment" in result.stderr
    assert b"unknown environment" not in b"".join(collector.bodies)


def test_a_dead_collector_costs_one_warning_not_the_command(cli: Cli) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    env = _child_env(cli, OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}")
    result = _run(cli, ["config", "show", "-o", "json"], env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "local"
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "could not be sent" in warnings[0]
    assert "Traceback" not in result.stderr
    assert str(port) not in result.stderr


BLOCK_OTEL = """
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
sys.argv = ["ptool-ops", *sys.argv[1:]]
from ptool_ops.cli import main
main()
"""


def test_without_the_extra_one_warning_and_the_command_runs(cli: Cli) -> None:
    env = _child_env(cli, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_OTEL, "config", "show", "-o", "json"],
        cwd=cli.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["name"] == "local"
    assert result.stderr.splitlines() == [
        "warning: OTEL_EXPORTER_OTLP_ENDPOINT is set, but OpenTelemetry is not installed"
        " (pip install 'ptool-ops[otel]'); this command is not traced."
    ]


LOADED = """
import json, sys
from ptool_ops.cli.main import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
found = sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")
print("\\nloaded:" + json.dumps(found))
"""


@pytest.mark.parametrize("args", [["--help"], ["config", "show"]])
def test_untraced_nothing_of_opentelemetry_is_imported(cli: Cli, args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-c", LOADED, *args],
        cwd=cli.cwd,
        env=_child_env(cli),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("loaded:"), result.stdout
    assert json.loads(last.removeprefix("loaded:")) == []


# --- the mechanism, in process, on an in-memory exporter -----------------------------------


@pytest.fixture
def memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Tracing set up as a command does, but into memory, with a Redactor knowing CANARY."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from ptool_ops import tracing
    from ptool_ops.console import Redactor

    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    redactor = Redactor()
    redactor.add(CANARY)
    setup = tracing._Tracing(provider.get_tracer("tests"), provider, lambda: 0, 1.0, redactor)
    monkeypatch.setattr(tracing, "_active", setup)
    command = setup.tracer.start_span("command")
    token = context.attach(trace.set_span_in_context(command))
    setup.root = context.get_current()
    try:
        yield exporter
    finally:
        context.detach(token)
        command.end()
        provider.shutdown()


def _finished(exporter: Any) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


def test_steps_follow_one_another_and_a_failure_gives_its_type_only(memory: Any) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import StatusCode

    from ptool_ops import tracing
    from ptool_ops.errors import OperationFailed

    with pytest.raises(OperationFailed), tracing.steps("one") as traced:
        assert traced("two") == "two"
        with tracing.span("inside"):
            pass
        raise OperationFailed(f"the login with {CANARY} failed")
    spans = _finished(memory)
    assert "command" not in spans  # still open: the steps are its children
    command = trace.get_current_span().get_span_context().span_id
    one, two, inside = spans["one"], spans["two"], spans["inside"]
    assert one.parent.span_id == two.parent.span_id == command
    assert inside.parent.span_id == two.context.span_id
    assert one.end_time <= two.start_time
    assert one.status.status_code is StatusCode.UNSET
    assert two.status.status_code is StatusCode.ERROR
    assert two.status.description == "ptool_ops.errors.OperationFailed"
    assert two.attributes["error.type"] == "ptool_ops.errors.OperationFailed"
    for span in (one, two, inside):
        assert not span.events  # no exception event: it would carry the message
        assert CANARY not in repr(dict(span.attributes or {})) + str(span.status.description)


def test_names_and_attributes_are_redacted_and_prefixed(memory: Any) -> None:
    from ptool_ops import tracing

    with tracing.span(f"login as {CANARY}", target=f"postgresql://u:{CANARY}@db/x") as span:
        span.set(count=3, where=f"password={CANARY}")
    (found,) = [s for s in memory.get_finished_spans()]
    assert CANARY not in found.name
    assert dict(found.attributes) == {
        "ptool.target": "postgresql://u:***@db/x",
        "ptool.count": 3,
        "ptool.where": "password=***",
    }


def test_a_span_on_another_thread_is_a_child_of_the_command(memory: Any) -> None:
    from opentelemetry import trace

    from ptool_ops import tracing

    def work() -> None:
        with tracing.span("on a thread"):
            pass

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    (found,) = [s for s in memory.get_finished_spans()]
    assert found.parent.span_id == trace.get_current_span().get_span_context().span_id


def test_span_decorates_a_function_and_an_exit_0_is_no_error(memory: Any) -> None:
    import typer
    from opentelemetry.trace import StatusCode

    from ptool_ops import tracing

    @tracing.span("decorated")
    def twice() -> int:
        return 2

    assert twice() + twice() == 4
    with pytest.raises(typer.Exit), tracing.span("exits"):
        raise typer.Exit(0)
    names = [s.name for s in memory.get_finished_spans()]
    assert names == ["decorated", "decorated", "exits"]
    assert memory.get_finished_spans()[-1].status.status_code is StatusCode.UNSET


def test_untraced_spans_and_steps_do_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    from ptool_ops import tracing

    monkeypatch.setattr(tracing, "_active", None)
    monkeypatch.delitem(sys.modules, "opentelemetry.trace", raising=False)
    with tracing.span("nothing", n=1) as span, tracing.steps("first") as traced:
        span.set(more=2)
        assert traced("second") == "second"
    assert "opentelemetry.trace" not in sys.modules
