"""WebRTC ingest over WHIP: a browser or encoder (OBS) pushes video to labelcast.

labelcast serves ``POST http://<bind>:<port>/whip/<stream>`` (the WHIP protocol,
RFC 9725): the publisher posts an SDP offer, gets the answer back with ``201
Created`` and a session URL to ``DELETE`` when done, then streams. The sources bound
to one address share one HTTP server, run by aiohttp on an asyncio loop in a thread
of its own; aiortc receives and decodes the media. Both are imported only when a
``webrtc`` source opens (``pip install 'labelcast[webrtc]'``).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated, Any, ClassVar, Literal

import av
from pydantic import Field, SecretStr, ValidationInfo, field_validator

from labelcast.errors import SourceError
from labelcast.pipeline.frames import StreamState
from labelcast.redact import Redactor
from labelcast.sources.live import Connection, LiveSource, Picture, WatchedSourceConfigBase
from labelcast.util.http import format_bind, is_loopback

log = logging.getLogger(__name__)

# Longest SDP offer accepted; real offers are a few kilobytes.
_MAX_OFFER_BYTES = 256 * 1024
# Longest wait for the HTTP server to start, and for it (or a session) to close: short,
# because the pipeline promises to stop within seconds of SIGTERM.
_SERVER_TIMEOUT_S = 10.0
_CLOSE_TIMEOUT_S = 3.0
# Browsers send an Origin with every cross-origin request (and with POST/DELETE); only the
# pages a source lists in ``allow_origins`` may publish, so that any page open in the
# operator's browser cannot replace a stream's publisher. Encoders (OBS, FFmpeg) send no
# Origin. Allowed pages may read the session URL.
_CORS = {
    "Access-Control-Allow-Methods": "POST, DELETE, PATCH, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
    "Access-Control-Expose-Headers": "Location, Link",
}
_VARY = {"Vary": "Origin"}


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
        host = bind.removeprefix("[").removesuffix("]")
        if any(c.isspace() for c in host) or "/" in host:
            raise ValueError("expected an address or host name, e.g. 127.0.0.1 or ::1")
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(
                    "expected an address or host name without a port (the port is `port`)"
                ) from None
        return host

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


@dataclass(eq=False)
class _Session:
    """One publisher's peer connection, feeding the connection attempt it belongs to."""

    id: str
    pc: Any
    conn: Connection | None
    tasks: set[asyncio.Task[None]]


class _WhipEndpoint:
    """The ``/whip/<stream>`` resource of one source; its methods run on the server's loop."""

    def __init__(
        self, source: WebRTCSource, token: str | None, origins: tuple[str, ...] = ()
    ) -> None:
        self.source = source
        self.stream = source.stream_id
        self._token = token.encode() if token else None
        self._origins = frozenset(origins)
        self.sessions: dict[str, _Session] = {}

    def cors(self, origin: str | None) -> dict[str, str] | None:
        """Return the CORS headers for a request from ``origin``; None if it is refused."""
        if origin is None:
            return {**_CORS, **_VARY}
        if origin.lower() not in self._origins:
            return None
        return {**_CORS, **_VARY, "Access-Control-Allow-Origin": origin}

    def authorized(self, header: str | None) -> bool:
        """Whether the request's Authorization header carries the token (if one is needed)."""
        if self._token is None:
            return True
        scheme, _, credentials = (header or "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guess was right.
        return scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), self._token
        )

    def attach(self, conn: Connection) -> None:
        """Start feeding a new connection attempt from a publisher already streaming."""
        for session in self.sessions.values():
            session.conn = conn
            conn.mark_open()

    async def close_sessions(self, conn: Connection | None = None) -> None:
        """Close the sessions feeding ``conn`` (all of them if None)."""
        for session in list(self.sessions.values()):
            if conn is None or session.conn is conn:
                await self.end(session, None)

    async def end(self, session: _Session, reason: str | None) -> None:
        """Forget a session; if it was the last feeding its attempt, that attempt ends."""
        if self.sessions.pop(session.id, None) is None:
            return
        for task in session.tasks:
            task.cancel()
        await session.pc.close()
        conn = session.conn
        last = conn is not None and not any(s.conn is conn for s in self.sessions.values())
        if reason is not None and conn is not None and last:
            conn.finish(reason)
        log.debug("stream %r: WHIP session %s ended (%s)", self.stream, session.id, reason)

    async def consume(self, track: Any, session: _Session | None) -> None:
        """Receive a track's decoded frames until it ends; pass video on (``session``)."""
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if session is not None and session.conn is not None:
                self.source.deliver(session.conn, frame)


class _WhipServer:
    """One HTTP server per bind address, on an asyncio loop in a thread of its own."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _running: ClassVar[dict[tuple[str, int], _WhipServer]] = {}

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.endpoints: dict[str, _WhipEndpoint] = {}
        self.loop = asyncio.new_event_loop()
        self._users = 0
        self._runner: Any = None
        self._thread = threading.Thread(
            target=self.loop.run_forever, name=f"whip:{host}:{port}", daemon=True
        )

    @classmethod
    def acquire(cls, host: str, port: int) -> _WhipServer:
        """Return the running server for this address, starting it if needed."""
        with cls._lock:
            server = cls._running.get((host, port))
            if server is None:
                server = cls(host, port)
                server._start()
                cls._running[(host, port)] = server
            server._users += 1
            return server

    def release(self) -> None:
        """One user fewer; the last one stops the server."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            del self._running[(self.host, self.port)]
        self._shutdown()

    def call(self, function: Callable[[], object]) -> None:
        """Run ``function`` on the server's loop soon (from any thread; returns at once)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(function)

    def run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` on the server's loop and wait for it (bounded)."""
        if self.loop.is_closed():
            coroutine.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(_CLOSE_TIMEOUT_S)
        except Exception:
            log.warning("WHIP endpoint on %s:%d: closing a session failed", self.host, self.port)

    def _start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._serve(), self.loop)
        try:
            future.result(_SERVER_TIMEOUT_S)
        except OSError as exc:
            self._stop_loop()
            address = format_bind(self.host, self.port)
            raise SourceError(
                f"WebRTC: cannot listen on http://{address} ({exc.strerror or exc})"
            ) from exc
        except Exception:
            self._stop_loop()
            raise
        log.info(
            "WHIP endpoint listening on http://%s/whip/<stream>", format_bind(self.host, self.port)
        )

    async def _serve(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=_MAX_OFFER_BYTES)
        app.router.add_route("OPTIONS", "/whip/{stream}", self._preflight)
        app.router.add_post("/whip/{stream}", self._offer)
        app.router.add_route("OPTIONS", "/whip/{stream}/{session}", self._preflight)
        app.router.add_delete("/whip/{stream}/{session}", self._delete)
        app.router.add_patch("/whip/{stream}/{session}", self._patch)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    def _shutdown(self) -> None:
        async def close() -> None:
            for endpoint in list(self.endpoints.values()):
                await endpoint.close_sessions()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(_CLOSE_TIMEOUT_S)
        except Exception:
            log.warning("WHIP endpoint on %s:%d did not close cleanly", self.host, self.port)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()

    # HTTP handlers (on the loop).

    def _endpoint(self, request: Any) -> _WhipEndpoint | None:
        return self.endpoints.get(request.match_info["stream"])

    def _admit(self, request: Any) -> tuple[_WhipEndpoint | None, dict[str, str], Any]:
        """Return the request's endpoint, its CORS headers, and a response if refused."""
        from aiohttp import web

        endpoint = self._endpoint(request)
        if endpoint is None:
            return None, _VARY, web.Response(status=404, text="no such stream\n", headers=_VARY)
        origin = request.headers.get("Origin")
        cors = endpoint.cors(origin)
        if cors is None:
            log.warning(
                "stream %r: refused a WHIP request from %s: origin %s is not in allow_origins",
                endpoint.stream,
                request.remote,
                origin,
            )
            refusal = web.Response(status=403, text="origin not allowed\n", headers=_VARY)
            return endpoint, _VARY, refusal
        return endpoint, cors, None

    async def _preflight(self, request: Any) -> Any:
        from aiohttp import web

        _, cors, refusal = self._admit(request)
        return refusal or web.Response(status=204, headers=cors)

    async def _offer(self, request: Any) -> Any:
        from aiohttp import web

        endpoint, cors, refusal = self._admit(request)
        if refusal is not None or endpoint is None:
            return refusal
        if not endpoint.authorized(request.headers.get("Authorization")):
            log.warning(
                "stream %r: refused a WHIP offer from %s (missing or wrong bearer token)",
                endpoint.stream,
                request.remote,
            )
            return web.Response(
                status=401, text="bearer token required\n", headers=_unauthorized(cors)
            )
        if request.content_type != "application/sdp":
            return web.Response(
                status=415, text="the offer must be application/sdp\n", headers=cors
            )
        offer = await request.text()
        try:
            session = await self._answer(endpoint, offer)
        except ValueError as exc:
            return web.Response(status=400, text=f"unusable SDP offer: {exc}\n", headers=cors)
        log.debug("stream %r: WHIP session %s from %s", endpoint.stream, session.id, request.remote)
        return web.Response(
            status=201,
            text=session.pc.localDescription.sdp,
            content_type="application/sdp",
            headers={**cors, "Location": f"/whip/{endpoint.stream}/{session.id}"},
        )

    async def _answer(self, endpoint: _WhipEndpoint, offer: str) -> _Session:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        session = _Session(uuid.uuid4().hex, pc, endpoint.source.current_connection(), set())

        @pc.on("track")
        def on_track(track: Any) -> None:
            # Audio (OBS sends Opus) is read and dropped: aiortc queues whatever a
            # track receives without bound until someone reads it.
            task = asyncio.ensure_future(
                endpoint.consume(track, session if track.kind == "video" else None)
            )
            session.tasks.add(task)
            task.add_done_callback(session.tasks.discard)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await endpoint.end(session, f"the WHIP publisher's connection {pc.connectionState}")

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            if not any(t.kind == "video" for t in pc.getTransceivers()):
                raise ValueError("it offers no video")
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await pc.close()
            raise ValueError(str(exc) or type(exc).__name__) from exc
        # One publisher per stream: a new one (an encoder that restarted) replaces the old.
        for old in list(endpoint.sessions.values()):
            await endpoint.end(old, None)
        endpoint.sessions[session.id] = session
        if session.conn is not None:
            session.conn.mark_open()
        return session

    async def _delete(self, request: Any) -> Any:
        from aiohttp import web

        endpoint, cors, refusal = self._admit(request)
        if refusal is not None or endpoint is None:
            return refusal
        if not endpoint.authorized(request.headers.get("Authorization")):
            return web.Response(status=401, headers=_unauthorized(cors))
        session = endpoint.sessions.get(request.match_info["session"])
        if session is None:
            return web.Response(status=404, headers=cors)
        await endpoint.end(session, "the WHIP publisher hung up")
        return web.Response(status=200, headers=cors)

    async def _patch(self, request: Any) -> Any:
        from aiohttp import web

        _, cors, refusal = self._admit(request)
        # No trickle ICE: the answer already holds every candidate (RFC 9725 allows 405).
        return refusal or web.Response(status=405, headers={**cors, "Allow": "DELETE"})


def _unauthorized(cors: dict[str, str]) -> dict[str, str]:
    return {**cors, "WWW-Authenticate": 'Bearer realm="labelcast"'}


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
        on_status: Callable[[StreamState, str | None], None] | None = None,
    ) -> None:
        token = config.token.get_secret_value() if config.token is not None else None
        super().__init__(config, on_status, Redactor((token,) if token else ()))
        self.url = f"http://{format_bind(config.bind, config.port)}/whip/{config.id}"
        self._bind = config.bind
        self._port = config.port
        self._token = token
        self._origins = tuple(config.allow_origins)
        self._server: _WhipServer | None = None
        self._endpoint: _WhipEndpoint | None = None
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
        try:
            self._server = _WhipServer.acquire(self._bind, self._port)
        except SourceError as exc:
            raise SourceError(f"stream {self.stream_id!r}: {exc}") from exc
        endpoint = _WhipEndpoint(self, self._token, self._origins)
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
