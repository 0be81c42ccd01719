"""Drawing a label event's banner on its frame, and the line shown after a change.

NumPy and Pillow are imported inside the functions: the overlay's config (and so the
config file) loads without them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from labelcast.frames import Box, ChangeEvent, LabelEvent, format_timestamp

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from PIL import ImageFont

_BANNER_BG = (0, 0, 0)
_CHANGE_BG = (200, 90, 0)
_CHANGE_BORDER = (255, 160, 0)


@dataclass
class Highlight:
    """A change to show on frames: its text, until which stream time (pts, seconds).

    ``until_pts`` is None until the first highlighted frame fixes it.
    """

    text: str
    until_pts: float | None


@dataclass(frozen=True)
class RegionMark:
    """A region to draw: its id, its box (pixels) and the text of its latest label."""

    region: str
    box: Box
    text: str


_REGION_COLOUR = (0, 220, 255)


_FONTS: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    from PIL import ImageFont

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
    regions: Sequence[RegionMark] = (),
) -> npt.NDArray[np.uint8]:
    """Return a copy of ``image`` with the event's banner drawn on it (the input is untouched).

    The banner spans the top of the frame: a darkened band (orange after a change) with
    the stream id and capture time on the first line and the top labels with scores on
    the second (the whole frame's: none when a region's event brought the frame); its
    height scales with the frame's. Each of ``regions`` is outlined with its label
    inside its top edge. Only the banner and the labels are converted to Pillow images,
    so the cost is bounded by their size.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    height, width = image.shape[:2]
    out: npt.NDArray[np.uint8] = image.copy()
    size = max(10, round(height / 24))
    pad = max(2, size // 3)
    lines = [f"{event.stream}  {format_timestamp(event.captured_at)}  #{event.seq}"]
    if event.region is None:
        labels = "   ".join(f"{lb.label} {lb.score:.2f}" for lb in event.labels[:top_k])
        lines.append(labels or "(no label)")
    for mark in regions:
        _draw_region(out, mark, size)
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


def _draw_region(out: npt.NDArray[np.uint8], mark: RegionMark, size: int) -> None:
    """Outline a region's box on ``out`` and write its label inside the box's top edge."""
    import numpy as np
    from PIL import Image, ImageDraw

    x, y, w, h = mark.box
    edge = max(2, size // 6)
    colour = np.array(_REGION_COLOUR, np.uint8)
    box = out[y : y + h, x : x + w]
    box[:edge], box[-edge:], box[:, :edge], box[:, -edge:] = colour, colour, colour, colour
    label_h = min(h - edge, size + 4)
    if label_h <= 0 or w <= 2 * edge:
        return
    band = box[edge : edge + label_h, edge : w - edge]
    band[:] = (band.astype(np.float32) * 0.3).astype(np.uint8)
    canvas = Image.fromarray(band)
    ImageDraw.Draw(canvas).text(
        (2, 2), f"{mark.region}: {mark.text}", fill=(255, 255, 255), font=_font(size)
    )
    band[:] = np.asarray(canvas)


def describe_change(change: ChangeEvent) -> str:
    """Return the line drawn on frames after a change of a stream's (or region's) label."""
    where = f"{change.region}: " if change.region is not None else ""
    if change.type == "start":
        return f"{where}START {change.label}"
    if change.type == "end":
        return f"{where}END {change.previous}"
    return f"{where}CHANGE {change.previous} -> {change.label}"
