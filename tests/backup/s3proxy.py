"""A small HTTP proxy in front of the moto server that can lose an answer on purpose.

A request goes to moto as sent; moto's answer comes back to a hook, which may let it
through (optionally changed), act on the store first, or **drop** it: the proxy then closes
the connection without a word, after moto has done the work -- exactly what a client sees
when a connection resets or times out after S3 committed a write. botocore only reads
``HTTP/1.1``; ``Expect: 100-continue`` is answered by :mod:`http.server` itself.
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: headers that describe one hop, not the message
_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "te"}


@dataclass
class Exchange:
    """One request and moto's answer to it, as the hook sees them."""

    method: str
    path: str
    headers: dict[str, str]  # the request's, lower-case names
    status: int = 0
    reason: str = ""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def conditional(self) -> bool:
        return "if-match" in self.headers or "if-none-match" in self.headers

    def answered(self, name: str) -> str | None:
        """A header of moto's answer."""
        return next((v for k, v in self.response_headers if k.lower() == name.lower()), None)


#: the hook: True relays the (possibly changed) answer, False drops it
Hook = Callable[[Exchange], bool]


class S3Proxy:
    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.hook: Hook = lambda _exchange: True
        self.seen: list[Exchange] = []
        self.dropped: list[Exchange] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _relay(self) -> None:
                proxy._relay(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _relay(self, handler: BaseHTTPRequestHandler) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        if "chunked" in headers.get("transfer-encoding", ""):
            raise AssertionError("the proxy relays Content-Length bodies only")
        body = handler.rfile.read(int(headers.get("content-length") or 0))
        exchange = Exchange(handler.command, handler.path, headers)
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            upstream.request(
                handler.command,
                handler.path,
                body=body,
                headers={k: v for k, v in handler.headers.items() if k.lower() not in _HOP},
            )
            answer = upstream.getresponse()
            exchange.body = answer.read()
            exchange.status, exchange.reason = answer.status, answer.reason
            exchange.response_headers = [
                (k, v) for k, v in answer.getheaders() if k.lower() not in _HOP
            ]
        finally:
            upstream.close()
        with self._lock:
            self.seen.append(exchange)
            relay = self.hook(exchange)
            if not relay:
                self.dropped.append(exchange)
        if not relay:  # moto did the work; the client never hears of it
            handler.close_connection = True
            with suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)
            return
        handler.send_response_only(exchange.status, exchange.reason)
        for name, value in exchange.response_headers:
            if name.lower() != "content-length" or handler.command == "HEAD":
                handler.send_header(name, value)
        if handler.command != "HEAD":
            handler.send_header("Content-Length", str(len(exchange.body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(exchange.body)

    def drop_first(self, match: Callable[[Exchange], bool]) -> None:
        """Lose moto's answer to the first request that ``match``es, relay every other."""
        armed = [True]

        def hook(exchange: Exchange) -> bool:
            if armed[0] and match(exchange):
                armed[0] = False
                return False
            return True

        self.hook = hook

    def start(self) -> S3Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def s3_proxy(upstream: str) -> Iterator[S3Proxy]:
    proxy = S3Proxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
