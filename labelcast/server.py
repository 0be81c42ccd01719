"""The local HTTP endpoint: ``/healthz``, ``/readyz``, ``/metrics`` and ``POST /reload``.

``POST /reload`` changes what the daemon does, so it is guarded against other web
pages open in the operator's browser (CSRF) and against DNS rebinding: it needs the
``X-Labelcast-Reload`` header (a page cannot send a custom header to another origin
without a CORS preflight, which this server never grants), is refused when the
browser says the request is cross-site (``Origin``, ``Sec-Fetch-Site``) or names a
host that is not this server's, and needs ``Authorization: Bearer <server.token>``
when a token is set.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from labelcast.errors import ConfigError
from labelcast.util.http import (
    BindAddress,
    BoundedHTTPServer,
    BoundedRequestHandler,
    cross_site_refusal,
    format_bind,
    is_loopback,
    parse_bind,
)

log = logging.getLogger(__name__)

# The header ``POST /reload`` needs (any non-empty value); ``labelcast reload`` sends it.
RELOAD_HEADER = "X-Labelcast-Reload"


class ServerConfig(BaseModel):
    """The operations endpoint (health, readiness, Prometheus metrics, reload)."""

    model_config = ConfigDict(extra="forbid")

    bind: Annotated[
        BindAddress,
        Field(
            description="host:port to listen on ([::1]:9090 for IPv6; port 0 picks a free "
            "one); keep it on 127.0.0.1 unless a firewall or proxy protects it.",
        ),
    ] = "127.0.0.1:9090"
    token: Annotated[
        SecretStr | None,
        Field(
            description="If set, POST /reload also needs 'Authorization: Bearer <token>' "
            "(labelcast reload sends it); write it as ${ENV_VAR}, never inline.",
        ),
    ] = None


@dataclass(frozen=True)
class Endpoints:
    """What the server asks the daemon: each returns (ok, JSON-able details)."""

    health: Callable[[], tuple[bool, dict[str, Any]]]
    ready: Callable[[], tuple[bool, dict[str, Any]]]
    metrics: Callable[[], tuple[bytes, str]]
    reload: Callable[[], tuple[bool, dict[str, Any]]]


def reload_request(config: ServerConfig) -> urllib.request.Request:
    """Build the ``POST /reload`` request ``labelcast reload`` sends to ``config``'s server."""
    host, port = parse_bind(config.bind, "server.bind")
    # A server listening on every address is reached on loopback.
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    headers = {RELOAD_HEADER: "1"}
    if config.token is not None:
        headers["Authorization"] = f"Bearer {config.token.get_secret_value()}"
    url = f"http://{format_bind(host, port)}/reload"
    return urllib.request.Request(url, method="POST", headers=headers)


class OpsServer:
    """Serves the endpoints on a thread of its own until ``close()``."""

    def __init__(self, config: ServerConfig, endpoints: Endpoints) -> None:
        try:
            host, port = parse_bind(config.bind, "server.bind")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        token = config.token.get_secret_value() if config.token is not None else None
        handler = _handler_for(endpoints, _ReloadGuard(host, token))
        try:
            self._server = BoundedHTTPServer((host, port), handler, thread_name="http-client")
        except OSError as exc:
            raise ConfigError(f"server.bind: cannot listen on {config.bind} ({exc})") from exc
        if token is None and not is_loopback(host):
            log.warning(
                "server.bind %s is not loopback and server.token is not set: whoever reaches "
                "it can reload the pipeline",
                config.bind,
            )
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
        log.info("operations endpoint on http://%s", format_bind(*self.address))

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@dataclass(frozen=True)
class _ReloadGuard:
    """Decides whether a ``POST /reload`` may go ahead."""

    bind_host: str
    token: str | None

    def refusal(self, headers: Any) -> tuple[int, str] | None:
        """(status, why) when the request must be refused, None when it may go ahead."""
        if (why := cross_site_refusal(headers, self.bind_host)) is not None:
            return 403, why
        if not headers.get(RELOAD_HEADER):
            return 403, f"POST /reload needs the header {RELOAD_HEADER}: 1"
        if self.token is not None:
            scheme, _, credentials = headers.get("Authorization", "").partition(" ")
            # compare_digest: the time taken must not tell how much of a guess was right.
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                credentials.strip().encode(), self.token.encode()
            ):
                return 401, "POST /reload needs 'Authorization: Bearer <server.token>'"
        return None


def _handler_for(endpoints: Endpoints, guard: _ReloadGuard) -> type[BoundedRequestHandler]:
    class Handler(BoundedRequestHandler):
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
            if self.path != "/reload":
                self._json(False, {"error": f"no such endpoint: {self.path}"}, status=404)
                return
            refusal = guard.refusal(self.headers)
            if refusal is not None:
                status, why = refusal
                log.warning("refused POST /reload from %s: %s", self.client_address[0], why)
                self._json(False, {"error": why}, status=status)
                return
            self._json(*endpoints.reload())

        def _json(self, ok: bool, details: dict[str, Any], status: int | None = None) -> None:
            body = json.dumps({"ok": ok, **details}).encode()
            self._send(status or (200 if ok else 503), body, "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("http: " + format, *args)

    return Handler
