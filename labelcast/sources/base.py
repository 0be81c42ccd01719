"""The Source protocol every source adapter implements, and the fields all source configs share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelcast.frames import Frame, StreamState, UnsampledFrame
from labelcast.labels.config import LabelsConfig, SmoothingConfig
from labelcast.sources.regions import GateConfig, RegionConfig
from labelcast.sources.sampler import SampleConfig

# Called with each decoded frame the sampler skipped (see Source.on_unsampled).
UnsampledTap = Callable[[UnsampledFrame], None]
# Called by a live source with its new state and why (passwords masked) when it starts
# reconnecting or comes back.
StatusCallback = Callable[[StreamState, "str | None"], None]

# ``all`` decodes every frame; ``keyframes`` makes FFmpeg's decoder skip every frame that
# is not a key frame (``skip_frame=NONKEY``), for streams sampled at or below their
# key frame rate.
DecodeMode = Literal["all", "keyframes"]


class SourceConfigBase(BaseModel):
    """Fields every source has: its stream id, its sampling rule, and label overrides."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_-]+$",
            max_length=64,
            description="Stream id (letters, digits, - and _; at most 64 characters), unique "
            "in the pipeline; used in event ids and MQTT topics.",
        ),
    ]
    sample: Annotated[
        SampleConfig,
        Field(description="Which frames are classified (default: 2 per second of video time)."),
    ] = SampleConfig()
    queue_size: Annotated[
        int,
        Field(ge=1, le=1024, description="Sampled frames buffered before the classifier."),
    ] = 8
    allow_offline: Annotated[
        bool,
        Field(description="Readiness (/readyz) ignores this stream being offline or reconnecting."),
    ] = False
    labels: Annotated[
        LabelsConfig | None,
        Field(
            description="This stream's label rules: the keys set here replace the pipeline's "
            "labels keys of the same name; the others are inherited."
        ),
    ] = None
    smoothing: Annotated[
        SmoothingConfig | None,
        Field(
            description="This stream's smoothing: the keys set here replace the pipeline's "
            "smoothing keys (setting method drops the pipeline's alpha and window)."
        ),
    ] = None
    regions: Annotated[
        list[RegionConfig],
        Field(
            max_length=64,
            description="Named boxes of the frame, each classified as a subject of its own "
            "(docs/regions.md).",
        ),
    ] = []
    whole_frame: Annotated[
        bool | None,
        Field(
            description="Classify the whole frame too (default: true without regions, "
            "false with regions)."
        ),
    ] = None
    gate: Annotated[
        GateConfig | None,
        Field(
            description="Change gate: a picture is classified only when it changed since "
            "the last one classified, or max_interval_s passed (default: every sampled one)."
        ),
    ] = None

    @model_validator(mode="after")
    def _subjects_are_named_once(self) -> SourceConfigBase:
        seen: set[str] = set()
        for region in self.regions:
            if region.id in seen:
                raise ValueError(f"regions: the id {region.id!r} is used twice")
            seen.add(region.id)
        if self.whole_frame is False and not self.regions:
            raise ValueError("whole_frame: false needs at least one region")
        return self

    @property
    def classifies_whole_frame(self) -> bool:
        """Whether the whole frame is a subject (``whole_frame``, or its default)."""
        return self.whole_frame if self.whole_frame is not None else not self.regions

    @property
    def subject_count(self) -> int:
        """How many pictures of each frame may be classified (its subjects)."""
        return len(self.regions) + (1 if self.classifies_whole_frame else 0)


class Source(Protocol):
    """A stream of sampled frames: a context manager (opening may raise SourceError).

    Made by a :class:`SourceClass` as ``cls(config, on_status=callback)``; a live source
    calls ``on_status(state, reason)`` when it starts reconnecting or comes back (the
    runner itself reports ``online`` after opening and ``offline`` at the end).
    ``frames()`` yields only the frames its sampler takes, so unsampled frames are
    never colour-converted. A file source's iterator ends at the end of the file; a
    live source's never ends on its own. ``live`` tells the runner whether frames may
    be dropped (oldest first) when the classifier is behind; the runner needs that
    before the source exists, so the class answers it too (``SourceClass.live_for``).

    ``stop()`` is thread-safe and non-blocking: it makes ``__enter__`` and ``frames()``
    return soon (a live source waiting on a network or a device, a file being paced or
    looped). The runner calls it when the pipeline stops; a source with nothing to
    interrupt makes it a no-op.

    ``on_unsampled`` is None unless a sink wants every decoded frame (an overlay sink
    with ``mode: all-frames``): then the runner sets it, and the source calls it with
    each frame its sampler skips, in decode order, not colour-converted.
    """

    stream_id: str
    live: bool
    on_unsampled: UnsampledTap | None

    @property
    def frame_count_hint(self) -> int | None:
        """How many frames the stream will decode, if known once open (a file's); else None."""
        ...

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """The decoded frames' (width, height) once open, if known before the first (a file's)."""
        ...

    @property
    def frames_decoded(self) -> int:
        """Frames decoded so far, sampled or not (read from other threads: cheap)."""
        ...

    def __enter__(self) -> Source: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def frames(self) -> Iterator[Frame]:
        """Yield sampled frames until the source ends (files) or the caller stops iterating."""
        ...

    def stop(self) -> None:
        """Make ``__enter__`` and ``frames()`` return soon; thread-safe, returns at once."""
        ...


class SourceClass(Protocol):
    """A source kind's class: makes sources of its config, and says whether they are live.

    ``config`` is the kind's own config model (``FileSourceConfig`` for ``file``): typed
    ``Any`` here because each class takes only its own, which the registry guarantees.
    """

    def __call__(self, config: Any, *, on_status: StatusCallback | None = None) -> Source:
        """Make a source of ``config`` (nothing is opened until ``__enter__``)."""
        ...

    def live_for(self, config: Any) -> bool:
        """Whether streams of ``config`` are live: dropped from, oldest first, when behind."""
        ...
