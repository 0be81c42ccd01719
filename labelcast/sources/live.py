"""What every live source shares: reconnects with backoff, the stall watchdog, status reports.

A live source receives pictures on a *connection*: a producer (a reader thread for
FFmpeg inputs, the WHIP server's event loop for WebRTC) that opens the stream and
hands decoded pictures over a small queue. The source's own thread (the runner's)
only waits on that queue, so it never blocks in FFmpeg or the network: it notices a
stall, a lost stream or ``stop()`` within ``_POLL_S``, abandons the connection
(whose producer ends within its own timeouts) and starts another after a jittered,
exponentially growing delay.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from labelcast.errors import SourceError
from labelcast.frames import Frame, StreamState, UnsampledFrame
from labelcast.redact import Redactor
from labelcast.sources.base import SourceConfigBase, StatusCallback, UnsampledTap
from labelcast.sources.sampler import Sampler
from labelcast.util.backoff import Backoff, ReconnectConfig

if TYPE_CHECKING:
    # Annotations only: PyAV and NumPy load when a stream is decoded, not with the config.
    import av
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

# How often the source thread looks at stop(), the watchdog and a lost connection.
_POLL_S = 0.1
# Decoded pictures waiting between a producer and the source thread. The source
# thread only converts colours and hands frames on (a live stream's queue never
# blocks), so this stays nearly empty; the pipeline's own queue does the dropping.
_HANDOFF = 4
# How long closing a source waits for its producer to let go of the stream.
_CLOSE_WAIT_S = 0.5


class WatchedSourceConfigBase(SourceConfigBase):
    """Fields every live source has: the stall watchdog."""

    stall_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="No new frame for this long (seconds) counts as a stall: reconnect.",
        ),
    ] = 10.0


class LiveSourceConfigBase(WatchedSourceConfigBase):
    """Fields of the live sources that connect out: the watchdog and the reconnect delays."""

    reconnect: Annotated[
        ReconnectConfig,
        Field(description="Jittered exponential backoff between connection attempts."),
    ] = ReconnectConfig()


@dataclass(frozen=True)
class Picture:
    """A decoded, sampled picture on its way from a producer to the source thread."""

    index: int
    pts: float
    captured_at: float
    frame: av.VideoFrame


class Connection:
    """One attempt at receiving a live stream, and its life once it delivers pictures.

    The producer calls ``mark_open``, ``alive``, ``offer`` and finally ``finish``;
    the source thread calls ``get`` and ``close``. ``close`` only asks: the producer
    notices between (time-limited) blocking calls and ends on its own.
    """

    def __init__(self, number: int, on_close: Callable[[], None] | None = None) -> None:
        self.number = number
        self.started_at = time.monotonic()
        self.opened_at: float | None = None
        self.last_alive = self.started_at
        self.alive_count = 0
        self.error: str | None = None
        self.closing = threading.Event()
        self.ended = threading.Event()
        self._pictures: queue.Queue[Picture] = queue.Queue(_HANDOFF)
        self._on_close = on_close

    # Producer side.

    def mark_open(self) -> None:
        """Note that the stream is open (connected, headers read); the watchdog starts now."""
        self.opened_at = self.last_alive = time.monotonic()

    def alive(self) -> None:
        """Note that a frame (or, decoding key frames only, a packet) just arrived."""
        self.last_alive = time.monotonic()
        self.alive_count += 1

    def offer(self, picture: Picture) -> bool:
        """Hand a picture to the source thread; wait for room. Return False once closing."""
        while not self.closing.is_set():
            try:
                self._pictures.put(picture, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def offer_nowait(self, picture: Picture) -> bool:
        """Hand a picture over without waiting (for event loops); False if full or closing."""
        if self.closing.is_set():
            return False
        try:
            self._pictures.put_nowait(picture)
            return True
        except queue.Full:
            return False

    def finish(self, error: str | None) -> None:
        """End the producer's part: ``error`` says why the stream ended (None: asked to)."""
        if not self.ended.is_set():
            self.error = error
            self.ended.set()

    # Source-thread side.

    def get(self, timeout: float) -> Picture | None:
        """Return the next picture, or None if none came within ``timeout`` seconds."""
        try:
            return self._pictures.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Ask the producer to stop and release the stream (returns at once)."""
        if not self.closing.is_set():
            self.closing.set()
            if self._on_close is not None:
                self._on_close()


class LiveSource:
    """Base of the live sources: connect, watch, reconnect; never ends on its own.

    Subclasses implement ``_connect`` (start a producer for a new ``Connection``) and
    ``_target`` (what is being connected to, passwords masked). ``__enter__`` returns
    once the stream delivers frames, retrying with backoff and reporting
    ``reconnecting`` meanwhile; or at once after ``stop()``. Constructed without
    ``on_status`` (as ``labelcast check`` does, with nobody to tell about retries) it
    makes one attempt and raises SourceError if that fails.
    """

    live = True
    # A live stream has no end, so no frame count to show progress against.
    frame_count_hint: int | None = None
    frame_size: tuple[int, int] | None = None  # known only once frames arrive
    # Whether a new connection must wait until the previous producer let go of the
    # stream (a V4L2 device can be opened only once).
    _exclusive = False
    # How long an attempt may take to open; None waits without limit (a WHIP
    # endpoint waits for its publisher).
    _open_limit_s: float | None = 10.0
    # Said while waiting for a connection that cannot be hurried (WHIP's publisher).
    _waiting_reason: str | None = None

    def __init__(
        self,
        config: WatchedSourceConfigBase,
        on_status: StatusCallback | None = None,
        redactor: Redactor | None = None,
    ) -> None:
        self.stream_id = config.id
        self.frames_decoded = 0
        self.on_unsampled: UnsampledTap | None = None
        self._last_sampled = -1
        self._on_status = on_status
        self._redactor = redactor or Redactor()
        self._sampler = Sampler(config.sample)
        self._sampler_lock = threading.Lock()
        self._stall_s = config.stall_timeout_s
        reconnect = (
            config.reconnect if isinstance(config, LiveSourceConfigBase) else ReconnectConfig()
        )
        self._backoff = Backoff(reconnect)
        self._stop = threading.Event()
        self._conn: Connection | None = None
        self._online = False
        self._state: StreamState | None = None
        self._attempts = 0

    @classmethod
    def live_for(cls, config: WatchedSourceConfigBase) -> bool:
        """Return True: a live stream drops its oldest frames when the classifier is behind."""
        return True

    # The hooks subclasses implement.

    def _connect(self, conn: Connection) -> None:
        """Start a producer that opens the stream and feeds ``conn``; return at once."""
        raise NotImplementedError

    def _target(self) -> str:
        """Name what this source connects to, for messages (passwords masked)."""
        raise NotImplementedError

    def _retry_delay(self) -> float:
        """Return the wait before the next attempt."""
        return self._backoff.next_delay()

    def _new_connection(self, number: int) -> Connection:
        """Make the Connection object of one attempt (subclasses add a close hook)."""
        return Connection(number)

    # The Source protocol.

    def __enter__(self) -> LiveSource:
        if self._on_status is None:
            self._probe()
        else:
            self._connect_until_online()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            # A streaming producer lets go within milliseconds; one stuck in a timed call
            # is left to end on its own (within its timeout) so that stopping stays fast.
            conn.ended.wait(_CLOSE_WAIT_S)

    def stop(self) -> None:
        """Make ``__enter__`` and ``frames()`` return soon (within ``_POLL_S``); thread-safe."""
        self._stop.set()
        conn = self._conn
        if conn is not None:
            conn.close()

    def frames(self) -> Iterator[Frame]:
        """Yield sampled frames, reconnecting as needed, until ``stop()`` is called."""
        while not self._stop.is_set():
            conn = self._conn
            if conn is None or not self._online:
                if not self._connect_until_online():
                    return
                continue
            picture = conn.get(_POLL_S)
            if picture is not None:
                yield self._to_frame(picture)
                continue
            problem = self._trouble(conn)
            # stop() closes the connection too: that is no reason to report a reconnect.
            if problem is not None and not self._stop.is_set():
                self._lose(conn, problem)

    # Producer helpers.

    def _take(self, conn: Connection, pts: float, video_frame: av.VideoFrame) -> int | None:
        """Count a decoded frame of ``conn`` and return its index if the sampler takes it.

        Returns None for a frame that is not sampled (handing it to ``on_unsampled`` when
        that is set), and for every frame of an abandoned connection (its producer may
        run a little longer than it should).
        """
        with self._sampler_lock:
            if conn is not self._conn or conn.closing.is_set():
                return None
            conn.alive()
            index = self.frames_decoded
            self.frames_decoded += 1
            if self._sampler.take(index, pts):
                self._last_sampled = index
                return index
            after = self._last_sampled
        tap = self.on_unsampled
        if tap is not None:
            tap(UnsampledFrame(self.stream_id, index, pts, time.time(), after, video_frame))
        return None

    # The state machine.

    def _probe(self) -> None:
        conn = self._start_attempt()
        problem = self._await_first_frame(conn)
        if problem is not None:
            self._conn = None
            conn.close()
            raise SourceError(f"stream {self.stream_id!r}: {self._redactor.text(problem)}")
        self._online = True

    def _connect_until_online(self) -> bool:
        """Attempt connections until one delivers a frame (True) or ``stop()`` (False)."""
        while not self._stop.is_set():
            if self._waiting_reason is not None:
                self._report("reconnecting", self._waiting_reason)
            conn = self._start_attempt()
            problem = self._await_first_frame(conn)
            if problem is None:
                self._online = True
                self._backoff.reset()
                self._report("online", None)
                return True
            if self._stop.is_set():
                break
            self._lose(conn, problem)
        return False

    def _start_attempt(self) -> Connection:
        self._attempts += 1
        conn = self._new_connection(self._attempts)
        self._conn = conn
        self._online = False
        self._connect(conn)
        return conn

    def _await_first_frame(self, conn: Connection) -> str | None:
        """Wait until ``conn`` delivers its first frame; return why it did not (or None)."""
        while not self._stop.is_set():
            if conn.alive_count:
                return None
            if conn.ended.is_set():
                return conn.error or "the stream ended before its first frame"
            now = time.monotonic()
            if conn.opened_at is None:
                limit = self._open_limit_s
                # The producer's own timeout ends the attempt; this is the backstop for
                # calls FFmpeg cannot interrupt (a hanging DNS lookup).
                if limit is not None and now - conn.started_at > limit + 1.0:
                    return f"{self._target()}: no answer within {limit:g} s"
            elif now - conn.opened_at > self._stall_s:
                return f"{self._target()}: no video within {self._stall_s:g} s of connecting"
            conn.ended.wait(_POLL_S)
        return "stopped"

    def _trouble(self, conn: Connection) -> str | None:
        """Why an online connection must be replaced (ended or stalled), or None."""
        if conn.ended.is_set():
            return conn.error or "the stream ended"
        silent = time.monotonic() - conn.last_alive
        if silent > self._stall_s:
            return f"{self._target()}: stalled, no frame for {silent:.1f} s"
        return None

    def _lose(self, conn: Connection, problem: str) -> None:
        """Abandon ``conn``, report ``reconnecting`` (once per outage), wait before retrying."""
        self._conn = None
        self._online = False
        conn.close()
        reason = self._redactor.text(problem)
        self._report("reconnecting", reason)
        delay = self._retry_delay()
        log.debug(
            "stream %r: attempt %d: %s; next attempt in %.2f s",
            self.stream_id,
            conn.number,
            reason,
            delay,
        )
        deadline = time.monotonic() + delay
        self._stop.wait(delay)
        if self._exclusive and not self._stop.is_set():
            remaining = max(deadline - time.monotonic(), 0.0)
            self._wait_released(conn, remaining + self._release_wait_s())

    def _wait_released(self, conn: Connection, limit: float) -> None:
        deadline = time.monotonic() + limit
        while not conn.ended.is_set() and not self._stop.is_set():
            if time.monotonic() > deadline:
                log.warning(
                    "stream %r: the previous connection still holds %s; opening anyway",
                    self.stream_id,
                    self._target(),
                )
                return
            conn.ended.wait(_POLL_S)

    def _release_wait_s(self) -> float:
        """Longest time a producer takes to notice ``close`` (its longest blocking call)."""
        return self._open_limit_s or 10.0

    def _report(self, state: StreamState, reason: str | None) -> None:
        """Tell the runner about a state change, once per change (reasons already masked)."""
        if state == self._state:
            return
        self._state = state
        if self._on_status is not None:
            self._on_status(state, reason)

    def _to_frame(self, picture: Picture) -> Frame:
        # Colour conversion happens here, on the source thread, for sampled frames only.
        image: npt.NDArray[np.uint8] = picture.frame.to_ndarray(format="rgb24")  # type: ignore[assignment]
        return Frame(self.stream_id, picture.index, picture.pts, picture.captured_at, image)

    def describe_error(self, exc: BaseException) -> str:
        """Describe ``exc`` in one password-free line for status reasons and logs."""
        # FFmpeg's errors carry the message without the URL in ``strerror``.
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return self._redactor.text(text)
