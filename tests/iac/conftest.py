"""Pulumi test harness: mocks with an inline executor (no CLI, no plugins, no hangs).

* ``mocks`` — a fresh event loop whose default executor runs inline (pulumi/pulumi#7663),
  the root stack and config reset, and :class:`RecordingMocks` recording every resource
  (and, through :class:`RecordingMonitor`, its ``ignoreChanges`` as the engine gets them).
* ``run_program(stack, environment, ...)`` — runs ``components.program.run`` for ``stack``
  to completion with the test passwords, ops token and API keys as secret config, records each
  resource's options and parent (through a stack transformation), and returns the stack
  outputs as ``{name: (value, is_secret)}``.
* ``fake_neon`` / ``fake_railway`` / ``fake_vercel`` — the loopback fakes of
  ``tests/iac/fakes.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime.mocks import MockMonitor

from tests.iac.fakes import FakeNeon, FakeRailway, FakeVercel, serve

PROJECT = "ptool-ops"
SECRET_SIG = "4dabf18193072939515e22adb298388d"
PASSWORDS = {
    "booking_app_a": "app-a-Pa55word-0123456789",
    "booking_app_b": "app-b-Pa55word-0123456789",
    "booking_migrator": "migrator-Pa55word-0123456",
    "booking_readonly": "readonly-Pa55word-012345",
    "booking_backup": "backup-Pa55word-01234567",
}
API_TOKEN = "ops-token-0123456789abcdef0123456789abcdef"
OWNER_PASSWORD = "neon-owner-password"
ACCOUNT_ID = "123456789012"
STAGING_OUTPUTS = {
    "neonProjectId": "prj-staging",
    "neonBranchId": "br-staging-main",
    "railwayProjectId": "rw-prj-staging",
    "railwayEnvironmentId": "rw-env-staging",
    "railwayServiceId": "rw-svc-staging",
    "vercelProjectId": "prj_vercel_staging",
}


class ImmediateExecutor(ThreadPoolExecutor):
    """Run the SDK's ``run_in_executor()`` calls inline (pulumi/pulumi#7663, as in #7666)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


def _mock_outputs(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    """What the real providers would add to the inputs."""
    name, inputs = args.name, args.inputs
    typ = args.typ
    if typ == "pulumi-python:dynamic/neon:Project":
        return {
            "project_id": f"prj-{name}",
            "branch_id": f"br-{name}",
            "endpoint_id": f"ep-{name}",
            "host": f"ep-{name}.eu-central-1.aws.neon.tech",
            "owner_password": OWNER_PASSWORD,
            "actual_history_retention_seconds": inputs.get("history_retention_seconds"),
        }
    if typ == "pulumi-python:dynamic/neon:Branch":
        return {
            "branch_id": f"br-{name}",
            "endpoint_id": f"ep-{name}",
            "host": f"ep-{name}.eu-central-1.aws.neon.tech",
            "owner_password": OWNER_PASSWORD,
        }
    if typ == "pulumi-python:dynamic/railway:Project":
        return {"project_id": f"rw-prj-{name}", "default_environment_id": f"rw-env-{name}"}
    if typ == "pulumi-python:dynamic/railway:Environment":
        return {"environment_id": f"rw-env-{name}"}
    if typ == "pulumi-python:dynamic/railway:Service":
        return {"service_id": f"rw-svc-{name}"}
    if typ == "pulumi-python:dynamic/railway:ServiceInstance":
        return {"domain": f"{name}.up.railway.app", "domain_id": f"dom-{name}"}
    if typ == "aws:iam/policy:Policy":
        return {"arn": f"arn:aws:iam::{ACCOUNT_ID}:policy/{inputs.get('name')}"}
    if typ == "aws:iam/role:Role":
        return {"arn": f"arn:aws:iam::{ACCOUNT_ID}:role/{inputs.get('name')}"}
    if typ == "aws:secretsmanager/secret:Secret":
        region = inputs.get("region", "eu-central-1")
        secret = inputs.get("name")
        return {"arn": f"arn:aws:secretsmanager:{region}:{ACCOUNT_ID}:secret:{secret}-AbCdEf"}
    return {}


CALLER_IDENTITY = "aws:index/getCallerIdentity:getCallerIdentity"


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []
        self.options: dict[str, pulumi.ResourceOptions] = {}
        self.parents: dict[str, str | None] = {}  # resource name -> parent's name
        #: resource name -> ignoreChanges as registered (input names: ``secretString``)
        self.ignored: dict[str, list[str]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        if args.typ == "pulumi:pulumi:StackReference":
            return args.name, {"outputs": dict(STAGING_OUTPUTS), "name": args.name}
        return f"{args.name}_id", {**args.inputs, **_mock_outputs(args)}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append(args)
        if args.token == CALLER_IDENTITY:
            return {
                "accountId": ACCOUNT_ID,
                "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/ci",
                "id": ACCOUNT_ID,
                "userId": "AIDACI",
            }
        return {}

    def by_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str, name: str | None = None) -> pulumi.runtime.MockResourceArgs:
        found = [r for r in self.by_type(typ) if name is None or r.name == name]
        assert len(found) == 1, f"{len(found)} resources of type {typ} named {name}"
        return found[0]

    def named(self, name: str) -> pulumi.runtime.MockResourceArgs:
        (found,) = [r for r in self.resources if r.name == name]
        return found


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, keeping each registration's ``ignoreChanges`` -- translated to
    the input names the engine compares (``MockResourceArgs`` carries no options)."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.recording = mocks

    def RegisterResource(self, request: Any) -> Any:
        self.recording.ignored[request.name] = list(request.ignoreChanges)
        return super().RegisterResource(request)


def use_mocks(mocks: RecordingMocks, stack: str) -> None:
    pulumi.runtime.set_mocks(
        mocks, project=PROJECT, stack=stack, preview=False, monitor=RecordingMonitor(mocks)
    )


class ProgramRun:
    def __init__(self, mocks: RecordingMocks) -> None:
        self.mocks = mocks

    def __call__(
        self,
        stack: str,
        environment: dict[str, Any] | None,
        *,
        secrets: dict[str, Any] | None = None,
        extra: dict[str, str] | None = None,
        plain: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Run the program for ``stack`` to completion; return the resolved stack outputs."""
        from components import program

        use_mocks(self.mocks, stack)
        secret_values = {
            f"{PROJECT}:dbPasswords": json.dumps(PASSWORDS),
            f"{PROJECT}:apiToken": API_TOKEN,
            f"{PROJECT}:neonApiKey": "neon-key",
            f"{PROJECT}:railwayToken": "railway-token",
            **(secrets or {}),
        }
        for key in plain or {}:
            secret_values.pop(key, None)
        config = {**secret_values, **(extra or {}), **(plain or {})}
        if environment is not None:
            config[f"{PROJECT}:environment"] = json.dumps(environment)
        pulumi.runtime.set_all_config(config, list(secret_values))

        self.mocks.options.clear()
        self.mocks.parents.clear()
        self.mocks.ignored.clear()
        names: dict[int, str] = {}

        def capture(
            args: pulumi.ResourceTransformationArgs,
        ) -> pulumi.ResourceTransformationResult | None:
            names[id(args.resource)] = args.name
            self.mocks.options[args.name] = args.opts
            parent = args.opts.parent if args.opts else None
            self.mocks.parents[args.name] = names.get(id(parent)) if parent else None
            return None

        pulumi.runtime.register_stack_transformation(capture)
        exported: dict[str, Any] = {}
        pulumi.runtime.test(program.run)()
        stack_res = pulumi.runtime.settings.get_root_resource()
        assert stack_res is not None
        outputs = stack_res.outputs  # type: ignore[attr-defined]
        loop = asyncio.get_event_loop()
        for key, value in outputs.items():
            out = pulumi.Output.from_input(value)
            exported[key] = (
                loop.run_until_complete(out.future()),
                loop.run_until_complete(out.is_secret()),
            )
        return exported


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # the provider SDKs warn about their own deprecated classes at import and registration
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_aws"))
            item.add_marker(
                pytest.mark.filterwarnings("ignore::DeprecationWarning:pulumi_postgresql")
            )


@pytest.fixture
def mocks() -> Iterator[RecordingMocks]:
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.set_default_executor(ImmediateExecutor())
    pulumi.runtime.settings.ROOT.set(None)  # internal: else the old root Stack persists
    pulumi.runtime.set_all_config({}, [])
    recording = RecordingMocks()
    use_mocks(recording, "dev")
    yield recording
    # a program that failed leaves registrations pending: end them before closing the loop
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()
    asyncio.set_event_loop(None)


@pytest.fixture
def run_program(mocks: RecordingMocks) -> ProgramRun:
    return ProgramRun(mocks)


@pytest.fixture(scope="session")
def fake_neon() -> Iterator[FakeNeon]:
    fake = FakeNeon()
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="session")
def fake_railway() -> Iterator[FakeRailway]:
    fake = FakeRailway()
    with serve(fake) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="session")
def fake_vercel() -> Iterator[FakeVercel]:
    fake = FakeVercel()
    with serve(fake) as url:
        fake.url = url
        yield fake
