"""The overlay's live preview: the latest annotated picture per stream, JPEG-encoded once.

The sink thread only swaps in the newest picture; one encoder thread encodes the
pictures of the streams someone watches, and every viewer gets the same bytes. The
HTTP side (index page, MJPEG views, the /label page) is ``preview_http.py``, on
util.http's ``BoundedHTTPServer``.
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelcast.errors import SinkError
from labelcast.frames import LabelEvent, LabelState, StreamStatus
from labelcast.sinks.overlay.config import PreviewConfig
from labelcast.sinks.overlay.label_store import SnapshotStore
from labelcast.sinks.overlay.preview_http import handler_for
from labelcast.util.http import (
    BoundedHTTPServer,
    check_basic_auth,
    format_bind,
    is_loopback,
    parse_bind,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)


# How long a stream stays "watched" after a viewer last asked for its pictures (s): viewers
# ask again at least every second while they wait, so this outlives every wait.
_WANTED_S = 2.0


@dataclass(frozen=True)
class Jpeg:
    """One encoded picture of a stream: the same bytes go to every viewer."""

    version: int
    data: bytes


@dataclass
class _StreamView:
    """What the preview knows of one stream: the latest picture, its JPEG and its labels."""

    image: npt.NDArray[np.uint8] | None = None
    version: int = 0
    jpeg: Jpeg | None = None
    jpeg_encodes: int = 0
    wanted_until: float = 0.0  # monotonic time; viewers keep pushing it forward
    next_encode_at: float = 0.0  # monotonic time; the frame-rate cap
    label: str | None = None
    score: float | None = None
    state: str | None = None
    status: str | None = None
    regions: dict[str, str | None] = field(default_factory=dict)  # region -> smoothed label


class Preview:
    """Latest annotated picture per stream, served as an index page and MJPEG views.

    The sink thread only swaps in the newest picture (a reference). One encoder thread
    JPEG-encodes the pictures of the streams someone watches, at most ``max_fps`` a
    second per stream, and every viewer sends the same bytes: the preview's cost is
    bounded by the streams watched, not by the viewers, and is nil while nobody watches.
    Viewers wait on a condition for a newer JPEG, so nothing is queued per viewer.
    """

    def __init__(self, config: PreviewConfig) -> None:
        self.config = config
        self._views: dict[str, _StreamView] = {}
        self._lock = threading.Lock()
        self._new_image = threading.Condition(self._lock)  # wakes the encoder
        self._new_jpeg = threading.Condition(self._lock)  # wakes the viewers
        self._closed = False
        self._interval = 1.0 / config.max_fps
        self._slots = threading.BoundedSemaphore(config.max_clients)
        label = config.label
        self.label_store = (
            None
            if label is None
            else SnapshotStore(Path(label.snapshots), Path(label.data), label.page_size)
        )
        host, port = parse_bind(config.bind, "preview.bind")
        try:
            self._server = BoundedHTTPServer(
                (host, port),
                handler_for(self),
                thread_name="overlay-preview-client",
                # A viewer that stops reading is dropped after this long.
                request_timeout_s=config.client_timeout_s,
            )
        except OSError as exc:
            raise SinkError(
                f"overlay sink: preview cannot listen on {config.bind} ({exc})"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="overlay-preview",
            daemon=True,
        )
        self._encoder = threading.Thread(
            target=self._encode_loop, name="overlay-preview-jpeg", daemon=True
        )
        self._thread.start()
        self._encoder.start()
        if config.password is None and not is_loopback(host):
            log.warning(
                "overlay preview listens on %s without a password: anyone who reaches it "
                "sees the cameras",
                config.bind,
            )
        log.info("overlay preview on http://%s/", format_bind(*self.address))

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) actually bound."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def update(self, stream: str, image: npt.NDArray[np.uint8], event: LabelEvent) -> None:
        """Make ``image`` the stream's latest picture (the older one is forgotten)."""
        with self._lock:
            view = self._views.setdefault(stream, _StreamView())
            # Whether the encoder already knows of a picture it has yet to encode (it then
            # sleeps until the frame-rate cap lets it, and needs no waking).
            pending = view.image is not None and (
                view.jpeg is None or view.jpeg.version < view.version
            )
            view.image = image
            view.version += 1
            if event.region is None:  # a region's labels are drawn in its box
                top = event.labels[0] if event.labels else None
                view.label = None if top is None else top.label
                view.score = None if top is None else top.score
            now = time.monotonic()
            # Waking the encoder for every picture (a hundred a second) would take the
            # GIL from the classifier as often: wake it only when it has a use for it.
            if view.wanted_until > now and (not pending or view.next_encode_at <= now):
                self._new_image.notify()

    def set_state(self, stream: str, state: LabelState, region: str | None = None) -> None:
        """Remember a stream's (or one of its regions') smoothed label."""
        with self._lock:
            view = self._views.setdefault(stream, _StreamView())
            if region is None:
                view.state = state.label
            else:
                view.regions[region] = state.label

    def set_status(self, status: StreamStatus) -> None:
        """Remember a stream's source state."""
        with self._lock:
            self._views.setdefault(status.stream, _StreamView()).status = status.state

    def summary(self) -> list[dict[str, Any]]:
        """Each stream's id, top label and score, smoothed and source state, and counts.

        ``regions`` maps each of the stream's regions to its smoothed label.
        """
        with self._lock:
            return [
                {
                    "stream": stream,
                    "label": view.label,
                    "score": None if view.score is None else round(view.score, 4),
                    "state": view.state,
                    "status": view.status,
                    "regions": dict(view.regions),
                    "frames": view.version,
                    "jpeg_encodes": view.jpeg_encodes,
                }
                for stream, view in sorted(self._views.items())
            ]

    def has_picture(self, stream: str) -> bool:
        """Whether the stream is known and has a picture to show."""
        with self._lock:
            view = self._views.get(stream)
            return view is not None and view.image is not None

    def next_jpeg(self, stream: str, newer_than: int, timeout: float) -> Jpeg | None:
        """Wait up to ``timeout`` s for the stream's JPEG of a picture newer than ``newer_than``.

        Returns None if none came in time, the stream is unknown or the preview is
        closing. Asking marks the stream watched, so that its pictures get encoded.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            view = self._views.get(stream)
            while view is not None and not self._closed:
                jpeg = view.jpeg
                if jpeg is not None and jpeg.version > newer_than:
                    return jpeg
                now = time.monotonic()
                if now >= deadline:
                    break
                if view.wanted_until <= now:
                    self._new_image.notify()  # not watched until now: wake the encoder
                view.wanted_until = now + _WANTED_S
                self._new_jpeg.wait(deadline - now)
        return None

    def latest_jpeg(self, stream: str, timeout: float) -> Jpeg | None:
        """Return the JPEG of the stream's latest picture, waiting up to ``timeout`` s for it.

        Falls back to the newest JPEG there is; None for an unknown stream.
        """
        with self._lock:
            view = self._views.get(stream)
            if view is None or view.image is None:
                return None
            version = view.version
        found = self.next_jpeg(stream, version - 1, timeout)
        with self._lock:
            return found or view.jpeg

    def _next_job(self) -> tuple[_StreamView | None, float | None]:
        """Return the watched stream to encode now, or None and how long until one may be.

        The wait is None when no picture waits at all (until a new picture or viewer).
        """
        now = time.monotonic()
        chosen: _StreamView | None = None
        wait: float | None = None
        for view in self._views.values():
            current = view.jpeg is not None and view.jpeg.version >= view.version
            if view.image is None or view.wanted_until <= now or current:
                continue
            if view.next_encode_at > now:
                wait = min(wait or math.inf, view.next_encode_at - now)
            elif chosen is None or view.next_encode_at < chosen.next_encode_at:
                chosen = view  # the one waiting longest goes first
        return chosen, wait

    def _encode_loop(self) -> None:
        """Encode the watched streams' new pictures, each at most ``max_fps`` a second."""
        while True:
            with self._lock:
                view, wait = self._next_job()
                while view is None and not self._closed:
                    self._new_image.wait(wait)
                    view, wait = self._next_job()
                if view is None or self._closed:
                    return
                view.next_encode_at = time.monotonic() + self._interval
                version, image = view.version, view.image
            assert image is not None
            from PIL import Image

            buffer = io.BytesIO()
            try:
                Image.fromarray(image).save(buffer, format="JPEG", quality=self.config.jpeg_quality)
            except (OSError, ValueError) as exc:
                log.warning("overlay preview: cannot encode a picture (%s)", exc)
                continue  # the next picture tries again
            with self._lock:
                view.jpeg = Jpeg(version, buffer.getvalue())
                view.jpeg_encodes += 1
                self._new_jpeg.notify_all()

    def authorised(self, header: str | None) -> bool:
        """Whether a request's Authorization header passes (always, without a password)."""
        password = self.config.password
        if password is None:
            return True
        return check_basic_auth(header, self.config.username, password.get_secret_value())

    def acquire_slot(self) -> bool:
        """Take a viewer slot; False when ``max_clients`` viewers are already served."""
        return self._slots.acquire(blocking=False)

    def release_slot(self) -> None:
        """Give a viewer slot back."""
        self._slots.release()

    @property
    def closed(self) -> bool:
        """Whether the preview is shutting down."""
        return self._closed

    def close(self) -> None:
        """Wake every viewer and the encoder, stop serving and release the port."""
        with self._lock:
            self._closed = True
            self._new_jpeg.notify_all()
            self._new_image.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._encoder.join()
