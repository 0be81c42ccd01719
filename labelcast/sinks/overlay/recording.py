"""Annotated frames to H.264 MP4 files, one open file per stream (PyAV and x264)."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from labelcast.errors import SinkError
from labelcast.util.paths import ensure_folder

log = logging.getLogger(__name__)

_TIME_BASE = Fraction(1, 1000)  # file timestamps in milliseconds of the stream's clock


class Recording:
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
            ensure_folder(path.parent)
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
        """Encode one annotated frame (even width and height) at stream time ``pts``."""
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
        """Return the stream time from the file's first frame to ``pts``."""
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
