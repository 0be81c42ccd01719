"""The local HTTP endpoint: ``/healthz``, ``/readyz``, ``/metrics`` and ``POST /reload``."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from labelcast.errors import ConfigError

log = logging.getLogger(__name__)


class ServerConfig(BaseModel):
    """The operations endpoint (health, readiness, Prometheus metrics, reload)."""

    model_config = ConfigDict(extra="forbid")

    bind: Annotated[
        str,
        Field(
            pattern=r"^[^:\s]+:\d{1,5}$",
            description="host:port to listen on; keep it on 127.0.0.1 unless a firewall "
            "or proxy protects it (reload is unauthenticated).",
        ),
    ] = "127.0.0.1:9090"


@dataclass(frozen=True)
class Endpoints:
    """What the server asks the daemon: each returns (ok, JSON-able details)."""

    health: Callable[[], tuple[bool, dict[str, Any]]]
    ready: Callable[[], tuple[bool, dict[str, Any]]]
    metrics: Callable[[], tuple[bytes, str]]
    reload: Callable[[], tuple[bool, dict[str, Any]]]


class OpsServer:
    """Serves the endpoints on a thread of its own until ``close()``."""

    def __init__(self, config: ServerConfig, endpoints: Endpoints) -> None:
        host, port = config.bind.rsplit(":", 1)
        handler = _handler_for(endpoints)
        try:
            self._server = ThreadingHTTPServer((host, int(port)), handler)
        except OSError as exc:
            raise ConfigError(f"server.bind: cannot listen on {config.bind} ({exc})") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="http-server",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound (useful with port 0)."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start serving."""
        self._thread.start()
        log.info("operations endpoint on http://%s:%d", *self.address)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _handler_for(endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "labelcast"

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._json(*endpoints.health())
            elif self.path == "/readyz":
                self._json(*endpoints.ready())
            elif self.path == "/metrics":
                body, content_type = endpoints.metrics()
                self._send(200, body, content_type)
            else:
                self._json(False, {"error": f"no such endpoint: {self.path}"}, status=404)

        def do_POST(self) -> None:
            if self.path == "/reload":
                self._json(*endpoints.reload())
            else:
                self._json(False, {"error": f"no such endpoint: {self.path}"}, status=404)

        def _json(self, ok: bool, details: dict[str, Any], status: int | None = None) -> None:
            body = json.dumps({"ok": ok, **details}).encode()
            self._send(status or (200 if ok else 503), body, "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler
