"""A stream's subjects: its regions cut out of each sampled frame, and their change gates.

The cut is a view of the decoded frame (no copy); the classifier's preprocessing
reads only the region's pixels when it resizes them onto the model's device.
"""

from __future__ import annotations

from dataclasses import replace

from labelcast.config import SourceConfig
from labelcast.errors import SourceError
from labelcast.frames import Box, Frame, Subject
from labelcast.pipeline.gate import ChangeGate


class SubjectPicker:
    """Chooses the pictures of a stream's frames to classify: whole frame, regions, gated.

    ``skipped`` counts, per region (None: the whole frame), the pictures its gate
    found unchanged (the stream's counters, kept across restarts of its source).
    """

    def __init__(self, config: SourceConfig, skipped: dict[str | None, int]) -> None:
        self._stream = config.id
        self._regions = list(config.regions)
        self._whole = config.classifies_whole_frame
        self._gates: dict[str | None, ChangeGate] = {}
        gates = {None: config.gate} | {
            region.id: region.gate or config.gate for region in self._regions
        }
        for region, gate in gates.items():
            if gate is not None and (region is not None or self._whole):
                self._gates[region] = ChangeGate(gate)
        self._size: tuple[int, int] | None = None
        self._boxes: list[tuple[str | None, Box | None]] = []
        self.skipped = skipped

    @property
    def passes_everything(self) -> bool:
        """Whether every frame goes on whole and ungated (a source without regions or gate)."""
        return not self._regions and not self._gates

    def pick(self, frame: Frame) -> Frame:
        """Return the frame with its subjects: those to classify, those found unchanged.

        Raises SourceError if a region's box falls outside the frame.
        """
        if self.passes_everything:
            return frame
        height, width = frame.image.shape[:2]
        if self._size != (width, height):
            self._boxes = self._resolve(width, height)
            self._size = (width, height)
        subjects: list[Subject] = []
        unchanged: list[str | None] = []
        for region, box in self._boxes:
            subject = Subject(region, box)
            gate = self._gates.get(region)
            if gate is not None:
                skipped = gate.offer(frame.picture(subject), frame.pts)
                if skipped is None:
                    self.skipped[region] = self.skipped.get(region, 0) + 1
                    unchanged.append(region)
                    continue
                subject = replace(subject, skipped=skipped)
            subjects.append(subject)
        return replace(frame, subjects=tuple(subjects), unchanged=tuple(unchanged))

    def _resolve(self, width: int, height: int) -> list[tuple[str | None, Box | None]]:
        boxes: list[tuple[str | None, Box | None]] = [(None, None)] if self._whole else []
        for region in self._regions:
            try:
                boxes.append((region.id, region.pixels(width, height)))
            except ValueError as exc:
                raise SourceError(f"stream {self._stream!r}: region {region.id!r}: {exc}") from None
        return boxes
