"""A real HTTP server on 127.0.0.1 for the webhook sink's tests: records every request and
answers as scripted (500, 400, 429 with Retry-After, slow answers), with HTTP/1.1 keep-alive.

It can be stopped (every open connection is cut, the port refuses) and started again on the
same port, to play an endpoint that goes away and comes back.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from helpers import free_port


@dataclass(frozen=True)
class Answer:
    """How the server answers one request: a status, after ``delay_s``, with extra headers."""

    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """One request the server read, the answer it gave, when it arrived, and from where."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    at: float
    client: tuple[str, int]

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[dict[str, Any]]:
        """The events of the body: one object, or each item of an array."""
        value = self.json()
        return value if isinstance(value, list) else [value]


class WebhookServer:
    """``ThreadingHTTPServer`` on a loopback port; ``script`` answers first, then ``default``."""

    def __init__(self, port: int | None = None, *, tls: tuple[Path, Path] | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls  # (certificate, key): serve https
        self.default = Answer()
        self._script: deque[Answer] = deque()
        self._requests: list[Request] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order (then ``default`` again)."""
        with self._lock:
            self._script.extend(answers)

    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def delivered(self) -> list[dict[str, Any]]:
        """The events of every request answered 2xx, in arrival order, repeats included."""
        return [e for r in self.requests() if 200 <= r.status < 300 for e in r.events()]

    def start(self) -> WebhookServer:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            # The handshake runs on the request's thread, not the accepting one.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open (keep-alive) connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _next_answer(self) -> Answer:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the sink's client uses it
            # Headers and body go out in two writes: without this the body waits for the
            # client's delayed ACK (40 ms a request on loopback).
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                if isinstance(self.connection, ssl.SSLSocket):
                    # A client that does not trust us hangs up: reading fails next.
                    with contextlib.suppress(OSError):
                        self.connection.do_handshake()
                with owner._lock:
                    owner._connections.add(self.connection)

            def do_POST(self) -> None:
                arrived = time.monotonic()
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                answer = owner._next_answer()
                if answer.delay_s:
                    time.sleep(answer.delay_s)
                owner._record(
                    Request(
                        self.path,
                        dict(self.headers.items()),
                        body,
                        answer.status,
                        arrived,
                        self.client_address,
                    )
                )
                text = b"ok\n"
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:
                    self.close_connection = True  # the client gave up (a timeout)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the tests read the recorded requests

        return Handler
