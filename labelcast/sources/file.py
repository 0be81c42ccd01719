"""Video files (anything FFmpeg demuxes), decoded with PyAV."""

from __future__ import annotations

import logging
import stat
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from labelcast.errors import SourceError
from labelcast.frames import Frame, UnsampledFrame
from labelcast.sources.base import DecodeMode, SourceConfigBase, StatusCallback, UnsampledTap
from labelcast.sources.sampler import Sampler

if TYPE_CHECKING:
    # Annotations only: PyAV and NumPy load when a file is opened, not with the config.
    import av.container
    import av.video.stream
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

# A file whose last decoded frame is more than this many frame periods short of the
# duration its container declares was cut off.
_TRUNCATION_FRAMES = 3
# The packet sizes of MPEG transport streams (plain, M2TS with timecodes, with FEC): a
# transport stream declares no duration, but one cut mid-packet is not a whole number of them.
_TS_PACKET_SIZES = (188, 192, 204)
# A real-time source this far behind its clip's clock says so (once): decoding, or a
# consumer that makes it wait, cannot keep up with real time.
_BEHIND_WARNING_S = 2.0


class FileSourceConfig(SourceConfigBase):
    """A video file, decoded from start to end without dropping frames."""

    type: Literal["file"] = "file"
    path: Annotated[str, Field(description="Path of the video file (relative to the working dir).")]
    decode: Annotated[
        DecodeMode,
        Field(description="all: decode every frame; keyframes: decode key frames only."),
    ] = "all"
    realtime: Annotated[
        bool,
        Field(
            description="Release frames at the clip's own rate (by their timestamps), like "
            "a camera; the stream is then live: when the classifier is behind, the oldest "
            "queued frame is dropped and counted."
        ),
    ] = False
    loop: Annotated[
        bool,
        Field(
            description="Start again at the end of the file, until the pipeline stops; "
            "timestamps (pts) and frame indexes keep increasing across rounds."
        ),
    ] = False


class FileSource:
    """Decodes a video file and yields its sampled frames.

    By default it never drops and ends with the file. With ``realtime`` it releases
    frames at the clip's own rate and is live (see ``live_for``); with ``loop`` it
    starts again at the end until ``stop()``.
    """

    live = False

    @classmethod
    def live_for(cls, config: FileSourceConfig) -> bool:
        """Whether a stream of ``config`` is live: a file replayed in real time is."""
        return config.realtime

    def __init__(
        self,
        config: FileSourceConfig,
        on_status: StatusCallback | None = None,
    ) -> None:
        # A file is online while open and offline once read: the runner reports both,
        # so ``on_status`` (for states in between, like reconnecting) goes unused here.
        del on_status
        self.stream_id = config.id
        self._path = Path(config.path)
        self._sampler = Sampler(config.sample)
        self._keyframes = config.decode == "keyframes"
        self._container: av.container.InputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self.frames_decoded = 0
        self.frame_count_hint: int | None = None
        self.frame_size: tuple[int, int] | None = None
        self.on_unsampled: UnsampledTap | None = None
        self.live = config.realtime
        self._loop = config.loop
        self._stopped = threading.Event()
        self._pacer = _Pacer(self._stopped, self.stream_id) if config.realtime else None
        # Added to every pts of the current round, so that a looped file's pts go on.
        self._pts_offset = 0.0

    def __enter__(self) -> FileSource:
        self._open()
        stream = self._stream
        assert stream is not None  # _open() set it
        # With key frames only, how many frames will be decoded is not known up front;
        # a looped file has no end.
        known = not self._keyframes and not self._loop
        self.frame_count_hint = (stream.frames or None) if known else None
        width, height = stream.codec_context.width, stream.codec_context.height
        self.frame_size = (width, height) if width > 0 and height > 0 else None
        return self

    def _open(self) -> None:
        import av

        self._check_is_a_file()
        try:
            self._container = av.open(str(self._path), mode="r")
        except av.error.FFmpegError as exc:
            raise SourceError(
                f"stream {self.stream_id!r}: {self._path} is not a readable video file ({exc})"
            ) from exc
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"stream {self.stream_id!r}: {self._path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        if self._keyframes:
            self._stream.codec_context.skip_frame = "NONKEY"

    def _check_is_a_file(self) -> None:
        """Raise SourceError saying what the path is when it is not a regular file.

        ``stat`` rather than opening: opening a named pipe would wait for a writer.
        """
        try:
            mode = self._path.stat().st_mode
        except FileNotFoundError as exc:
            raise SourceError(
                f"stream {self.stream_id!r}: video file not found: {self._path}"
            ) from exc
        except OSError as exc:
            raise SourceError(
                f"stream {self.stream_id!r}: cannot read {self._path} ({exc.strerror})"
            ) from exc
        if stat.S_ISREG(mode):
            return
        hint = ""
        if stat.S_ISDIR(mode):
            what = "a directory"
        elif stat.S_ISFIFO(mode):
            what = "a named pipe (FIFO)"
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            what, hint = "a device", " (a V4L2 camera is a source of type: camera)"
        elif stat.S_ISSOCK(mode):
            what = "a socket"
        else:
            what = "a special file"
        raise SourceError(
            f"stream {self.stream_id!r}: {self._path} is {what}, not a video file{hint}"
        )

    def stop(self) -> None:
        """Make ``frames()`` return soon: within one packet, or at once while pacing."""
        self._stopped.set()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def frames(self) -> Iterator[Frame]:
        """Yield the sampled frames of the file in order; warn if the file is damaged.

        With ``loop`` the file starts again at its end (pts going on) until ``stop()``;
        a round that decodes nothing, or a damaged file, ends the stream instead.
        """
        if self._container is None or self._stream is None:
            raise RuntimeError("FileSource.frames() called outside its context")
        first_round = True
        while True:
            span = yield from self._round(first_round)
            if not self._loop or span is None or self._stopped.is_set():
                return
            first_round = False
            self._pts_offset += span
            if self._container is not None:
                self._container.close()
            self._open()

    def _round(self, first_round: bool) -> Generator[Frame, None, float | None]:
        """Yield the sampled frames of one pass over the file.

        Returns how long the pass lasts in pts (first frame to the end of the last), or
        None when the stream must end here: stopped, damaged, or nothing decoded.
        """
        import av.error

        container, stream = self._container, self._stream
        assert container is not None and stream is not None  # frames() checked
        rate = float(stream.average_rate or 25)
        first_pts: float | None = None
        last_pts: float | None = None
        last_packet_pts: float | None = None
        bad_packets = 0
        # Frames FFmpeg decoded with errors concealed; a cut-off file ends with one.
        damaged_frames = 0
        last_frame_damaged = False
        last_sampled = -1
        try:
            for packet in container.demux(stream):
                if self._stopped.is_set():
                    return None
                if packet.pts is not None and packet.time_base is not None:
                    # The last key frame is up to a GOP before the end: with key frames
                    # only, truncation and a round's length go by the packets read.
                    packet_pts = float(packet.pts * packet.time_base) + self._pts_offset
                    last_packet_pts = max(last_packet_pts or packet_pts, packet_pts)
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as exc:
                    bad_packets += 1
                    if bad_packets == 1:
                        log.warning(
                            "stream %r: %s has a damaged packet near %.2f s (%s); skipping it",
                            self.stream_id,
                            self._path,
                            last_pts or 0.0,
                            exc,
                        )
                    continue
                for video_frame in decoded:
                    last_frame_damaged = video_frame.is_corrupt
                    damaged_frames += last_frame_damaged
                    index = self.frames_decoded
                    self.frames_decoded += 1
                    pts = video_frame.time if video_frame.time is not None else index / rate
                    pts += self._pts_offset
                    if first_pts is None:
                        first_pts = pts
                    last_pts = pts
                    if self._pacer is not None and not self._pacer.wait_until(pts):
                        return None  # stopped while waiting for the frame's time
                    if not self._sampler.take(index, pts):
                        tap = self.on_unsampled
                        if tap is not None:
                            tap(
                                UnsampledFrame(
                                    self.stream_id,
                                    index,
                                    pts,
                                    time.time(),
                                    last_sampled,
                                    video_frame,
                                )
                            )
                        continue
                    last_sampled = index
                    image: npt.NDArray[np.uint8] = video_frame.to_ndarray(format="rgb24")  # type: ignore[assignment]
                    yield Frame(self.stream_id, index, pts, time.time(), image)
        except av.error.FFmpegError as exc:
            log.warning(
                "stream %r: %s is damaged after %.2f s (%s); the stream ends there",
                self.stream_id,
                self._path,
                last_pts or 0.0,
                exc,
            )
            return None
        if bad_packets > 1:
            log.warning(
                "stream %r: skipped %d damaged packets in %s",
                self.stream_id,
                bad_packets,
                self._path,
            )
        if damaged_frames > last_frame_damaged:
            log.warning(
                "stream %r: %s has %d damaged frames (decoded with the damage concealed)",
                self.stream_id,
                self._path,
                damaged_frames - last_frame_damaged,
            )
        if first_round:
            last = last_packet_pts if self._keyframes else last_pts
            self._warn_if_cut_short(stream, last, rate, last_frame_damaged)
        if first_pts is None or last_pts is None:
            if self._loop:
                log.warning("stream %r: %s has no frames to loop", self.stream_id, self._path)
            return None
        end = max(last_pts, last_packet_pts or last_pts) + 1.0 / rate
        return end - first_pts

    def _warn_if_cut_short(
        self,
        stream: av.video.stream.VideoStream,
        last_pts: float | None,
        rate: float,
        last_frame_damaged: bool,
    ) -> None:
        """Warn once if the file was cut off: by its last frame, last packet or duration."""
        time_base = stream.time_base
        start = float(stream.start_time * time_base) if stream.start_time and time_base else 0.0
        reached = (last_pts if last_pts is not None else start) + 1.0 / rate
        if last_frame_damaged:
            how = "in a frame cut short"
        elif self._ends_mid_ts_packet():
            how = "in a transport stream packet cut short"
        elif stream.duration is not None and time_base is not None:
            declared_end = start + float(stream.duration * time_base)
            if declared_end - reached <= _TRUNCATION_FRAMES / rate:
                return
            how = f"but declares {declared_end:.2f} s"
        else:
            return
        log.warning(
            "stream %r: %s ends at %.2f s %s; the file is truncated or damaged, "
            "the stream ends there",
            self.stream_id,
            self._path,
            reached,
            how,
        )

    def _ends_mid_ts_packet(self) -> bool:
        """Whether the file is a transport stream whose last packet is incomplete."""
        if self._container is None or self._container.format.name != "mpegts":
            return False
        try:
            size = self._path.stat().st_size
        except OSError:
            return False
        return all(size % packet_size for packet_size in _TS_PACKET_SIZES)


class _Pacer:
    """Holds frames back until their time comes, by pts, from the first one on: a camera.

    The first frame sets the clock; each later frame is released ``pts - first pts``
    seconds after it. A frame already due (decoding, or whoever takes the frames, was
    slow) is released at once; the source warns once when that lag grows large.
    """

    def __init__(self, stopped: threading.Event, stream_id: str) -> None:
        self._stopped = stopped
        self._stream_id = stream_id
        self._origin: float | None = None  # monotonic time at which pts 0 is due
        self._warned = False

    def wait_until(self, pts: float) -> bool:
        """Wait until the frame at ``pts`` is due; return False if stopped meanwhile."""
        now = time.monotonic()
        if self._origin is None:
            self._origin = now - pts
        delay = self._origin + pts - now
        if delay > 0:
            return not self._stopped.wait(delay)
        if -delay > _BEHIND_WARNING_S and not self._warned:
            self._warned = True
            log.warning(
                "stream %r: %.1f s behind real time (decoding, or the pipeline, cannot keep "
                "up); frames are released as soon as they are decoded",
                self._stream_id,
                -delay,
            )
        return not self._stopped.is_set()
