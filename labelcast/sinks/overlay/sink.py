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

import logging
import socket
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from labelcast.errors import SinkError
from labelcast.frames import (
    ChangeEvent,
    Frame,
    LabelEvent,
    LabelState,
    StreamStatus,
    UnsampledFrame,
)
from labelcast.sinks.base import LocalSink
from labelcast.sinks.overlay.config import OverlaySinkConfig
from labelcast.sinks.overlay.drawing import Highlight, RegionMark, describe_change, draw_overlay
from labelcast.sinks.overlay.preview import Preview
from labelcast.util.http import address_family, parse_bind
from labelcast.util.paths import existing_ancestor, writable_folder

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    # PyAV loads with the first file written (see _write).
    from labelcast.sinks.overlay.recording import Recording

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    """An event held back until we know whether it confirmed a change (then it is highlighted)."""

    event: LabelEvent
    frame: Frame


class OverlaySink(LocalSink):
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
        # Each stream's regions with their latest labels, drawn on every frame written.
        self._marks: dict[str, dict[str, RegionMark]] = {}
        self._recordings: dict[str, Recording] = {}
        self._preview = Preview(config.preview) if config.preview is not None else None

    @staticmethod
    def check(config: OverlaySinkConfig) -> list[str]:
        """Tell ``labelcast check`` whether the files can be written and the preview can listen."""
        problems: list[str] = []
        if config.output is not None:
            fixed = config.output.split("{", 1)[0]
            folder = Path(fixed or ".")
            if not fixed.endswith(("/", "\\")):
                folder = folder.parent
            if not writable_folder(folder):
                problems.append(
                    f"overlay sink: {existing_ancestor(folder)} is not writable "
                    f"(output {config.output})"
                )
        label = None if config.preview is None else config.preview.label
        if label is not None:
            # The page moves pictures out of one folder into the other.
            for key, where in (("snapshots", label.snapshots), ("data", label.data)):
                if not writable_folder(Path(where)):
                    problems.append(
                        f"overlay sink: preview.label.{key}: {existing_ancestor(Path(where))} "
                        "is not writable"
                    )
        if config.preview is not None:
            host, port = parse_bind(config.preview.bind, "preview.bind")
            family = address_family(host)
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
        held = self._pending.get(event.stream)
        if event.region is not None:
            self._mark(event, frame)
            if held is not None and held.frame.index == frame.index:
                # Another picture of the frame already held: it is drawn with this label.
                if self._preview is not None:
                    self._preview.update(event.stream, self._draw(held.event, held.frame), event)
                return
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
        confirming = (
            pending is not None
            and pending.event.seq == change.seq
            and pending.event.region == change.region
        )
        # Not the held frame (it was dropped): the highlight begins with the next frame.
        self._highlights[change.stream] = Highlight(describe_change(change), None)
        if self._preview is not None:
            self._preview.set_state(change.stream, state, change.region)
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
        marks = list(self._marks.get(event.stream, {}).values())
        return draw_overlay(
            frame.image, event, top_k=self._config.top_k, highlight=text, regions=marks
        )

    def _mark(self, event: LabelEvent, frame: Frame) -> None:
        """Remember a region's box and latest label, to draw on the stream's frames."""
        box = next((s.box for s in frame.subjects if s.region == event.region), None)
        if box is None or event.region is None:
            return
        top = event.labels[0] if event.labels else None
        text = "(no label)" if top is None else f"{top.label} {top.score:.2f}"
        self._marks.setdefault(event.stream, {})[event.region] = RegionMark(event.region, box, text)

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
        import numpy as np

        from labelcast.sinks.overlay.recording import Recording

        recording = self._recordings.get(event.stream)
        if recording is not None and self._must_rotate(recording, width, height, frame.pts):
            del self._recordings[event.stream]
            recording.close()
            recording = None
        if recording is None:
            recording = Recording(
                self._path_for(event.stream), width, height, self._config.preset, self._config.crf
            )
            self._recordings[event.stream] = recording
        recording.write(np.ascontiguousarray(image), frame.pts)

    def _must_rotate(self, recording: Recording, width: int, height: int, pts: float) -> bool:
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
