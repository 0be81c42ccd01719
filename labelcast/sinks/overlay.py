"""The overlay sink: labels drawn on the classified frames, to H.264 files and a live preview.

Each label event arrives with the very frame it was computed from; the sink draws a banner
(top labels with scores, stream id, capture time) on a copy of it, on the sink's own thread.
The annotated frame goes to a rotating MP4 file per stream and/or to an HTTP preview that
keeps only the latest picture per stream, so a slow or absent viewer never holds anything up.

Files hold the classified frames (``mode: sampled``), or every decoded frame, each drawn
with its stream's latest label (``mode: all-frames``). In that mode the sources hand the
frames their sampler skips to this sink too (still in the decoder's pixel format; they are
converted here). They arrive before the event of the sampled frame they follow, so each
waits, bounded by ``max_buffered_frames``, until that event has been written.
"""

from __future__ import annotations

import html
import io
import json
import logging
import math
import os
import socket
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import av
import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from labelcast.errors import SinkError
from labelcast.pipeline.frames import (
    ChangeEvent,
    Frame,
    LabelEvent,
    LabelState,
    StreamStatus,
    UnsampledFrame,
    format_timestamp,
)
from labelcast.util.http import (
    BindAddress,
    BoundedHTTPServer,
    BoundedRequestHandler,
    check_basic_auth,
    format_bind,
    is_loopback,
    parse_bind,
)

log = logging.getLogger(__name__)

_TIME_BASE = Fraction(1, 1000)  # file timestamps in milliseconds of the stream's clock
_BANNER_BG = (0, 0, 0)
_CHANGE_BG = (200, 90, 0)
_CHANGE_BORDER = (255, 160, 0)


class RotateConfig(BaseModel):
    """When an annotated file is closed and the next one begun."""

    model_config = ConfigDict(extra="forbid")

    max_seconds: Annotated[
        float | None,
        Field(gt=0, description="Start a new file after this many seconds of stream time."),
    ] = 3600.0
    max_bytes: Annotated[
        int | None,
        Field(gt=0, description="Start a new file once this many bytes of video are written."),
    ] = None


class PreviewConfig(BaseModel):
    """The live preview: an index page and an MJPEG view per stream."""

    model_config = ConfigDict(extra="forbid")

    bind: Annotated[
        BindAddress,
        Field(
            description="host:port (or [ipv6]:port) to listen on; keep 127.0.0.1 unless a "
            "password is set and the network is trusted (the preview shows the cameras' "
            "pictures).",
        ),
    ] = "127.0.0.1:8090"
    username: Annotated[
        str, Field(min_length=1, description="User name for basic auth (with `password`).")
    ] = "labelcast"
    password: Annotated[
        SecretStr | None,
        Field(
            description="Require basic auth with this password; write it as ${ENV_VAR}, "
            "never inline. Without it the preview is open to whoever reaches `bind`."
        ),
    ] = None
    jpeg_quality: Annotated[
        int, Field(ge=1, le=95, description="JPEG quality of the preview pictures.")
    ] = 80
    max_clients: Annotated[
        int,
        Field(ge=1, le=256, description="Viewers served at once; more get 503."),
    ] = 8
    max_fps: Annotated[
        float,
        Field(
            gt=0,
            le=30,
            description="Most pictures per second and stream the preview encodes and sends "
            "(each encoded once, whatever the number of viewers).",
        ),
    ] = 5.0
    client_timeout_s: Annotated[
        float,
        Field(gt=0, description="A viewer that reads nothing for this long is disconnected."),
    ] = 10.0


class OverlaySinkConfig(BaseModel):
    """Draw labels on the classified frames; write them to files and/or a live preview."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["overlay"] = "overlay"
    output: Annotated[
        str | None,
        Field(
            description="Path template of the annotated H.264 MP4 files, with {stream} and "
            "{date} (UTC start time of the file, e.g. 20261128T060000.123Z), e.g. "
            '"out/{stream}/{date}.mp4"; omit for no files.'
        ),
    ] = None
    mode: Annotated[
        Literal["sampled", "all-frames"],
        Field(
            description="Which frames the files hold: `sampled`, each classified frame (at "
            "the sampled rate); `all-frames`, every decoded frame with the stream's latest "
            "label (each frame is then colour-converted, drawn and encoded: much more CPU). "
            "The preview shows classified frames either way."
        ),
    ] = "sampled"
    max_buffered_frames: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description="all-frames: most unsampled frames of a live stream held while the "
            "label before them is computed (a 720p frame takes 1.4 MB); beyond it the oldest "
            "is dropped and counted. Files feeding a lossless sink wait for it instead.",
        ),
    ] = 120
    rotate: Annotated[
        RotateConfig, Field(description="When to close a file and begin the next.")
    ] = RotateConfig()
    preset: Annotated[
        Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"],
        Field(description="x264 speed preset: faster presets cost less CPU, more bytes."),
    ] = "veryfast"
    crf: Annotated[
        int, Field(ge=0, le=51, description="x264 constant rate factor (lower is better).")
    ] = 23
    preview: Annotated[
        PreviewConfig | None,
        Field(description="Serve a live preview over HTTP; omit for none."),
    ] = None
    top_k: Annotated[
        int, Field(ge=1, le=10, description="How many of the event's labels are drawn.")
    ] = 3
    highlight_s: Annotated[
        float,
        Field(
            ge=0,
            description="How long (stream time) frames stay highlighted after a change of "
            "the stream's label.",
        ),
    ] = 2.0
    lossless: Annotated[
        bool,
        Field(
            description="Wait for this sink when it is behind instead of dropping frames "
            "(files keep every classified frame, but a slow disk then slows classification)."
        ),
    ] = False

    @model_validator(mode="after")
    def _has_an_output(self) -> OverlaySinkConfig:
        if self.output is None and self.preview is None:
            raise ValueError("set `output`, `preview` or both")
        if self.mode == "all-frames" and self.output is None:
            raise ValueError("mode all-frames is for files: set `output`")
        if self.output is not None:
            if "{stream}" not in self.output:
                raise ValueError("output: the path must contain {stream}")
            try:
                self.output.format(stream="s", date="d")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"output: only {{stream}} and {{date}} may be used ({exc!r})"
                ) from exc
        return self


# --- drawing -------------------------------------------------------------------------------


@dataclass
class Highlight:
    """A change to show on frames: its text, until which stream time (pts, seconds).

    ``until_pts`` is None until the first highlighted frame fixes it.
    """

    text: str
    until_pts: float | None


_FONTS: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    font = _FONTS.get(size)
    if font is None:
        font = ImageFont.load_default(size=size)
        if len(_FONTS) < 64:
            _FONTS[size] = font
    return font


def draw_overlay(
    image: npt.NDArray[np.uint8],
    event: LabelEvent,
    *,
    top_k: int = 3,
    highlight: str | None = None,
) -> npt.NDArray[np.uint8]:
    """Return a copy of ``image`` with the event's banner drawn on it (the input is untouched).

    The banner spans the top of the frame: a darkened band (orange after a change) with
    the stream id and capture time on the first line and the top labels with scores on
    the second; its height scales with the frame's. Only the banner is converted to a
    Pillow image, so the cost is bounded by its size.
    """
    height, width = image.shape[:2]
    out: npt.NDArray[np.uint8] = image.copy()
    size = max(10, round(height / 24))
    pad = max(2, size // 3)
    lines = [f"{event.stream}  {format_timestamp(event.captured_at)}  #{event.seq}"]
    labels = "   ".join(f"{lb.label} {lb.score:.2f}" for lb in event.labels[:top_k])
    lines.append(labels or "(no label)")
    if highlight is not None:
        lines.append(highlight)
    banner_h = min(height, pad + len(lines) * (size + pad))
    band = out[:banner_h]
    background = np.array(_CHANGE_BG if highlight is not None else _BANNER_BG, np.float32)
    # Darken (or tint) the band so white text has contrast on any picture.
    band[:] = (band.astype(np.float32) * 0.3 + background * 0.7).astype(np.uint8)
    canvas = Image.fromarray(band)
    draw = ImageDraw.Draw(canvas)
    font = _font(size)
    for row, text in enumerate(lines):
        draw.text((pad, pad + row * (size + pad)), text, fill=(255, 255, 255), font=font)
    out[:banner_h] = np.asarray(canvas)
    if highlight is not None:
        edge = max(2, height // 120)
        out[banner_h:, :edge] = _CHANGE_BORDER
        out[banner_h:, width - edge :] = _CHANGE_BORDER
        out[height - edge :, :] = _CHANGE_BORDER
    return out


def describe_change(change: ChangeEvent) -> str:
    """Return the line drawn on frames after a change of a stream's label."""
    if change.type == "start":
        return f"START {change.label}"
    if change.type == "end":
        return f"END {change.previous}"
    return f"CHANGE {change.previous} -> {change.label}"


# --- files ---------------------------------------------------------------------------------


class _Recording:
    """One open MP4 file of one stream."""

    def __init__(self, path: Path, width: int, height: int, preset: str, crf: int) -> None:
        self.path = path
        self.width, self.height = width, height
        self.first_pts: float | None = None
        self.last_ms = -1
        # The newest packet is muxed when the next one tells how long it lasts.
        self._held: av.Packet[Any] | None = None
        self._interval = 0
        self.frames = 0
        self.bytes = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(path), mode="w", format="mp4")
            stream = self._container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.time_base = _TIME_BASE
            # zerolatency: no B-frames or lookahead, so the encoder holds no frames back.
            stream.options = {"preset": preset, "crf": str(crf), "tune": "zerolatency"}
            self._stream = stream
        except (OSError, av.FFmpegError, ValueError) as exc:
            raise SinkError(f"overlay sink: cannot open {path} for writing ({exc})") from exc

    def write(self, image: npt.NDArray[np.uint8], pts: float) -> None:
        if self.first_pts is None:
            self.first_pts = pts
        # Timestamps must grow; a source that restarts its clock continues after the last one.
        ms = max(round((pts - self.first_pts) * 1000), self.last_ms + 1)
        self.last_ms = ms
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = ms, _TIME_BASE
        try:
            for packet in self._stream.encode(frame):
                self._mux(packet)
        except (OSError, av.FFmpegError, ValueError) as exc:
            raise SinkError(f"overlay sink: writing {self.path} failed ({exc})") from exc
        self.frames += 1

    def _mux(self, packet: av.Packet[Any]) -> None:
        """Mux the packet held back, now that this one tells how long it lasts; hold this one."""
        self.bytes += packet.size
        held = self._held
        if held is not None and held.dts is not None and packet.dts is not None:
            self._interval = max(1, packet.dts - held.dts)
            held.duration = self._interval
        if held is not None:
            self._container.mux(held)
        self._held = packet

    def seconds(self, pts: float) -> float:
        return 0.0 if self.first_pts is None else pts - self.first_pts

    def close(self) -> None:
        """Flush the encoder and write the MP4 index, so the file plays."""
        try:
            for packet in self._stream.encode():
                self._mux(packet)
            if self._held is not None:
                # The last frame lasts as long as the one before it (the sampled interval).
                self._held.duration = self._interval or round(1 / (30 * _TIME_BASE))
                self._container.mux(self._held)
                self._held = None
        except (OSError, av.FFmpegError, ValueError) as exc:
            raise SinkError(f"overlay sink: finishing {self.path} failed ({exc})") from exc
        finally:
            self._container.close()
        log.info("overlay sink: wrote %s (%d frames)", self.path, self.frames)


# --- preview -------------------------------------------------------------------------------

# How long a stream stays "watched" after a viewer last asked for its pictures (s): viewers
# ask again at least every second while they wait, so this outlives every wait.
_WANTED_S = 2.0


@dataclass(frozen=True)
class _Jpeg:
    """One encoded picture of a stream: the same bytes go to every viewer."""

    version: int
    data: bytes


@dataclass
class _StreamView:
    """What the preview knows of one stream: the latest picture, its JPEG and its labels."""

    image: npt.NDArray[np.uint8] | None = None
    version: int = 0
    jpeg: _Jpeg | None = None
    jpeg_encodes: int = 0
    wanted_until: float = 0.0  # monotonic time; viewers keep pushing it forward
    next_encode_at: float = 0.0  # monotonic time; the frame-rate cap
    label: str | None = None
    score: float | None = None
    state: str | None = None
    status: str | None = None


class _Preview:
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
        host, port = parse_bind(config.bind, "preview.bind")
        try:
            self._server = BoundedHTTPServer(
                (host, port),
                _handler_for(self),
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
            top = event.labels[0] if event.labels else None
            view.label = None if top is None else top.label
            view.score = None if top is None else top.score
            now = time.monotonic()
            # Waking the encoder for every picture (a hundred a second) would take the
            # GIL from the classifier as often: wake it only when it has a use for it.
            if view.wanted_until > now and (not pending or view.next_encode_at <= now):
                self._new_image.notify()

    def set_state(self, stream: str, state: LabelState) -> None:
        """Remember a stream's smoothed label."""
        with self._lock:
            self._views.setdefault(stream, _StreamView()).state = state.label

    def set_status(self, status: StreamStatus) -> None:
        """Remember a stream's source state."""
        with self._lock:
            self._views.setdefault(status.stream, _StreamView()).status = status.state

    def summary(self) -> list[dict[str, Any]]:
        """Each stream's id, top label and score, smoothed and source state, and counts."""
        with self._lock:
            return [
                {
                    "stream": stream,
                    "label": view.label,
                    "score": None if view.score is None else round(view.score, 4),
                    "state": view.state,
                    "status": view.status,
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

    def next_jpeg(self, stream: str, newer_than: int, timeout: float) -> _Jpeg | None:
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

    def latest_jpeg(self, stream: str, timeout: float) -> _Jpeg | None:
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
            buffer = io.BytesIO()
            try:
                Image.fromarray(image).save(buffer, format="JPEG", quality=self.config.jpeg_quality)
            except (OSError, ValueError) as exc:
                log.warning("overlay preview: cannot encode a picture (%s)", exc)
                continue  # the next picture tries again
            with self._lock:
                view.jpeg = _Jpeg(version, buffer.getvalue())
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


_BOUNDARY = "labelcastframe"
_SEND_BUFFER = 512 * 1024


def _send_parts(connection: socket.socket, parts: tuple[bytes, ...]) -> None:
    """Send ``parts`` in as few system calls as the socket allows, copying none of them.

    Every viewer is sent the very bytes the encoder made: joining them to the part's
    head would copy each picture once per viewer (and leave that memory in the viewers'
    threads' malloc arenas), and each extra write gives up the GIL and takes it back,
    which slows the classifier's thread.
    """
    views = [memoryview(part) for part in parts]
    while views:
        sent = connection.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if views and sent:
            views[0] = views[0][sent:]


_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>labelcast preview</title>
<style>
body{{font-family:sans-serif;background:#111;color:#eee;margin:1em}}
li{{margin:.4em 0}} .v{{display:inline-block;margin:.5em}} a{{color:#8cf}}
img{{max-width:640px;border:1px solid #444}}
</style></head><body>
<h1>labelcast preview</h1>
<ul id="streams">{items}</ul>
<div>{views}</div>
<script>
async function refresh(){{
  try {{
    const r = await fetch("api/streams"); const s = await r.json();
    for (const x of s) {{
      const el = document.getElementById("s-" + x.stream);
      if (el) el.querySelector(".now").textContent = describe(x);
    }}
  }} catch (e) {{}}
}}
function describe(x){{
  const score = x.score === null ? "" : " " + x.score.toFixed(2);
  return (x.label ?? "-") + score + " | state: " + (x.state ?? "-") + " | " + (x.status ?? "-");
}}
setInterval(refresh, 2000);
</script>
</body></html>
"""


def _index_page(streams: list[dict[str, Any]]) -> bytes:
    items = []
    views = []
    for entry in streams:
        name = html.escape(entry["stream"])
        url = "stream/" + urllib.parse.quote(entry["stream"], safe="") + ".mjpg"
        score = "" if entry["score"] is None else f" {entry['score']:.2f}"
        now = (
            f"{entry['label'] or '-'}{score} | state: {entry['state'] or '-'} | "
            f"{entry['status'] or '-'}"
        )
        items.append(
            f'<li class="stream" id="s-{name}"><a href="{html.escape(url)}">{name}</a>: '
            f'<span class="now">{html.escape(now)}</span></li>'
        )
        views.append(
            f'<div class="v"><div>{name}</div><img src="{html.escape(url)}" alt="{name}"></div>'
        )
    return _INDEX.format(items="".join(items), views="".join(views)).encode("utf-8")


def _handler_for(preview: _Preview) -> type[BoundedRequestHandler]:
    class Handler(BoundedRequestHandler):
        server_version = "labelcast-preview"

        def setup(self) -> None:
            super().setup()
            # A fixed send buffer bounds what a viewer that stops reading can pin in memory
            # (and makes its writes block, then time out, instead of growing the buffer).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("preview: " + format, *args)

        def do_GET(self) -> None:
            if not preview.authorised(self.headers.get("Authorization")):
                self._reply(
                    401,
                    b"authentication required\n",
                    "text/plain",
                    {"WWW-Authenticate": 'Basic realm="labelcast preview", charset="UTF-8"'},
                )
                return
            path = urllib.parse.urlsplit(self.path).path
            if path in ("/", "/index.html"):
                self._reply(200, _index_page(preview.summary()), "text/html; charset=utf-8")
            elif path == "/api/streams":
                body = json.dumps(preview.summary()).encode()
                self._reply(200, body, "application/json")
            elif path.startswith("/stream/") and path.endswith(".mjpg"):
                self._mjpeg(urllib.parse.unquote(path[len("/stream/") : -len(".mjpg")]))
            elif path.startswith("/stream/") and path.endswith(".jpg"):
                stream = urllib.parse.unquote(path[len("/stream/") : -len(".jpg")])
                if not preview.has_picture(stream):
                    self._reply(404, b"no such stream\n", "text/plain")
                elif (found := preview.latest_jpeg(stream, 2.0)) is None:
                    self._reply(503, b"no picture yet\n", "text/plain", {"Retry-After": "1"})
                else:
                    self._reply(200, found.data, "image/jpeg")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def _mjpeg(self, stream: str) -> None:
            if not preview.has_picture(stream):
                self._reply(404, b"no such stream\n", "text/plain")
                return
            if not preview.acquire_slot():
                self._reply(503, b"too many viewers\n", "text/plain", {"Retry-After": "5"})
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                version = -1
                while not preview.closed:
                    found = preview.next_jpeg(stream, version, 1.0)
                    if found is None:
                        continue  # nothing new yet; ask again (and stay watched)
                    version, data = found.version, found.data
                    head = (
                        f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n".encode()
                    )
                    _send_parts(self.connection, (head, data, b"\r\n"))
            except OSError:
                pass  # the viewer went away or stopped reading
            finally:
                preview.release_slot()

        def _reply(
            self,
            code: int,
            body: bytes,
            content_type: str,
            headers: dict[str, str] | None = None,
        ) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass

    return Handler


# --- the sink ------------------------------------------------------------------------------


@dataclass
class _Pending:
    """An event held back until we know whether it confirmed a change (then it is highlighted)."""

    event: LabelEvent
    frame: Frame


class OverlaySink:
    """Draws each event on its frame; writes rotating MP4 files and/or feeds a live preview.

    Each stream's latest event is held until the next event of the stream (or its
    change, or ``close``) arrives, so the frame that confirmed a change is drawn
    highlighted. The preview is updated at once. With ``mode: all-frames`` the
    unsampled frames after a held event wait with it and are written after it.
    """

    def __init__(self, config: OverlaySinkConfig) -> None:
        self.name = "overlay" + (f":{config.output}" if config.output else "")
        self.lossless = config.lossless
        self._config = config
        self._pending: dict[str, _Pending] = {}
        self.all_frames = config.mode == "all-frames"
        self._followers: dict[str, deque[UnsampledFrame]] = {}
        self.unsampled_dropped = 0  # all-frames: frames dropped from a full buffer
        self._in_drop_burst = False
        self._highlights: dict[str, Highlight] = {}
        self._recordings: dict[str, _Recording] = {}
        self._preview = _Preview(config.preview) if config.preview is not None else None

    @property
    def connected(self) -> bool:
        """Always True: the sink writes local files and serves viewers, nothing to lose."""
        return True

    @property
    def problem(self) -> str | None:
        """Always None (see ``connected``)."""
        return None

    @property
    def backlog(self) -> int | None:
        """None: the sink keeps no outbox."""
        return None

    @staticmethod
    def check(config: OverlaySinkConfig) -> list[str]:
        """Tell ``labelcast check`` whether the files can be written and the preview can listen."""
        problems: list[str] = []
        if config.output is not None:
            folder = Path(config.output.split("{", 1)[0] or ".")
            if not config.output.split("{", 1)[0].endswith(("/", "\\")):
                folder = folder.parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent
            if not os.access(folder, os.W_OK):
                problems.append(f"overlay sink: {folder} is not writable (output {config.output})")
        if config.preview is not None:
            host, port = parse_bind(config.preview.bind, "preview.bind")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                with socket.create_server((host, port), family=family):
                    pass
            except OSError as exc:
                problems.append(
                    f"overlay sink: preview cannot listen on {config.preview.bind} ({exc})"
                )
        return problems

    @property
    def preview_address(self) -> tuple[str, int] | None:
        """The preview's bound (host, port), or None without a preview."""
        return None if self._preview is None else self._preview.address

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Draw the event on its frame; write the stream's previous frame, update the preview."""
        if frame.stream != event.stream:
            raise SinkError(
                f"{self.name}: event of {event.stream} came with a frame of {frame.stream}"
            )
        previous = self._pending.pop(event.stream, None)
        self._pending[event.stream] = _Pending(event, frame)
        if previous is not None:
            self._write(previous)
        # Unsampled frames decoded before this one follow the previous event (or a
        # sampled frame that was dropped); before the stream's first event there is no
        # label to draw, and the file starts with its first classified frame.
        self._write_followers(event.stream, frame.index, previous)
        if self._preview is not None:
            self._preview.update(event.stream, self._draw(event, frame), event)

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Highlight the frame that confirmed the change, and those after it for a while."""
        pending = self._pending.get(change.stream)
        confirming = pending is not None and pending.event.seq == change.seq
        # Not the held frame (it was dropped): the highlight begins with the next frame.
        self._highlights[change.stream] = Highlight(describe_change(change), None)
        if self._preview is not None:
            self._preview.set_state(change.stream, state)
            if pending is not None and confirming:
                self._preview.update(
                    change.stream, self._draw(pending.event, pending.frame), pending.event
                )

    def send_unsampled(self, frame: UnsampledFrame) -> None:
        """all-frames: hold a frame the sampler skipped until the label before it is written."""
        followers = self._followers.setdefault(frame.stream, deque())
        if len(followers) >= self._config.max_buffered_frames and not frame.keep:
            followers.popleft()
            self.unsampled_dropped += 1
            if not self._in_drop_burst:
                self._in_drop_burst = True
                log.warning(
                    "%s: more than %d frames of %s wait for a label; dropping the oldest "
                    "(raise max_buffered_frames, or classify faster)",
                    self.name,
                    self._config.max_buffered_frames,
                    frame.stream,
                )
        else:
            self._in_drop_burst = False
        followers.append(frame)

    def _write_followers(self, stream: str, before: int | None, latest: _Pending | None) -> None:
        """Write the held unsampled frames decoded before frame ``before`` (None: all)."""
        followers = self._followers.get(stream)
        while followers and (before is None or followers[0].after < before):
            follower = followers.popleft()
            if latest is not None:
                self._write(_Pending(latest.event, follower.to_frame()))

    def send_status(self, status: StreamStatus) -> None:
        """Show the stream's source state on the preview's index page."""
        if self._preview is not None:
            self._preview.set_status(status)

    def _draw(self, event: LabelEvent, frame: Frame) -> npt.NDArray[np.uint8]:
        highlight = self._highlights.get(event.stream)
        text = None
        if highlight is not None:
            if highlight.until_pts is None:
                highlight.until_pts = frame.pts + self._config.highlight_s
            if frame.pts <= highlight.until_pts:
                text = highlight.text
            else:
                del self._highlights[event.stream]
        return draw_overlay(frame.image, event, top_k=self._config.top_k, highlight=text)

    def _write(self, pending: _Pending) -> None:
        if self._config.output is None:
            return
        event, frame = pending.event, pending.frame
        image = self._draw(event, frame)
        # yuv420p needs even sizes: drop an odd last row or column.
        height, width = image.shape[0] & ~1, image.shape[1] & ~1
        if height == 0 or width == 0:
            raise SinkError(f"{self.name}: frame of {event.stream} is too small to encode")
        image = image[:height, :width]
        recording = self._recordings.get(event.stream)
        if recording is not None and self._must_rotate(recording, width, height, frame.pts):
            del self._recordings[event.stream]
            recording.close()
            recording = None
        if recording is None:
            recording = _Recording(
                self._path_for(event.stream), width, height, self._config.preset, self._config.crf
            )
            self._recordings[event.stream] = recording
        recording.write(np.ascontiguousarray(image), frame.pts)

    def _must_rotate(self, recording: _Recording, width: int, height: int, pts: float) -> bool:
        rotate = self._config.rotate
        if (recording.width, recording.height) != (width, height):
            return True
        if rotate.max_seconds is not None and recording.seconds(pts) >= rotate.max_seconds:
            return True
        return rotate.max_bytes is not None and recording.bytes >= rotate.max_bytes

    def _path_for(self, stream: str) -> Path:
        assert self._config.output is not None
        now = datetime.now(timezone.utc)
        date = now.strftime("%Y%m%dT%H%M%S") + f".{now.microsecond // 1000:03d}Z"
        safe = stream.replace("/", "_").replace("\\", "_")
        path = Path(self._config.output.format(stream=safe, date=date))
        candidate, n = path, 1
        while candidate.exists() and n < 1000:
            candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
            n += 1
        return candidate

    def close(self) -> None:
        """Write the held frames, finalise every file (so each plays) and stop the preview."""
        problems: list[SinkError] = []
        try:
            for stream, pending in list(self._pending.items()):
                try:
                    self._write(pending)
                    self._write_followers(stream, None, pending)
                except SinkError as exc:
                    problems.append(exc)
            self._pending.clear()
            self._followers.clear()
            for recording in list(self._recordings.values()):
                try:
                    recording.close()
                except SinkError as exc:
                    problems.append(exc)
            self._recordings.clear()
        finally:
            if self._preview is not None:
                self._preview.close()
        if problems:
            raise SinkError(
                f"{self.name}: {len(problems)} problem(s) on close: {problems[0]}"
            ) from problems[0]
