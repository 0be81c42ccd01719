"""WebRTC ingest over WHIP: a browser or encoder (OBS) pushes video to labelcast.

labelcast serves ``POST http://<bind>:<port>/whip/<stream>`` (the WHIP protocol,
RFC 9725): the publisher posts an SDP offer, gets the answer back with ``201
Created`` and a session URL to ``DELETE`` when done, then streams. The sources bound
to one address share one HTTP server (``sources/whip.py``), run by aiohttp on an
asyncio loop in a thread of its own; aiortc receives and decodes the media. Both are
imported only when a ``webrtc`` source opens (``pip install 'labelcast[webrtc]'``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from labelcast.errors import SourceError
from labelcast.redact import Redactor
from labelcast.sources.base import StatusCallback
from labelcast.sources.live import Connection, LiveSource, Picture, WatchedSourceConfigBase
from labelcast.util.http import format_bind, is_loopback, parse_host

if TYPE_CHECKING:
    import av

    # The WHIP server loads when a source opens (it is all aiohttp and aiortc).
    from labelcast.sources.whip import WhipEndpoint, WhipServer

log = logging.getLogger(__name__)


class WebRTCSourceConfig(WatchedSourceConfigBase):
    """A WHIP endpoint at ``http://<bind>:<port>/whip/<id>`` that a publisher streams to."""

    type: Literal["webrtc"] = "webrtc"
    bind: Annotated[
        str,
        Field(
            min_length=1,
            description="Address the WHIP endpoint listens on (an IPv4 or IPv6 address or a "
            "host name); 0.0.0.0 for other machines, which then needs a `token`.",
        ),
    ] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535, description="TCP port of the WHIP endpoint.")] = 8889
    token: Annotated[
        SecretStr | None,
        Field(
            validate_default=True,
            description="Publishers must send 'Authorization: Bearer <token>'; required "
            "when `bind` is not loopback. Write it as ${ENV_VAR}, never inline.",
        ),
    ] = None
    allow_origins: Annotated[
        list[str],
        Field(
            default_factory=list,
            description="Web pages (origins, e.g. https://studio.example.com) allowed to "
            "publish from a browser; requests from other pages are refused. Encoders "
            "(OBS, FFmpeg) send no origin and need none.",
        ),
    ]

    @field_validator("bind")
    @classmethod
    def _host_only(cls, bind: str) -> str:
        return parse_host(bind)

    @field_validator("token")
    @classmethod
    def _token_off_loopback(cls, token: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        bind = info.data.get("bind")
        if token is None and isinstance(bind, str) and not is_loopback(bind):
            raise ValueError(
                f"required when bind is not loopback ({bind}): anyone who reaches the "
                "endpoint could replace the stream's publisher"
            )
        if token is not None and not token.get_secret_value():
            raise ValueError("must not be empty")
        return token

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            scheme, sep, rest = origin.partition("://")
            if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
                # Not echoed in full: a typo is easier to see with the rule than the value.
                raise ValueError(
                    "each origin is scheme://host[:port] with no path, "
                    "e.g. https://studio.example.com"
                )
        return [origin.lower() for origin in origins]


class WebRTCSource(LiveSource):
    """Frames a WHIP publisher streams to ``http://<bind>:<port>/whip/<id>``.

    ``online`` while a publisher delivers frames; ``reconnecting`` while waiting for
    one (at start, after it hung up, or after a stall, when its connection is closed
    so it reconnects). There is no backoff: the publisher decides when to come back.
    """

    _open_limit_s = None

    def __init__(
        self,
        config: WebRTCSourceConfig,
        on_status: StatusCallback | None = None,
    ) -> None:
        token = config.token.get_secret_value() if config.token is not None else None
        super().__init__(config, on_status, Redactor((token,) if token else ()))
        self.url = f"http://{format_bind(config.bind, config.port)}/whip/{config.id}"
        self._bind = config.bind
        self._port = config.port
        self._token = token
        self._origins = tuple(config.allow_origins)
        self._server: WhipServer | None = None
        self._endpoint: WhipEndpoint | None = None
        self._handoff_drops = 0
        self._waiting_reason = f"waiting for a WHIP publisher at {self.url}"

    def __enter__(self) -> WebRTCSource:
        try:
            import aiohttp  # noqa: F401
            import aiortc  # noqa: F401
        except ImportError as exc:
            raise SourceError(
                f"stream {self.stream_id!r}: type webrtc needs aiortc and aiohttp "
                "(pip install 'labelcast[webrtc]')"
            ) from exc
        from labelcast.sources.whip import WhipEndpoint, WhipServer

        try:
            self._server = WhipServer.acquire(self._bind, self._port)
        except SourceError as exc:
            raise SourceError(f"stream {self.stream_id!r}: {exc}") from exc
        endpoint = WhipEndpoint(self, self._token, self._origins)
        if self._server.endpoints.setdefault(self.stream_id, endpoint) is not endpoint:
            self._server.release()
            self._server = None
            raise SourceError(f"stream {self.stream_id!r}: {self.url} is already served")
        self._endpoint = endpoint
        if self._on_status is None:
            # A check: the endpoint can listen; waiting for a publisher is not part of it.
            return self
        try:
            super().__enter__()
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, tb)
        self._release()

    def _release(self) -> None:
        server, endpoint = self._server, self._endpoint
        self._server = self._endpoint = None
        if server is not None and endpoint is not None:
            server.endpoints.pop(self.stream_id, None)
            server.run(endpoint.close_sessions())
        if server is not None:
            server.release()

    def current_connection(self) -> Connection | None:
        """Return the connection attempt frames go to now (None between attempts)."""
        return self._conn

    def deliver(self, conn: Connection, frame: av.VideoFrame) -> None:
        """Take one decoded frame from the publisher (on the server's loop; never blocks)."""
        pts = frame.time
        if pts is None:
            pts = time.monotonic() - (conn.opened_at or conn.started_at)
        index = self._take(conn, pts, frame)
        if index is None:
            return
        if not conn.offer_nowait(Picture(index, pts, time.time(), frame)):
            self._handoff_drops += 1
            if self._handoff_drops == 1 or self._handoff_drops % 100 == 0:
                log.warning(
                    "stream %r: the source thread is behind; %d received frames dropped",
                    self.stream_id,
                    self._handoff_drops,
                )

    def _target(self) -> str:
        return f"WHIP endpoint {self.url}"

    def _retry_delay(self) -> float:
        return 0.0

    def _connect(self, conn: Connection) -> None:
        server, endpoint = self._server, self._endpoint
        if server is not None and endpoint is not None:
            server.call(lambda: endpoint.attach(conn))

    def _new_connection(self, number: int) -> Connection:
        conn: Connection

        def close_sessions() -> None:
            # A stalled publisher's connection is closed so that it reconnects.
            server, endpoint = self._server, self._endpoint
            if server is not None and endpoint is not None:
                server.call(lambda: asyncio.ensure_future(endpoint.close_sessions(conn)))
            # No thread of ours feeds it: the attempt is over once asked to close.
            conn.finish(None)

        conn = Connection(number, on_close=close_sessions)
        return conn
