"""Video files (anything FFmpeg demuxes), decoded with PyAV."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Annotated, Literal

import av
import av.container
import av.error
import av.video.stream
import numpy as np
import numpy.typing as npt
from pydantic import Field

from labelcast.errors import SourceError
from labelcast.pipeline.frames import Frame, StreamState
from labelcast.pipeline.sampler import Sampler
from labelcast.sources.base import DecodeMode, SourceConfigBase

log = logging.getLogger(__name__)

# A file whose last decoded frame is more than this many frame periods short of the
# duration its container declares was cut off.
_TRUNCATION_FRAMES = 3


class FileSourceConfig(SourceConfigBase):
    """A video file, decoded from start to end without dropping frames."""

    type: Literal["file"] = "file"
    path: Annotated[str, Field(description="Path of the video file (relative to the working dir).")]
    decode: Annotated[
        DecodeMode,
        Field(description="all: decode every frame; keyframes: decode key frames only."),
    ] = "all"


class FileSource:
    """Decodes a video file and yields its sampled frames; never drops, ends with the file."""

    live = False

    def __init__(
        self,
        config: FileSourceConfig,
        on_status: Callable[[StreamState, str | None], None] | None = None,
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

    def __enter__(self) -> FileSource:
        if not self._path.is_file():
            raise SourceError(f"stream {self.stream_id!r}: video file not found: {self._path}")
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
        # With key frames only, how many frames will be decoded is not known up front.
        self.frame_count_hint = None if self._keyframes else self._stream.frames or None
        return self

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
        """Yield the sampled frames of the file in order; warn if the file is damaged."""
        container, stream = self._container, self._stream
        if container is None or stream is None:
            raise RuntimeError("FileSource.frames() called outside its context")
        rate = float(stream.average_rate or 25)
        last_pts: float | None = None
        last_packet_pts: float | None = None
        bad_packets = 0
        try:
            for packet in container.demux(stream):
                if self._keyframes and packet.pts is not None and packet.time_base is not None:
                    # The last key frame is up to a GOP before the end: judge truncation
                    # by the packets read instead.
                    packet_pts = float(packet.pts * packet.time_base)
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
                    index = self.frames_decoded
                    self.frames_decoded += 1
                    pts = video_frame.time if video_frame.time is not None else index / rate
                    last_pts = pts
                    if not self._sampler.take(index, pts):
                        continue
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
            return
        if bad_packets > 1:
            log.warning(
                "stream %r: skipped %d damaged packets in %s",
                self.stream_id,
                bad_packets,
                self._path,
            )
        self._warn_if_cut_short(stream, last_packet_pts if self._keyframes else last_pts, rate)

    def _warn_if_cut_short(
        self, stream: av.video.stream.VideoStream, last_pts: float | None, rate: float
    ) -> None:
        if stream.duration is None or stream.time_base is None:
            return
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        declared_end = start + float(stream.duration * stream.time_base)
        reached = (last_pts if last_pts is not None else start) + 1.0 / rate
        if declared_end - reached > _TRUNCATION_FRAMES / rate:
            log.warning(
                "stream %r: %s ends at %.2f s but declares %.2f s; the file is truncated "
                "or damaged, the stream ends there",
                self.stream_id,
                self._path,
                reached,
                declared_end,
            )
