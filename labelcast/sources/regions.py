"""Config of a source's subjects: its named regions and its change gate (docs/regions.md).

Models only (no I/O, no numpy): the pipeline cuts the regions out of each frame and
gates them (``labelcast.pipeline.regions``, ``labelcast.pipeline.gate``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from labelcast.frames import Box
from labelcast.labels.config import LabelsConfig, SmoothingConfig


class GateConfig(BaseModel):
    """The change gate: a picture like the last one classified is not classified again."""

    model_config = ConfigDict(extra="forbid")

    min_change: Annotated[
        float,
        Field(
            ge=0.0,
            le=1.0,
            description="Share of the picture's cells (a grid of up to 32 x 32) whose "
            "brightness must have changed since the last picture classified for it to be "
            "classified again; 0 classifies every sampled picture.",
        ),
    ] = 0.03
    max_interval_s: Annotated[
        float,
        Field(
            gt=0.0,
            description="Classify a picture at least this often (seconds of the stream's "
            "clock) even when nothing changed: a heartbeat.",
        ),
    ] = 60.0


class RegionConfig(BaseModel):
    """A named box of a fixed camera's frame, classified as a subject of its own."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_-]+$",
            max_length=64,
            description="Region id (letters, digits, - and _), unique in its source; used "
            "in event ids and MQTT topics.",
        ),
    ]
    box: Annotated[
        tuple[float, float, float, float],
        Field(
            description="x, y, width, height: pixels of the decoded frame, or fractions of "
            "its width and height when all four are at most 1.0."
        ),
    ]
    labels: Annotated[
        LabelsConfig | None,
        Field(description="This region's label rules: keys set here replace its source's."),
    ] = None
    smoothing: Annotated[
        SmoothingConfig | None,
        Field(description="This region's smoothing: keys set here replace its source's."),
    ] = None
    gate: Annotated[
        GateConfig | None,
        Field(description="This region's change gate (default: its source's gate)."),
    ] = None

    @field_validator("box")
    @classmethod
    def _box_is_a_box(
        cls, box: tuple[float, float, float, float]
    ) -> tuple[float, float, float, float]:
        x, y, width, height = box
        if min(box) < 0:
            raise ValueError("no value may be negative")
        if width <= 0 or height <= 0:
            raise ValueError("width and height must be more than 0")
        if max(box) <= 1.0:
            if x + width > 1.0 + 1e-9 or y + height > 1.0 + 1e-9:
                raise ValueError("a box in fractions must lie inside the frame (x + width <= 1)")
        elif any(value != int(value) for value in box):
            raise ValueError("a box in pixels takes whole numbers (all four <= 1.0: fractions)")
        return box

    @property
    def fractions(self) -> bool:
        """Whether ``box`` is in fractions of the frame's width and height."""
        return max(self.box) <= 1.0

    def pixels(self, width: int, height: int) -> Box:
        """Return the box in pixels of a ``width`` x ``height`` frame.

        Raises ValueError, naming the frame size, if it does not lie inside that frame.
        """
        x, y, w, h = self.box
        if self.fractions:
            # Round the edges, not the size, so adjacent fractional boxes share an edge.
            left, top = round(x * width), round(y * height)
            right, bottom = round((x + w) * width), round((y + h) * height)
            box = (left, top, max(1, right - left), max(1, bottom - top))
        else:
            box = (int(x), int(y), int(w), int(h))
        if box[0] + box[2] > width or box[1] + box[3] > height:
            shown = [int(v) if not self.fractions else v for v in self.box]
            raise ValueError(f"box {shown} falls outside the {width}x{height} frame")
        return box
