"""Per-stream frame sampling: which decoded frames get classified.

The sampler sees only a frame's index and presentation time, so a source asks it
before paying for colour conversion.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A frame whose pts is within this much of the next slot counts as on time; it absorbs
# the rounding of container time bases (1/90000 s, milliseconds) without ever taking
# two frames for one slot.
_SLOT_TOLERANCE_S = 1e-3
# A pts jump backwards, or forwards by more than this, is a discontinuity (a live
# source reconnected, a stream wrapped): sampling re-anchors instead of bursting.
_MAX_PTS_JUMP_S = 5.0


class SampleConfig(BaseModel):
    """How often a stream is classified: ``fps`` by presentation time, or ``every`` n-th frame."""

    model_config = ConfigDict(extra="forbid")

    fps: Annotated[
        float | None,
        Field(gt=0, description="Classify this many frames per second of video time."),
    ] = None
    every: Annotated[
        int | None,
        Field(ge=1, description="Classify every n-th decoded frame (1 = every frame)."),
    ] = None

    @model_validator(mode="after")
    def _one_rule(self) -> SampleConfig:
        if self.fps is not None and self.every is not None:
            raise ValueError("set either fps or every, not both")
        if self.fps is None and self.every is None:
            self.fps = 2.0
        return self


class Sampler:
    """Decides, frame by frame, whether a stream's decoded frame is classified."""

    def __init__(self, config: SampleConfig) -> None:
        self._period = 1.0 / config.fps if config.fps is not None else None
        self._every = config.every
        self._next_slot: float | None = None
        self._last_pts: float | None = None

    def take(self, index: int, pts: float) -> bool:
        """Return True if the frame with this decode ``index`` and ``pts`` (seconds) is sampled."""
        if self._period is None:
            assert self._every is not None
            return index % self._every == 0
        last, self._last_pts = self._last_pts, pts
        if self._next_slot is None or last is None or not 0 <= pts - last <= _MAX_PTS_JUMP_S:
            self._next_slot = pts
        if pts + _SLOT_TOLERANCE_S < self._next_slot:
            return False
        while self._next_slot <= pts + _SLOT_TOLERANCE_S:
            self._next_slot += self._period
        return True
