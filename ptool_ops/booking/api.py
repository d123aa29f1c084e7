"""Client of the booking API's operations contract (``openapi.yaml``), over httpx.

Every call has a timeout; idempotent calls retry with exponential back-off on connection
errors and 503 (a bounded number of times, honouring ``Retry-After`` up to a cap); writes
retry only when the request never left (connect errors). Every failure is one sentence that
names the method, the URL and the status — never a token.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import SecretStr
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from ptool_ops.errors import ManualActionRequired, OperationFailed, ServiceUnavailable

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_ATTEMPTS = 4
MAX_RETRY_AFTER_S = 5.0
_BACKOFF = wait_exponential_jitter(multiplier=0.1, max=2.0)


class ApiError(ServiceUnavailable):
    """The API answered, but not as the contract promises (status in ``status``)."""

    def __init__(self, message: str, status: int | None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class _Retryable(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(response.status_code)
        self.response = response


@dataclass
class Readiness:
    ready: bool
    reason: str | None
    role: str | None
    latency_ms: float | None


@dataclass
class SmokeStep:
    name: str
    ok: bool
    duration_ms: float
    detail: str = ""
    unreachable: bool = False  # the API could not be reached at all (not an HTTP answer)


@dataclass
class SmokeReport:
    url: str
    steps: list[SmokeStep] = field(default_factory=list)
    wrote: bool = False

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def exit_code(self) -> int:
        """0; 5 when the API could not be reached; 1 when it answered wrong."""
        if self.ok:
            return 0
        return 5 if any(step.unreachable for step in self.steps) else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "ok": self.ok,
            "wrote": self.wrote,
            "steps": [vars(step) for step in self.steps],
        }


def _wait_for(state: RetryCallState) -> float:
    """Exponential back-off with jitter, or the server's Retry-After (capped)."""
    outcome = state.outcome
    if outcome is not None and isinstance(outcome.exception(), _Retryable):
        error = outcome.exception()
        assert isinstance(error, _Retryable)
        after = error.response.headers.get("retry-after", "")
        if after.isdigit():
            return min(float(after), MAX_RETRY_AFTER_S)
    return float(_BACKOFF(state))


class BookingApi:
    def __init__(
        self,
        base_url: str,
        ops_token: SecretStr | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._ops_token = ops_token
        self._attempts = attempts
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    @property
    def has_ops_token(self) -> bool:
        return self._ops_token is not None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BookingApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        token: SecretStr | str | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
        expect: tuple[int, ...] = (200,),
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send one request. GET and PUT retry on 503 and transport errors; POST only when
        the request never left (a 503 to a write is an answer: maintenance, overload)."""
        url = f"{self.base_url}{path}"
        if idempotent is None:
            idempotent = method in {"GET", "PUT", "HEAD", "DELETE"}
        headers = {}
        if token is not None:
            raw = token.get_secret_value() if isinstance(token, SecretStr) else token
            headers["Authorization"] = f"Bearer {raw}"

        def retryable(error: BaseException) -> bool:
            if isinstance(error, _Retryable):
                return idempotent
            if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
                return True  # the request never reached the server
            return idempotent and isinstance(error, httpx.TransportError)

        @retry(
            retry=retry_if_exception(retryable),
            stop=stop_after_attempt(self._attempts),
            wait=_wait_for,
            reraise=True,
        )
        def send() -> httpx.Response:
            response = self._client.request(method, path, headers=headers, json=json, params=params)
            if response.status_code == 503 and 503 not in expect:
                raise _Retryable(response)
            return response

        try:
            response = send()
        except _Retryable as err:
            response = err.response
        except httpx.TimeoutException:
            raise ServiceUnavailable(
                f"{method} {url} timed out after {self._attempts} attempt(s).",
                hint="Check that the booking API is up and reachable.",
            ) from None
        except httpx.TransportError as err:
            reason = _reason(err)
            raise ServiceUnavailable(
                f"{method} {url} failed: {reason}.",
                hint="Check that the booking API is running at that address "
                "('ptool-ops local up' starts the local one).",
            ) from None
        if response.status_code not in expect:
            detail = _problem_detail(response)
            raise ApiError(
                f"{method} {url} answered {response.status_code}"
                + (f": {detail}" if detail else "")
                + ".",
                response.status_code,
                hint=_hint_for(response.status_code),
            )
        return response

    def _body(self, method: str, path: str, response: httpx.Response, *fields: str) -> Any:
        """The JSON answer, holding ``fields`` as the operations contract promises; an
        answer that does not is one sentence, not a KeyError."""
        try:
            body = response.json()
        except ValueError:
            body = None
        missing = [f for f in fields if not isinstance(body, dict) or f not in body]
        if body is None or missing:
            what = f"without {', '.join(missing)}" if isinstance(body, dict) else "no JSON object"
            raise OperationFailed(
                f"{method} {self.base_url}{path} answered {what}: the API does not follow the"
                " operations contract (openapi.yaml).",
                hint="Check which release the API runs; ptool-ops and the API disagree.",
            )
        return body

    # --- health --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self._body(
            "GET", "/health", self._request("GET", "/health"), "status"
        )
        return body

    def ready(self) -> Readiness:
        """Readiness (needs no token). A 503 without the contract's JSON -- a proxy's error
        page while the API is down -- is not ready; a 200 without it is
        :class:`OperationFailed`, as any answer that breaks the contract."""
        response = self._request("GET", "/health/ready", expect=(200, 503))
        try:
            body = self._body("GET", "/health/ready", response, "status")
        except OperationFailed:
            if response.status_code == 200:
                raise
            return Readiness(False, "it answered 503 without a readiness document", None, None)
        checks = body.get("checks")
        checks = checks if isinstance(checks, dict) else {}
        return Readiness(
            ready=response.status_code == 200 and body.get("status") == "ready",
            reason=body.get("reason"),
            role=checks.get("database_role"),
            latency_ms=checks.get("latency_ms"),
        )

    def wait_ready(self, timeout: float, *, interval: float = 0.5) -> Readiness:
        """Poll readiness until it holds or ``timeout`` passes (then raise, with the reason:
        the last answer's, or why there was none)."""
        deadline = time.monotonic() + timeout
        last: Readiness | None = None
        failure = "the API did not answer"
        while True:
            try:
                last = self.ready()
                if last.ready:
                    return last
            except (ServiceUnavailable, OperationFailed) as err:
                last, failure = None, err.message.rstrip(".")
            if time.monotonic() >= deadline:
                reason = (last.reason or "not ready") if last else failure
                raise ServiceUnavailable(
                    f"{self.base_url} was not ready within {timeout:g} s: {reason}.",
                    hint="Check the API's logs and its database credentials.",
                )
            time.sleep(interval)

    def version(self) -> dict[str, Any]:
        body: dict[str, Any] = self._body(
            "GET",
            "/version",
            self._request("GET", "/version"),
            "version",
            "build",
            "schema_version_expected",
        )
        return body

    # --- maintenance ---------------------------------------------------------------------

    def maintenance_state(self) -> dict[str, Any]:
        response = self._request("GET", "/ops/maintenance", token=self._require_ops())
        body: dict[str, Any] = self._body("GET", "/ops/maintenance", response, "enabled")
        return body

    def set_maintenance(self, enabled: bool, reason: str | None = None) -> dict[str, Any]:
        response = self._request(
            "PUT",
            "/ops/maintenance",
            token=self._require_ops(),
            json={"enabled": enabled, "reason": reason},
        )
        body: dict[str, Any] = self._body("PUT", "/ops/maintenance", response, "enabled")
        return body

    @contextmanager
    def maintenance(self, reason: str) -> Iterator[None]:
        """Writes paused for the block; turned off again however the block ends."""
        was_on = bool(self.maintenance_state()["enabled"])
        self.set_maintenance(True, reason)
        try:
            yield
        finally:
            if not was_on:
                try:
                    self.set_maintenance(False)
                except ServiceUnavailable as err:
                    raise ManualActionRequired(
                        f"maintenance mode is still ON at {self.base_url}: {err.message}",
                        hint="Turn it off with 'ptool-ops api maintenance off' once the API "
                        "answers.",
                    ) from None

    # --- bookings ------------------------------------------------------------------------

    def smoke_fixture(self) -> dict[str, Any]:
        body: dict[str, Any] = self._request(
            "POST", "/ops/smoke-fixture", token=self._require_ops()
        ).json()
        return body

    def mint_tenant_token(self, tenant_id: str) -> str:
        body = self._request(
            "POST", f"/ops/tenants/{tenant_id}/tokens", token=self._require_ops(), expect=(201,)
        ).json()
        return str(body["token"])

    def list_bookings(
        self, tenant_id: str, token: str, *, limit: int = 50, status: str | None = None
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        body = self._request(
            "GET", f"/tenants/{tenant_id}/bookings", token=token, params=params
        ).json()
        items: list[dict[str, Any]] = body["items"]
        return items

    def create_booking(
        self,
        tenant_id: str,
        token: str,
        *,
        artist_id: str,
        project_id: str,
        starts_at: datetime,
        ends_at: datetime,
        status: str = "confirmed",
        note: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = self._request(
            "POST",
            f"/tenants/{tenant_id}/bookings",
            token=token,
            json={
                "artist_id": artist_id,
                "project_id": project_id,
                "starts_at": starts_at.isoformat(),
                "ends_at": ends_at.isoformat(),
                "status": status,
                "note": note,
            },
            expect=(201,),
        ).json()
        return body

    def cancel_booking(self, tenant_id: str, token: str, booking_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self._request(
            "POST",
            f"/tenants/{tenant_id}/bookings/{booking_id}/cancel",
            token=token,
        ).json()
        return body

    # --- smoke check ---------------------------------------------------------------------

    def smoke(self, *, write: bool) -> SmokeReport:
        """Liveness, readiness, version, a read — and with ``write`` a create + cancel.

        Never raises for a failed step: the report says which step failed and why.
        """
        report = SmokeReport(self.base_url)
        fixture: dict[str, Any] = {}

        def step(name: str, action: Callable[[], str]) -> bool:
            start = time.perf_counter()
            unreachable = False
            try:
                detail = action()
                ok = True
            except (ServiceUnavailable, OperationFailed) as err:
                detail, ok = err.message, False
                unreachable = type(err) is ServiceUnavailable  # no answer, not a bad one
            report.steps.append(
                SmokeStep(
                    name, ok, round((time.perf_counter() - start) * 1000, 1), detail, unreachable
                )
            )
            return ok

        def readiness() -> str:
            state = self.ready()
            if not state.ready:
                raise OperationFailed(f"not ready: {state.reason}")
            return f"ready as {state.role}"

        def read() -> str:
            fixture.update(self.smoke_fixture())
            items = self.list_bookings(fixture["tenant_id"], fixture["tenant_token"], limit=5)
            return f"listed {len(items)} booking(s) of the smoke tenant"

        def create_and_cancel() -> str:
            start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3650)
            start += timedelta(minutes=int(time.time() * 1000) % 500_000)
            booking = self.create_booking(
                fixture["tenant_id"],
                fixture["tenant_token"],
                artist_id=fixture["artist_id"],
                project_id=fixture["project_id"],
                starts_at=start,
                ends_at=start + timedelta(minutes=1),
                note="ptool-ops smoke check",
            )
            cancelled = self.cancel_booking(
                fixture["tenant_id"], fixture["tenant_token"], booking["id"]
            )
            if cancelled["status"] != "cancelled":
                raise OperationFailed(f"booking {booking['id']} was not cancelled")
            return f"created and cancelled booking {booking['id']}"

        if not step("health", lambda: str(self.health()["status"])):
            return report
        step("ready", readiness)
        step("version", lambda: _describe_version(self.version()))
        if write:
            report.wrote = True
            if step("read", read):
                step("create+cancel", create_and_cancel)
        else:
            step(
                "read",
                lambda: (
                    "maintenance mode " + ("on" if self.maintenance_state()["enabled"] else "off")
                ),
            )
        return report

    def _require_ops(self) -> SecretStr:
        if self._ops_token is None:
            from ptool_ops.errors import ConfigError

            raise ConfigError(
                f"no ops token for {self.base_url}.",
                hint="Set api_token (PTOOL_API_TOKEN) for this environment.",
            )
        return self._ops_token


def _describe_version(info: dict[str, Any]) -> str:
    return f"{info['version']} ({info['build']}), schema {info.get('schema_version')}"


def _reason(err: httpx.TransportError) -> str:
    text = str(err) or type(err).__name__
    if "Connection refused" in text or "All connection attempts failed" in text:
        return "connection refused"
    return text.splitlines()[0].rstrip(".")


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or "")
    return ""


def _hint_for(status: int) -> str | None:
    return {
        401: "Check the environment's api_token.",
        403: "The token is not allowed to do this.",
        503: "The API is unavailable or in maintenance mode; try again later.",
    }.get(status)
