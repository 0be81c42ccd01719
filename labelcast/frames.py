"""The values that flow through a pipeline: frames, label events, label states and changes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    # Annotations only: the values are built by adapters that import these themselves,
    # and the config models import this module without paying for them.
    import av
    import numpy as np
    import numpy.typing as npt

EVENT_SCHEMA = "labelcast.label/1"

# A region's box in pixels of the decoded frame: x, y, width, height.
Box = tuple[int, int, int, int]


def subject_path(stream: str, region: str | None) -> str:
    """Name a subject: ``<stream>`` for a whole frame, ``<stream>/<region>`` for a region.

    Stream and region ids hold no ``/``, so the path is unambiguous; it is the subject's
    key inside the pipeline and its level(s) in MQTT topics.
    """
    return stream if region is None else f"{stream}/{region}"


@dataclass(frozen=True)
class Subject:
    """One picture of a frame to classify: the whole frame (``region`` None) or a region.

    ``box`` is the region's box in pixels (None: the whole frame); ``skipped`` counts the
    pictures of this subject the change gate found unchanged before this one.
    """

    region: str | None = None
    box: Box | None = None
    skipped: int = 0


WHOLE_FRAME = Subject()


@dataclass(frozen=True)
class Frame:
    """One sampled picture of one stream.

    ``index`` counts decoded frames of the stream from 0 (the source's own counter);
    ``pts`` is the presentation time in seconds; ``captured_at`` is the wall-clock
    time (Unix seconds) at which the frame was decoded or received; ``image`` is an
    RGB ``uint8`` array of shape (H, W, 3). ``subjects`` are the pictures of it to
    classify (the pipeline's regions and change gate choose them; by default the whole
    frame), each one label event; ``unchanged`` names the regions (None: the whole frame)
    whose pictures the change gate skipped: their smoothing counts them as the picture
    last classified again.
    """

    stream: str
    index: int
    pts: float
    captured_at: float
    image: npt.NDArray[np.uint8] = field(repr=False)
    subjects: tuple[Subject, ...] = (WHOLE_FRAME,)
    unchanged: tuple[str | None, ...] = ()

    def picture(self, subject: Subject) -> npt.NDArray[np.uint8]:
        """Return a subject's picture: the image, or a view of its region (no copy)."""
        if subject.box is None:
            return self.image
        x, y, width, height = subject.box
        return self.image[y : y + height, x : x + width]


@dataclass(frozen=True)
class UnsampledFrame:
    """A decoded picture the sampler skipped, still in the decoder's pixel format.

    Only sinks that want every frame (overlay ``mode: all-frames``) get these; they are
    colour-converted by ``to_frame`` on the sink's thread, not on the source's. ``after``
    is the index of the stream's last sampled frame before this one (-1: none yet).
    ``keep`` marks a frame of a file feeding a lossless sink: the sink keeps it even past
    its buffer bound (the file waits for the sink instead, which bounds the buffer).
    """

    stream: str
    index: int
    pts: float
    captured_at: float
    after: int
    picture: av.VideoFrame = field(repr=False)
    keep: bool = False

    def to_frame(self) -> Frame:
        """Return the picture as a ``Frame`` with an RGB ``uint8`` image."""
        image: npt.NDArray[np.uint8] = self.picture.to_ndarray(format="rgb24")  # type: ignore[assignment]
        return Frame(self.stream, self.index, self.pts, self.captured_at, image)


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
    """Which model produced an event: id, the revision actually loaded, precision, scoring.

    ``scoring`` says how the label scores were made from the model's logits: ``softmax``
    (over the labels; they add up to 1 before any are left out) or ``sigmoid`` (each
    label scored on its own, as SigLIP checkpoints are; they need not add up to 1).
    """

    id: str
    revision: str | None
    precision: str
    scoring: str = "softmax"


@dataclass(frozen=True)
class LabelEvent:
    """The result of classifying one frame, as published by every sink (``labelcast.label/1``)."""

    pipeline: str
    run: str
    stream: str
    seq: int
    pts: float
    captured_at: float
    latency_ms: float
    labels: tuple[Label, ...]
    model: ModelInfo
    dropped: int
    region: str | None = None
    skipped: int = 0

    @property
    def subject(self) -> str:
        """The event's subject: ``<stream>`` or ``<stream>/<region>`` (see subject_path)."""
        return subject_path(self.stream, self.region)

    @property
    def id(self) -> str:
        """The id consumers de-duplicate by: ``<pipeline>/<stream>[/<region>]/<run>/<seq>``.

        It is unique across restarts: ``seq`` starts at 1 in every run, ``run`` changes.
        """
        return f"{self.pipeline}/{self.subject}/{self.run}/{self.seq}"

    def to_dict(self) -> dict[str, Any]:
        """Return the event as the JSON object of the ``labelcast.label/1`` schema."""
        return {
            "schema": EVENT_SCHEMA,
            "id": self.id,
            "pipeline": self.pipeline,
            "run": self.run,
            "stream": self.stream,
            "region": self.region,
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
            "skipped": self.skipped,
        }

    def to_json(self) -> str:
        """Return the event as one compact JSON line (without the newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


CHANGE_SCHEMA = "labelcast.change/1"

ChangeType = Literal["start", "change", "end"]


@dataclass(frozen=True)
class LabelState:
    """A stream's current smoothed label: ``label`` is ``None`` when nothing scores enough.

    ``score`` is the label's smoothed score when the state began (``None`` with no
    label); ``since`` is the capture time (Unix seconds) of the frame from which the
    label led. Sinks with a retained channel publish ``to_dict()`` as the stream's state.
    """

    pipeline: str
    stream: str
    label: str | None
    score: float | None
    since: float
    region: str | None = None

    @property
    def subject(self) -> str:
        """The state's subject: ``<stream>`` or ``<stream>/<region>``."""
        return subject_path(self.stream, self.region)

    def to_dict(self) -> dict[str, Any]:
        """Return the state as the JSON object ``{label, score, since}``."""
        return {
            "label": self.label,
            "score": None if self.score is None else round(self.score, 6),
            "since": format_timestamp(self.since),
        }

    def to_json(self) -> str:
        """Return the state as one compact JSON line (without the newline)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class ChangeEvent:
    """A change of a stream's smoothed label (``labelcast.change/1``).

    ``start``: no label → ``label``; ``change``: ``previous`` → ``label``; ``end``:
    ``previous`` → no label. ``since`` is when the new state began (capture time of the
    frame from which it led), ``duration_s`` how long the previous state lasted, on the
    stream's clock; ``seq`` is the label event whose frame confirmed the change.
    """

    pipeline: str
    run: str
    stream: str
    type: ChangeType
    label: str | None
    previous: str | None
    score: float | None
    since: float
    duration_s: float
    seq: int
    region: str | None = None

    @property
    def subject(self) -> str:
        """The change's subject: ``<stream>`` or ``<stream>/<region>``."""
        return subject_path(self.stream, self.region)

    @property
    def id(self) -> str:
        """A unique id: ``<pipeline>/<stream>[/<region>]/<run>/<seq>/<type>``."""
        return f"{self.pipeline}/{self.subject}/{self.run}/{self.seq}/{self.type}"

    def to_dict(self) -> dict[str, Any]:
        """Return the change as the JSON object of the ``labelcast.change/1`` schema."""
        return {
            "schema": CHANGE_SCHEMA,
            "id": self.id,
            "pipeline": self.pipeline,
            "run": self.run,
            "stream": self.stream,
            "region": self.region,
            "type": self.type,
            "label": self.label,
            "previous": self.previous,
            "score": None if self.score is None else round(self.score, 6),
            "since": format_timestamp(self.since),
            "duration_s": round(self.duration_s, 6),
            "seq": self.seq,
        }

    def to_json(self) -> str:
        """Return the change as one compact JSON line (without the newline)."""
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
