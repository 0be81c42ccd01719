"""Network streams FFmpeg opens (RTSP, RTMP, HTTP MJPEG, HLS, ...), decoded with PyAV.

Each connection attempt runs on a reader thread of its own: it opens the URL with
PyAV's open and read timeouts (FFmpeg checks them while it waits on the network, so
no call hangs for longer), demuxes, decodes, asks the sampler and hands sampled
pictures to the source thread. ``type: rtsp`` adds the RTSP transport choice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from labelcast.redact import Redactor, redact_url
from labelcast.sources.base import DecodeMode, StatusCallback
from labelcast.sources.live import Connection, LiveSource, LiveSourceConfigBase, Picture

if TYPE_CHECKING:
    import av.container

log = logging.getLogger(__name__)

OptionValue = str | int | float


class StreamSourceConfig(LiveSourceConfigBase):
    """Any URL FFmpeg opens as a live stream: reconnects when it ends, stalls or fails."""

    type: Literal["stream"] = "stream"
    url: Annotated[
        str,
        Field(
            min_length=1,
            repr=False,  # may hold a password
            description=(
                "Stream URL (rtsp://, rtmp://, http(s)://, ...); write special characters "
                "in a password URL-encoded (%40 for @). The password is never logged."
            ),
        ),
    ]
    open_timeout_s: Annotated[
        float,
        Field(gt=0, le=300, description="Longest wait for the stream to open, in seconds."),
    ] = 10.0
    read_timeout_s: Annotated[
        float,
        Field(gt=0, le=300, description="Longest wait for data once open, in seconds."),
    ] = 5.0
    decode: Annotated[
        DecodeMode,
        Field(description="all: decode every frame; keyframes: decode key frames only."),
    ] = "all"
    options: Annotated[
        dict[str, OptionValue],
        Field(
            default_factory=dict,
            repr=False,  # may hold a secret (headers, passphrase)
            description=(
                "FFmpeg options for the input, e.g. {analyzeduration: 500000, "
                "fflags: nobuffer}; they override labelcast's. Values of secret-looking "
                "keys (passphrase, headers, ...) are never logged."
            ),
        ),
    ]


class RtspSourceConfig(StreamSourceConfig):
    """An RTSP camera or server: TCP transport by default, reconnects when it ends or stalls."""

    type: Literal["rtsp"] = "rtsp"  # type: ignore[assignment]
    transport: Annotated[
        Literal["tcp", "udp"],
        Field(description="RTP transport: tcp (interleaved, the reliable default) or udp."),
    ] = "tcp"

    @field_validator("url")
    @classmethod
    def _rtsp_url(cls, url: str) -> str:
        if not url.lower().startswith(("rtsp://", "rtsps://")):
            # Never echo the value: it may hold a password.
            raise ValueError("an rtsp source's url must start with rtsp:// or rtsps://")
        return url


class PyAVLiveSource(LiveSource):
    """A live source read by FFmpeg through PyAV, one reader thread per connection."""

    def __init__(
        self,
        config: LiveSourceConfigBase,
        on_status: StatusCallback | None,
        *,
        location: str,
        input_format: str | None,
        options: Mapping[str, str],
        decode: DecodeMode,
        open_timeout_s: float,
        read_timeout_s: float,
        redactor: Redactor,
    ) -> None:
        super().__init__(config, on_status, redactor)
        self._location = location
        self._format = input_format
        self._options = dict(options)
        self._keyframes = decode == "keyframes"
        self._open_s = open_timeout_s
        self._read_s = read_timeout_s
        self._open_limit_s = open_timeout_s

    def _target(self) -> str:
        return redact_url(self._location)

    def _release_wait_s(self) -> float:
        # A reader notices ``close`` after its current blocking call, each time-limited.
        return max(self._open_s, self._read_s) + 1.0

    def _connect(self, conn: Connection) -> None:
        thread = threading.Thread(
            target=self._read,
            args=(conn,),
            name=f"source:{self.stream_id}:reader{conn.number}",
            daemon=True,  # an abandoned reader ends within its timeouts; never wait for it
        )
        thread.start()

    def _read(self, conn: Connection) -> None:
        """Open, demux and decode until the stream ends, fails or ``conn`` is closed."""
        # PyAV loads with the first stream opened, never with the config (see sources/).
        import av

        try:
            container = av.open(
                self._location,
                format=self._format,
                options=self._options,
                timeout=(self._open_s, self._read_s),
            )
        except Exception as exc:  # every failure, FFmpeg's or not, is a reason to retry
            elapsed = time.monotonic() - conn.started_at
            conn.finish(f"cannot open {self._target()}: {self._open_error(exc, elapsed)}")
            return
        try:
            conn.finish(self._pump(conn, container))
        except Exception as exc:
            conn.finish(f"{self._target()}: {self._read_error(exc)}")
        finally:
            container.close()
            conn.finish(None)

    def _pump(self, conn: Connection, container: av.container.InputContainer) -> str | None:
        """Feed ``conn`` from an open container; return why the stream ended."""
        import av.error

        if not container.streams.video:
            return f"{self._target()} has no video stream"
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if self._keyframes:
            # The decoder skips every frame that is not a key frame; packets still
            # count as signs of life for the stall watchdog.
            stream.codec_context.skip_frame = "NONKEY"
        conn.mark_open()
        bad_packets = 0
        for packet in container.demux(stream):
            if conn.closing.is_set():
                return None
            if self._keyframes and packet.size:
                conn.alive()
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as exc:
                # Lost packets (UDP) damage a few frames; the next key frame repairs them.
                bad_packets += 1
                if bad_packets == 1:
                    log.debug(
                        "stream %r: skipping a damaged packet (%s)",
                        self.stream_id,
                        self.describe_error(exc),
                    )
                continue
            for video_frame in decoded:
                pts = video_frame.time
                if pts is None:
                    # Before RTCP sync FFmpeg has no timestamp; the sampler re-anchors
                    # when real ones start.
                    pts = time.monotonic() - (conn.opened_at or conn.started_at)
                index = self._take(conn, pts, video_frame)
                if index is None:
                    continue
                if not conn.offer(Picture(index, pts, time.time(), video_frame)):
                    return None
        return f"{self._target()}: the stream ended"

    def _open_error(self, exc: BaseException, elapsed: float) -> str:
        import av.error

        # FFmpeg reports its own interrupt (our timeout) as various errors; the clock
        # says what happened.
        if isinstance(exc, av.error.ExitError) or elapsed >= self._open_s * 0.95:
            return f"no answer within {self._open_s:g} s"
        return self.describe_error(exc)

    def _read_error(self, exc: BaseException) -> str:
        import av.error

        if isinstance(exc, av.error.ExitError):
            return f"no data for {self._read_s:g} s"
        return self.describe_error(exc)


def ffmpeg_options(options: Mapping[str, OptionValue]) -> dict[str, str]:
    """Return the options as FFmpeg takes them: every value a string."""
    return {key: str(value) for key, value in options.items()}


class StreamSource(PyAVLiveSource):
    """Any URL FFmpeg opens, as a live stream (``type: stream``)."""

    def __init__(
        self,
        config: StreamSourceConfig,
        on_status: StatusCallback | None = None,
    ) -> None:
        super().__init__(
            config,
            on_status,
            location=config.url,
            input_format=None,
            options=self._ffmpeg_options(config),
            decode=config.decode,
            open_timeout_s=config.open_timeout_s,
            read_timeout_s=config.read_timeout_s,
            redactor=Redactor.for_url(config.url, options=config.options),
        )

    @staticmethod
    def _ffmpeg_options(config: StreamSourceConfig) -> dict[str, str]:
        options = ffmpeg_options(config.options)
        if isinstance(config, RtspSourceConfig):
            # The user's own options, rtsp_transport included, win.
            options = {"rtsp_transport": config.transport, **options}
        return options


class RtspSource(StreamSource):
    """An RTSP stream (``type: rtsp``): TCP or UDP transport (see ``RtspSourceConfig``)."""
