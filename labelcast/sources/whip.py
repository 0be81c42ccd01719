"""The WHIP server behind ``webrtc`` sources: one aiohttp server per bind address.

``POST /whip/<stream>`` takes a publisher's SDP offer and answers it (RFC 9725);
``DELETE /whip/<stream>/<session>`` ends the session. The server runs on an asyncio
loop in a thread of its own; aiortc receives and decodes the media and hands each
video frame to the stream's :class:`WhipFeed` (the source). aiohttp and aiortc are
imported only here, inside the functions that use them, when a source opens.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from labelcast.errors import SourceError
from labelcast.sources.live import Connection
from labelcast.util.http import format_bind

if TYPE_CHECKING:
    import av

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


class WhipFeed(Protocol):
    """What a WHIP endpoint feeds: the source of one stream (see ``WebRTCSource``)."""

    stream_id: str

    def current_connection(self) -> Connection | None:
        """Return the connection attempt frames go to now (None between attempts)."""
        ...

    def deliver(self, conn: Connection, frame: av.VideoFrame) -> None:
        """Take one decoded frame of ``conn`` (called on the server's loop; never blocks)."""
        ...


@dataclass(eq=False)
class WhipSession:
    """One publisher's peer connection, feeding the connection attempt it belongs to."""

    id: str
    pc: Any
    conn: Connection | None
    tasks: set[asyncio.Task[None]]


class WhipEndpoint:
    """The ``/whip/<stream>`` resource of one source; its methods run on the server's loop."""

    def __init__(self, source: WhipFeed, token: str | None, origins: tuple[str, ...] = ()) -> None:
        self.source = source
        self.stream = source.stream_id
        self._token = token.encode() if token else None
        self._origins = frozenset(origins)
        self.sessions: dict[str, WhipSession] = {}

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

    async def end(self, session: WhipSession, reason: str | None) -> None:
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

    async def consume(self, track: Any, session: WhipSession | None) -> None:
        """Receive a track's decoded frames until it ends; pass video on (``session``)."""
        from aiortc.mediastreams import MediaStreamError

        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if session is not None and session.conn is not None:
                self.source.deliver(session.conn, frame)


class WhipServer:
    """One HTTP server per bind address, on an asyncio loop in a thread of its own."""

    _lock: ClassVar[threading.Lock] = threading.Lock()
    _running: ClassVar[dict[tuple[str, int], WhipServer]] = {}

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.endpoints: dict[str, WhipEndpoint] = {}
        self.loop = asyncio.new_event_loop()
        self._users = 0
        self._runner: Any = None
        self._thread = threading.Thread(
            target=self.loop.run_forever, name=f"whip:{host}:{port}", daemon=True
        )

    @classmethod
    def acquire(cls, host: str, port: int) -> WhipServer:
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

    def _endpoint(self, request: Any) -> WhipEndpoint | None:
        return self.endpoints.get(request.match_info["stream"])

    def _admit(self, request: Any) -> tuple[WhipEndpoint | None, dict[str, str], Any]:
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

    async def _answer(self, endpoint: WhipEndpoint, offer: str) -> WhipSession:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        session = WhipSession(uuid.uuid4().hex, pc, endpoint.source.current_connection(), set())

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
