"""The values that flow through a pipeline: decoded frames and label events."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

EVENT_SCHEMA = "labelcast.label/1"


@dataclass(frozen=True)
class Frame:
    """One sampled picture of one stream.

    ``index`` counts decoded frames of the stream from 0 (the source's own counter);
    ``pts`` is the presentation time in seconds; ``captured_at`` is the wall-clock
    time (Unix seconds) at which the frame was decoded or received; ``image`` is an
    RGB ``uint8`` array of shape (H, W, 3).
    """

    stream: str
    index: int
    pts: float
    captured_at: float
    image: npt.NDArray[np.uint8] = field(repr=False)


@dataclass(frozen=True)
class Label:
    """One label of a classified frame with its score and the checkpoint's class id.

    ``class_id`` is ``None`` for a label that merges several classes (a label map or group).
    """

    label: str
    score: float
    class_id: int | None


@dataclass(frozen=True)
class ModelInfo:
    """Which model produced an event: id, the revision actually loaded, and the precision."""

    id: str
    revision: str | None
    precision: str


@dataclass(frozen=True)
class LabelEvent:
    """The result of classifying one frame, as published by every sink (``labelcast.label/1``)."""

    pipeline: str
    stream: str
    seq: int
    pts: float
    captured_at: float
    latency_ms: float
    labels: tuple[Label, ...]
    model: ModelInfo
    dropped: int

    @property
    def id(self) -> str:
        """The event id consumers de-duplicate by: ``<pipeline>/<stream>/<seq>``."""
        return f"{self.pipeline}/{self.stream}/{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        """Return the event as the JSON object of the ``labelcast.label/1`` schema."""
        return {
            "schema": EVENT_SCHEMA,
            "id": self.id,
            "pipeline": self.pipeline,
            "stream": self.stream,
            "seq": self.seq,
            "pts": round(self.pts, 6),
            "captured_at": format_timestamp(self.captured_at),
            "latency_ms": round(self.latency_ms, 3),
            "labels": [
                {"label": lb.label, "score": round(lb.score, 6), "class_id": lb.class_id}
                for lb in self.labels
            ],
            "model": asdict(self.model),
            "dropped": self.dropped,
        }

    def to_json(self) -> str:
        """Return the event as one compact JSON line (without the newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


StreamState = Literal["online", "reconnecting", "offline"]


@dataclass(frozen=True)
class StreamStatus:
    """A change of a stream's state: ``online``, ``reconnecting`` or ``offline``, with a reason."""

    pipeline: str
    stream: str
    state: StreamState
    reason: str | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        """Return the status as a JSON object (secrets already masked in ``reason``)."""
        return {
            "pipeline": self.pipeline,
            "stream": self.stream,
            "state": self.state,
            "reason": self.reason,
            "at": format_timestamp(self.at),
        }


def format_timestamp(unix_seconds: float) -> str:
    """Format Unix seconds as an ISO 8601 UTC timestamp with milliseconds and a ``Z``."""
    moment = datetime.fromtimestamp(unix_seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
