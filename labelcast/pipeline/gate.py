"""The change gate: whether a subject's picture differs enough from the last one classified.

The measure (docs/regions.md, "Change gate"): the picture is shrunk to a grid of up to
32 x 32 cells of mean brightness, from a strided sample of at most ~128 x 128 pixels
(so the cost does not grow with the resolution). Against the grid of the last picture
classified, each cell's difference is taken less the median difference of all cells
(light that drifts or a camera's exposure moves every cell alike); a cell changed
when what is left exceeds ``CELL_THRESHOLD`` of the full scale. The picture changed
when the share of changed cells reaches ``min_change``. Averaging 16 or more samples per
cell keeps sensor noise and compression flicker far below the cell threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from labelcast.sources.regions import GateConfig

# A cell changed when its brightness moved this much (of 0..255) more than the median
# cell: sensor noise of sigma 6 re-encoded as H.264 changed no cell (bench/gate.py,
# docs/regions.md), an object of 1% of a frame changes about 1% of the cells.
CELL_THRESHOLD = 12.0
_MAX_CELLS = 32
_SAMPLES_PER_CELL = 4  # per side: a cell averages up to 4 x 4 samples


def thumbnail(picture: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Return the picture's grid of mean brightness (float32, up to 32 x 32 cells)."""
    height, width = picture.shape[:2]
    rows = max(1, min(_MAX_CELLS, height // _SAMPLES_PER_CELL))
    cols = max(1, min(_MAX_CELLS, width // _SAMPLES_PER_CELL))
    # A strided sample first: a cell's mean needs a few samples, not every pixel.
    step_y = max(1, height // (rows * _SAMPLES_PER_CELL))
    step_x = max(1, width // (cols * _SAMPLES_PER_CELL))
    sample = picture[::step_y, ::step_x]
    per_row = sample.shape[0] // rows
    per_col = sample.shape[1] // cols
    sample = sample[: rows * per_row, : cols * per_col]
    # Green alone stands in for brightness: it carries most of luma, at a third the cost.
    green = sample[:, :, 1].astype(np.float32)
    cells: npt.NDArray[np.float32] = green.reshape(rows, per_row, cols, per_col).mean(axis=(1, 3))
    return cells


def changed_share(before: npt.NDArray[np.float32], after: npt.NDArray[np.float32]) -> float:
    """Return the share of cells that changed from ``before`` to ``after`` (0.0 .. 1.0).

    Grids of different shapes (the frame size changed) count as all changed.
    """
    if before.shape != after.shape:
        return 1.0
    difference = after - before
    difference -= np.median(difference)
    return float(np.count_nonzero(np.abs(difference) > CELL_THRESHOLD)) / difference.size


@dataclass
class ChangeGate:
    """One subject's gate: remembers the last picture that passed, counts those that didn't.

    ``offer`` returns how many pictures were skipped before this one when it passes (it
    changed, it is the first, or ``max_interval_s`` of stream time went by since the last
    that passed: a heartbeat), and None when it is skipped.
    """

    config: GateConfig
    _reference: npt.NDArray[np.float32] | None = None
    _passed_at: float = 0.0
    _skipped: int = 0

    def offer(self, picture: npt.NDArray[np.uint8], t: float) -> int | None:
        """Decide on a picture taken at ``t`` (seconds on the stream's clock)."""
        grid = thumbnail(picture)
        reference = self._reference
        # A clock that went back (a looped file, a reconnected camera) makes it due.
        if (
            reference is not None
            and 0.0 <= t - self._passed_at < self.config.max_interval_s
            and changed_share(reference, grid) < self.config.min_change
        ):
            self._skipped += 1
            return None
        skipped, self._skipped = self._skipped, 0
        self._reference, self._passed_at = grid, t
        return skipped
