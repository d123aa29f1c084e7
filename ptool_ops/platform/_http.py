"""What the platform clients share: retries with back-off, and HTTP failures mapped to
``ptool_ops.errors`` so that an operator reads one sentence and gets the right exit code.

* network errors and 5xx → ``ServiceUnavailable`` (exit 5);
* 401/403 → ``ConfigError`` (exit 3): the key or token is wrong or lacks access;
* 404 → ``NotFound`` (an ``OperationFailed``), which callers may tolerate;
* 409, and 423 still locked after the retries → ``Conflict`` (exit 6);
* 429 still limited after the retries → ``ServiceUnavailable``;
* any other 4xx → ``OperationFailed`` with the service's own message.

Safe-to-retry responses (423, 429, 502, 503, 504) are retried with exponential back-off that
honours ``Retry-After``. A network error is retried only for reads: a POST/PATCH/DELETE
that timed out may have been applied, so the caller must look before trying again.
Messages never contain request bodies or headers (they may carry secrets).
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from ptool_ops.errors import ConfigError, Conflict, OperationFailed, ServiceUnavailable

RETRY_STATUSES = frozenset({423, 429, 502, 503, 504})
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class NotFound(OperationFailed):
    """The service answered 404: the object does not exist (any more)."""

    kind = "not_found"


@dataclass(frozen=True)
class Backoff:
    """Retry schedule: ``attempts`` tries in all, waits doubling from ``initial`` to ``maximum``."""

    attempts: int = 6
    initial: float = 0.5
    maximum: float = 16.0


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once per process (loading the CA bundle costs
    ~0.1 s, and the dynamic providers build a client per call)."""
    return httpx.create_ssl_context()


class _Retryable(Exception):
    def __init__(self, response: httpx.Response | None, error: Exception | None = None) -> None:
        super().__init__("retryable")
        self.response = response
        self.error = error


def _retry_after(state: RetryCallState, fallback: Callable[[RetryCallState], float]) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.response is not None:
        header = exc.response.headers.get("Retry-After")
        if header:
            try:
                return min(max(float(header), 0.0), 60.0)
            except ValueError:
                pass
    return fallback(state)


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    service: str,
    what: str,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    idempotent: bool | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request with retries; return a 2xx response or raise a ``PtoolError``.

    ``service`` ("Neon", "Railway") and ``what`` ("create branch pr-42") make the sentence.
    ``idempotent`` (default: GET/HEAD/OPTIONS) allows resending after a network error.
    """
    resend = method.upper() in READ_METHODS if idempotent is None else idempotent
    wait = wait_exponential(multiplier=backoff.initial, max=backoff.maximum)

    def attempt() -> httpx.Response:
        try:
            response = client.request(method, url, **kwargs)
        except httpx.TransportError as err:
            if resend:
                raise _Retryable(None, err) from err
            raise ServiceUnavailable(
                f"{service} did not answer while trying to {what} ({type(err).__name__}); "
                "the change may or may not have been applied.",
                hint=f"Check the state in {service} before trying again.",
            ) from None
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(response)
        return response

    retrying = Retrying(
        stop=stop_after_attempt(max(backoff.attempts, 1)),
        wait=lambda state: _retry_after(state, wait),
        retry=retry_if_exception(lambda exc: isinstance(exc, _Retryable)),
        sleep=sleep,
        reraise=True,
    )
    try:
        response = retrying(attempt)
    except _Retryable as exc:
        if exc.response is None:
            raise ServiceUnavailable(
                f"{service} cannot be reached to {what} "
                f"({type(exc.error).__name__} after {backoff.attempts} attempts).",
                hint="Check the network and the service's status page, then try again.",
            ) from None
        response = exc.response
    raise_for_status(response, service=service, what=what)
    return response


def error_message(response: httpx.Response) -> str:
    """The service's own explanation (``message`` of a JSON error body), if any."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            return message.strip().rstrip(".")
    return ""


def raise_for_status(response: httpx.Response, *, service: str, what: str) -> None:
    status = response.status_code
    if status < 400:
        return
    detail = error_message(response)
    said = f": {detail}" if detail else ""
    if status in (401, 403):
        raise ConfigError(
            f"{service} refused to {what} (HTTP {status}){said}.",
            hint=f"Check that the {service} API key or token is set, valid, and has access.",
        )
    if status == 404:
        raise NotFound(f"{service} could not {what}: not found (HTTP 404){said}.")
    if status in (409, 423):
        raise Conflict(
            f"{service} could not {what}: busy or conflicting (HTTP {status}){said}.",
            hint="Another operation is running on it; wait for it to finish and try again.",
        )
    if status == 429 or status >= 500:
        raise ServiceUnavailable(
            f"{service} could not {what} (HTTP {status}){said}.",
            hint="The service is overloaded or failing; try again in a few minutes.",
        )
    raise OperationFailed(f"{service} rejected the request to {what} (HTTP {status}){said}.")


class HttpClient:
    """The lifecycle every platform client shares: one httpx.Client, closed once."""

    _http: httpx.Client

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
