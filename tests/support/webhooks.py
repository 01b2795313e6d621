"""A webhook receiver on loopback: records every POST and answers what the test says, when it says.

    def test_x(webhook_server: WebhookServer) -> None:
        webhook_server.respond("/pre", status=500)            # or delay=10.0 to outlast a timeout
        url = webhook_server.url("/pre")                      # http://127.0.0.1:PORT/pre, into the spec
        ...
        [call] = webhook_server.wait_for_calls("/pre", count=1, timeout=30)
        assert call.json["name"] == "eval-suite"
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.support.loopback import LoopbackServer


@dataclass(frozen=True)
class WebhookCall:
    """One POST as received; ``json`` is None when the body is not JSON."""

    path: str
    body: bytes
    headers: dict[str, str]  # names lowercased
    json: Any
    received_at: float  # time.monotonic()
    query: str = ""


@dataclass
class Response:
    status: int = 200
    delay: float = 0.0
    body: Any = field(default_factory=dict)  # sent as JSON


class WebhookServer(LoopbackServer):
    """Threaded HTTP server on 127.0.0.1 (free port). Every POST is recorded (path without the query
    string) and answered with the path's :class:`Response` (default: 200, no delay, ``{}``)."""

    thread_name = "webhooks"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._calls: list[WebhookCall] = []
        self._responses: dict[str, Response] = {}
        self.default = Response()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urllib.parse.urlsplit(self.path)
                try:
                    parsed: Any = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                call = WebhookCall(parts.path, body, {k.lower(): v for k, v in self.headers.items()}, parsed,
                                   time.monotonic(), parts.query)
                response = server._record(call)
                if response.delay > 0:
                    time.sleep(response.delay)
                self._answer(response.status, json.dumps(response.body).encode())

            def do_GET(self) -> None:
                self._answer(405, b'{"error": "POST only"}')

            def _answer(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (its timeout): nothing to answer
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.address + ("" if path.startswith("/") else "/") + path

    def respond(self, path: str, status: int = 200, delay: float = 0.0, body: Any = None) -> None:
        """How POSTs to ``path`` are answered from now on."""
        with self._lock:
            self._responses[path] = Response(status, delay, {} if body is None else body)

    def _record(self, call: WebhookCall) -> Response:
        with self._changed:
            self._calls.append(call)
            self._changed.notify_all()
            return self._responses.get(call.path, self.default)

    def calls(self, path: str | None = None) -> list[WebhookCall]:
        """The POSTs received so far (to ``path``, or all), oldest first."""
        with self._lock:
            return [c for c in self._calls if path is None or c.path == path]

    def wait_for_calls(self, path: str | None = None, count: int = 1, timeout: float = 30.0) -> list[WebhookCall]:
        """Block until at least ``count`` POSTs (to ``path``, or any) arrived; return them all."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                calls = [c for c in self._calls if path is None or c.path == path]
                if len(calls) >= count:
                    return calls
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {count} POST(s) to "
                                         f"{path or 'any path'}; got {[(c.path, c.json) for c in self._calls]}")
                self._changed.wait(remaining)

    def clear(self) -> None:
        """Forget the recorded calls and the per-path answers."""
        with self._lock:
            self._calls.clear()
            self._responses.clear()


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    """A fresh webhook receiver per test."""
    with WebhookServer() as server:
        yield server
