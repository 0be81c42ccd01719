"""Temporal smoothing and the per-stream label state machine that emits change events.

A ``LabelTracker`` is fed one stream's postprocessed score vectors in frame order. It
smooths them (exponential moving average or a sliding window), takes the top smoothed
label (or no label when that scores below ``labels.min_score``) as the *candidate*,
and makes the candidate the stream's state only once it has led for ``min_dwell_s``
on the stream's clock *and* for ``min_frames`` consecutive classified frames. Each
state change is a ``ChangeEvent``. Everything here is deterministic: the same scores
and times give the same events.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from labelcast.frames import ChangeEvent, ChangeType, LabelState
from labelcast.labels.config import (
    DEFAULT_ALPHA,
    DEFAULT_WINDOW,
    ClockName,
    SmoothingConfig,
    SmoothingMethod,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_WINDOW",
    "ClockName",
    "LabelTracker",
    "SmoothingConfig",
    "SmoothingMethod",
]

# Container time bases (1/90000 s, milliseconds) make 1 s of pts come out as 0.99999...;
# a lead this much short of min_dwell_s still counts as long enough.
_DWELL_TOLERANCE_S = 1e-6


@dataclass
class _Pending:
    """A candidate that leads but is not the state yet."""

    label: str | None
    score: float | None
    first_t: float  # stream clock of the first frame it led
    first_at: float  # capture time of that frame
    frames: int


class LabelTracker:
    """Smooths one stream's scores and tracks its state; ``update`` returns change events.

    ``labels`` names the columns of the score vectors (``Postprocess.names``); columns
    a filter excluded hold a negative score and never lead. ``clock`` says whether
    ``min_dwell_s`` and ``duration_s`` are measured in pts or capture time; a clock that
    goes backwards (a live source reconnected) counts as no time passing.
    """

    def __init__(
        self,
        config: SmoothingConfig,
        labels: Sequence[str],
        min_score: float,
        *,
        pipeline: str,
        stream: str,
        region: str | None = None,
        run: str = "",
        clock: Literal["pts", "wall"] = "pts",
    ) -> None:
        self._labels = list(labels)
        self._min_score = min_score
        self._pipeline = pipeline
        self._stream = stream
        self._region = region
        self._run = run
        self._use_pts = clock == "pts"
        self._method = config.method
        self._alpha = config.alpha if config.alpha is not None else DEFAULT_ALPHA
        size = config.window if config.window is not None else DEFAULT_WINDOW
        self._window: deque[npt.NDArray[np.float64]] = deque(maxlen=size)
        self._min_dwell_s = config.min_dwell_s
        self._min_frames = config.min_frames
        self._smoothed: npt.NDArray[np.float64] | None = None
        self._t = 0.0  # the stream clock (pts or capture time), never decreasing
        self._offset = 0.0  # added to the raw clock after it went backwards
        self._last_raw: float | None = None
        self._last_at = 0.0
        self._last_seq = 0
        self._state: LabelState | None = None
        self._state_t = 0.0
        self._pending: _Pending | None = None

    @property
    def state(self) -> LabelState | None:
        """The stream's current state; ``None`` before the first frame."""
        return self._state

    @property
    def stream(self) -> str:
        """The stream whose frames (or one region of them) this tracker follows."""
        return self._stream

    def update(
        self, scores: npt.NDArray[np.floating], *, seq: int, pts: float, captured_at: float
    ) -> ChangeEvent | None:
        """Take one frame's scores (shape (len(labels),)); return the change it confirms, if any."""
        self._advance(pts if self._use_pts else captured_at)
        self._last_at, self._last_seq = captured_at, seq
        smoothed = self._smooth(np.asarray(scores, dtype=np.float64))
        candidate, score = self._candidate(smoothed)
        if self._state is None:
            # Streams start with no label, from their first frame.
            self._state = LabelState(
                self._pipeline, self._stream, None, None, captured_at, self._region
            )
            self._state_t = self._t
        if candidate == self._state.label:
            self._pending = None
            return None
        if self._pending is None or self._pending.label != candidate:
            self._pending = _Pending(candidate, score, self._t, captured_at, 0)
        pending = self._pending
        pending.frames += 1
        pending.score = score
        led_s = self._t - pending.first_t
        if pending.frames < self._min_frames or led_s + _DWELL_TOLERANCE_S < self._min_dwell_s:
            return None
        return self._change(pending.label, pending.score, pending.first_t, pending.first_at, seq)

    def _candidate(self, scores: npt.NDArray[np.float64]) -> tuple[str | None, float | None]:
        """Return the top label of ``scores`` and its score, or no label below min_score."""
        best = int(np.argmax(scores))
        best_score = float(scores[best])
        if best_score >= self._min_score and best_score >= 0.0:
            return self._labels[best], best_score
        return None, None

    def finish(self) -> ChangeEvent | None:
        """End the stream: ``end`` at its last frame if it has a label, so no stale state stays."""
        if self._state is None or self._state.label is None:
            return None
        return self._change(None, None, self._t, self._last_at, self._last_seq)

    def _change(
        self, label: str | None, score: float | None, since_t: float, since: float, seq: int
    ) -> ChangeEvent:
        assert self._state is not None
        previous = self._state.label
        kind: ChangeType = "start" if previous is None else "end" if label is None else "change"
        event = ChangeEvent(
            pipeline=self._pipeline,
            run=self._run,
            stream=self._stream,
            region=self._region,
            type=kind,
            label=label,
            previous=previous,
            score=score,
            since=since,
            duration_s=max(0.0, since_t - self._state_t),
            seq=seq,
        )
        self._state = LabelState(self._pipeline, self._stream, label, score, since, self._region)
        self._state_t = since_t
        self._pending = None
        return event

    def _advance(self, raw: float) -> None:
        if self._last_raw is not None and raw < self._last_raw:
            # The clock went back (a live source reconnected, a stream wrapped): no time
            # passes. An offset, not a running sum, keeps durations exact differences.
            self._offset += self._last_raw - raw
        self._last_raw = raw
        self._t = raw + self._offset

    def _smooth(self, scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        if self._method == "window":
            self._window.append(scores)
            return np.mean(self._window, axis=0)  # type: ignore[no-any-return]
        if self._method == "ema" and self._smoothed is not None:
            self._smoothed = self._alpha * scores + (1.0 - self._alpha) * self._smoothed
        else:
            self._smoothed = scores
        return self._smoothed
