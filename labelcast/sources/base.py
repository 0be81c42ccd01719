"""The Source protocol every source adapter implements, and the fields all source configs share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from labelcast.pipeline.frames import Frame, UnsampledFrame
from labelcast.pipeline.postprocess import LabelsConfig
from labelcast.pipeline.sampler import SampleConfig
from labelcast.pipeline.smoothing import SmoothingConfig

# Called with each decoded frame the sampler skipped (see Source.on_unsampled).
UnsampledTap = Callable[[UnsampledFrame], None]

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


class Source(Protocol):
    """A stream of sampled frames: a context manager (opening may raise SourceError).

    Constructed as ``cls(config, on_status=callback)``; a live source calls
    ``on_status(state, reason)`` when it starts reconnecting or comes back (the runner
    itself reports ``online`` after opening and ``offline`` at the end).
    ``frames()`` yields only the frames its sampler takes, so unsampled frames are
    never colour-converted. A file source's iterator ends at the end of the file; a
    live source's never ends on its own. ``live`` tells the runner whether frames may
    be dropped (oldest first) when the classifier is behind; a source class whose
    streams differ in that (a file replayed in real time is live) also has a
    classmethod ``live_for(config)``, and the runner asks :func:`is_live`.

    A source whose ``__enter__`` or ``frames()`` may wait on a network or a device
    (the live sources) also has ``stop()``: thread-safe and non-blocking, it makes
    both return soon. The runner calls it when the pipeline stops; it is optional,
    so sources that never wait long (files) need not have it.

    ``on_unsampled`` is None unless a sink wants every decoded frame (an overlay sink
    with ``mode: all-frames``): then the runner sets it, and the source calls it with
    each frame its sampler skips, in decode order, not colour-converted.
    """

    stream_id: str
    live: bool
    on_unsampled: UnsampledTap | None

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


def is_live(source_class: object, config: SourceConfigBase) -> bool:
    """Whether streams ``source_class`` makes from ``config`` are live (drop oldest when behind).

    The class's ``live_for(config)`` decides where it has one, else its ``live`` attribute.
    The runner needs this before the source exists, to set up the stream's queue.
    """
    live_for = getattr(source_class, "live_for", None)
    if callable(live_for):
        return bool(live_for(config))
    return bool(getattr(source_class, "live", False))
