"""The snapshot sink: pictures worth labelling saved as JPEG, each with a JSON sidecar.

For every subject (a stream's whole frame, or a region) it saves the picture that
confirmed a change of its smoothed label, pictures whose top label scores low, and one
picture every ``interval_s`` of video time, into ``<dir>/<subject>/<predicted label>/``
(see docs/teach.md). Encoding and writing happen on the sink's own thread; the sink is
not lossless, so a disk slower than the pictures makes the pipeline drop (and count)
snapshots, never wait. A disk that fails (full, read-only) is one logged error, then
silence until a picture is written again; meanwhile each failed picture is counted and
the sink reports the problem to readiness.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from labelcast.errors import ReportedSinkError
from labelcast.frames import ChangeEvent, Frame, LabelEvent, LabelState, StreamStatus
from labelcast.sinks.pictures import LatestPictures, subject_picture
from labelcast.sinks.snapshot.config import SnapshotReason, SnapshotSinkConfig
from labelcast.sinks.snapshot.folder import SnapshotFolder
from labelcast.util.jpeg import encode_jpeg
from labelcast.util.paths import ensure_folder, existing_ancestor, writable_folder
from labelcast.util.snapshots import SNAPSHOT_SCHEMA, label_folder

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)


class SnapshotSink:
    """Saves the pictures ``on`` asks for under ``dir``; not lossless.

    A full or read-only disk is reported once (log, ``problem``); each picture lost is
    counted as failed, and the pipeline goes on.
    """

    lossless = False
    all_frames = False

    def __init__(self, config: SnapshotSinkConfig) -> None:
        self.config = config
        self.name = f"snapshot:{config.dir}"
        self._on = frozenset(config.on)
        self._folder = SnapshotFolder(Path(config.dir), config.max_files)
        self._pictures = LatestPictures()
        # subject -> pts of its last interval snapshot
        self._interval_at: dict[str, float] = {}
        # subject -> (seq, picture path, sidecar) of its last snapshot: a change the same
        # picture confirmed only renames the reason.
        self._last: dict[str, tuple[int, Path, dict[str, Any]]] = {}
        self._problem: str | None = None
        self._lost = 0  # pictures not written since writing last failed
        self.saved = 0
        self.failed = 0
        try:
            ensure_folder(self._folder.root)
        except OSError as exc:
            self._report(exc)

    # -- health (any thread) ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether pictures can be written: False from a failed write until one succeeds."""
        return self._problem is None

    @property
    def problem(self) -> str | None:
        """Why pictures cannot be written (the last failure), or None."""
        return self._problem

    @property
    def backlog(self) -> int | None:
        """None: the sink keeps no outbox."""
        return None

    # -- the sink protocol (the sink's thread) ---------------------------------------------

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Save the event's picture if its score is low or its interval is due."""
        if "change" in self._on:
            self._pictures.remember(event, frame)
        reason = self._reason(event)
        if reason is not None:
            self._save(event, subject_picture(frame, event.region), reason)

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Save the picture that confirmed a ``start`` or ``change`` (not an ``end``).

        An ``end`` (no label leads any more, or the stream ended) is no new scene: its
        pictures are ``low_score`` ones.
        """
        if "change" not in self._on or change.type == "end":
            return
        last = self._last.get(change.subject)
        if last is not None and last[0] == change.seq:
            # Already saved (low score, interval): the reason is now the change.
            seq, picture, sidecar = last
            sidecar = {**sidecar, "reason": "change"}
            self._last[change.subject] = (seq, picture, sidecar)
            self._write(lambda: self._folder.rewrite_sidecar(picture, sidecar))
            return
        found = self._pictures.confirming(change)
        if found is not None:
            self._save(*found, "change")

    def send_status(self, status: StreamStatus) -> None:
        """Stream states are not pictures: this sink ignores them."""

    def close(self) -> None:
        """Log what was saved and lost (pictures are written as they come: nothing to flush)."""
        if self.saved or self.failed:
            log.info(
                "%s: %d snapshot(s) saved, %d failed, %d removed to keep max_files %d",
                self.name,
                self.saved,
                self.failed,
                self._folder.removed,
                self.config.max_files,
            )

    @staticmethod
    def check(config: SnapshotSinkConfig) -> list[str]:
        """Tell ``labelcast check`` whether the folder can be made and written."""
        folder = Path(config.dir)
        if not writable_folder(folder):
            where = existing_ancestor(folder)
            return [f"snapshot sink: {where} is not writable (dir {config.dir})"]
        return []

    # -- deciding and saving ---------------------------------------------------------------

    def _reason(self, event: LabelEvent) -> SnapshotReason | None:
        """Why the event's picture is saved now (a change comes later), or None."""
        interval_due = False
        if "interval" in self._on:
            last = self._interval_at.get(event.subject)
            # A clock that went back (a live source reconnected) starts the interval afresh.
            interval_due = (
                last is None or event.pts < last or event.pts - last >= self.config.interval_s
            )
            if interval_due:
                self._interval_at[event.subject] = event.pts
        top = event.labels[0].score if event.labels else None
        if "low_score" in self._on and (top is None or top < self.config.low_score):
            return "low_score"
        return "interval" if interval_due else None

    def _save(
        self, event: LabelEvent, picture: npt.NDArray[np.uint8], reason: SnapshotReason
    ) -> None:
        label = event.labels[0].label if event.labels else None
        sidecar: dict[str, Any] = {
            "schema": SNAPSHOT_SCHEMA,
            "reason": reason,
            "stream": event.stream,
            "region": event.region,
            "label": label,
            "event": event.to_dict(),
        }
        jpeg = encode_jpeg(picture, self.config.jpeg_quality)

        def write() -> None:
            path = self._folder.save(
                event.subject, label_folder(label), event.captured_at, jpeg, sidecar
            )
            self._last[event.subject] = (event.seq, path, sidecar)
            self.saved += 1

        self._write(write)

    def _write(self, write: Callable[[], None]) -> None:
        """Run one write; a failure is logged once per outage, counted and raised as reported."""
        try:
            write()
        except OSError as exc:
            self.failed += 1
            self._lost += 1
            self._report(exc)
            raise ReportedSinkError(f"{self.name}: {self._problem}") from exc
        if self._problem is not None:
            log.warning("%s: writing snapshots again (%d lost meanwhile)", self.name, self._lost)
            self._problem = None
            self._lost = 0

    def _report(self, exc: OSError) -> None:
        """Log a write failure, once until writing works again."""
        if self._problem is not None:
            return
        where = exc.filename or self.config.dir
        self._problem = f"cannot write snapshots to {where} ({exc.strerror or exc})"
        log.error(
            "%s: %s; the pipeline goes on without snapshots (logged again once they are "
            "written again)",
            self.name,
            self._problem,
        )
