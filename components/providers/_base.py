"""What every dynamic provider here shares (``InputsProvider``; ``ApiProvider`` adds the
credentials of one HTTP API).

* **Inputs are a pydantic model.** ``check`` validates the new inputs against it and turns each
  error into a ``CheckFailure`` naming the property; values still unknown at preview are
  skipped.
* **``diff`` replaces only what must be replaced**: fields listed in ``REPLACE_ON`` replace,
  every other changed input (and the ``version``) updates in place.
* **Credentials never enter the pickled provider.** The provider object is dill-pickled into
  state when the program runs; credentials are read later, in the provider process, by
  ``configure()`` (stack config such as ``ptool-ops:neonApiKey``) or from the environment
  (``NEON_API_KEY``), which still works at ``destroy`` after a key change. HTTP clients are
  built per call for the same reason (an open socket cannot be pickled).
* **``version``**: every resource takes a ``version`` input; bump ``PROVIDER_VERSION`` when the
  provider's behaviour changes, so that a plain ``pulumi up`` stores the new code in state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

from pulumi.dynamic import CheckFailure, CheckResult, ConfigureRequest, DiffResult
from pulumi.dynamic import ResourceProvider as _ResourceProvider
from pydantic import BaseModel, ConfigDict, ValidationError

from ptool_ops.errors import ConfigError

PROVIDER_VERSION = 1
"""Bump when a provider's behaviour changes (see docs/iac.md, "Dynamic providers")."""

UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"  # pulumi.runtime.rpc.UNKNOWN, at preview


class ProviderInputs(BaseModel):
    """Base of every provider's input model: unknown keys are errors, ``version`` is common."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = PROVIDER_VERSION


def _inputs_only(props: Mapping[str, Any], model: type[ProviderInputs]) -> dict[str, Any]:
    return {k: v for k, v in props.items() if k in model.model_fields}


class InputsProvider(_ResourceProvider):
    """A provider whose inputs are a pydantic model: ``check``, ``diff`` and ``parse``."""

    serialize_as_secret_always = False  # __provider holds no secret: credentials come later

    INPUTS: ClassVar[type[ProviderInputs]]
    REPLACE_ON: ClassVar[frozenset[str]] = frozenset()

    # -- check / diff ---------------------------------------------------------------------

    def parse(self, props: Mapping[str, Any]) -> Any:
        """The inputs of ``props`` (which may also hold outputs) as the provider's model."""
        return self.INPUTS.model_validate(_inputs_only(props, self.INPUTS))

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        fields = self.INPUTS.model_fields
        # outputs are seeded as None among the inputs: they are not inputs
        inputs = {
            k: v
            for k, v in news.items()
            if not k.startswith("__") and (k in fields or v is not None)
        }
        inputs.setdefault("version", PROVIDER_VERSION)
        known = {k: v for k, v in inputs.items() if v != UNKNOWN}
        failures: list[CheckFailure] = []
        try:
            self.INPUTS.model_validate(known)
        except ValidationError as err:
            for error in err.errors():
                field = str(error["loc"][0]) if error["loc"] else ""
                if field in inputs and inputs[field] == UNKNOWN:
                    continue
                if error["type"] == "missing" and inputs.get(field) == UNKNOWN:
                    continue
                reason = error["msg"].removeprefix("Value error, ")
                if error["type"] == "extra_forbidden":
                    reason = f"unknown input {field!r}"
                failures.append(CheckFailure(field, reason))
        return CheckResult(inputs, failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        fields = self.INPUTS.model_fields
        changed = [
            name
            for name in fields
            if name in news
            and olds.get(name) != news.get(name)
            and not _defaulted(name, olds, news)
        ]
        replaces = [name for name in changed if name in self.REPLACE_ON]
        stables = [name for name in self.REPLACE_ON if name not in changed]
        return DiffResult(
            changes=bool(changed),
            replaces=replaces,
            stables=stables,
            delete_before_replace=bool(replaces),
        )


class ApiProvider(InputsProvider):
    """A provider over one HTTP API whose credentials come from config or the environment."""

    SERVICE: ClassVar[str]
    KEY_CONFIG: ClassVar[str]  # e.g. "neonApiKey" (in the project's namespace)
    KEY_ENV: ClassVar[str]  # e.g. "NEON_API_KEY"
    URL_CONFIG: ClassVar[str]
    URL_ENV: ClassVar[str]
    DEFAULT_URL: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self._key: str | None = None
        self._url: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # never pickle credentials, even if configure() ran in this process
        return {**self.__dict__, "_key": None, "_url": None}

    def configure(self, req: ConfigureRequest) -> None:
        key = req.config.get(self.KEY_CONFIG)
        url = req.config.get(self.URL_CONFIG)
        self._key = str(key) if key else None
        self._url = str(url) if url else None

    def credentials(self) -> tuple[str, str]:
        key = self._key or os.environ.get(self.KEY_ENV)
        if not key:
            # the engine shows only the message: it carries the remedy
            raise ConfigError(
                f"no {self.SERVICE} credentials: set the secret stack config "
                f"ptool-ops:{self.KEY_CONFIG} or {self.KEY_ENV}."
            )
        url = self._url or os.environ.get(self.URL_ENV) or self.DEFAULT_URL
        return key, url


def _defaulted(name: str, olds: Mapping[str, Any], news: Mapping[str, Any]) -> bool:
    """An input absent from the old state and None in the new one is no change."""
    return name not in olds and news.get(name) is None


def outputs(inputs: ProviderInputs, **outs: Any) -> dict[str, Any]:
    """State to store: the inputs (for later diffs) plus the outputs."""
    return {**inputs.model_dump(), **outs}
