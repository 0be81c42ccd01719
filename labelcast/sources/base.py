"""The Source protocol every source adapter implements, and the fields all source configs share."""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Annotated, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from labelcast.pipeline.frames import Frame
from labelcast.pipeline.postprocess import LabelsConfig
from labelcast.pipeline.sampler import SampleConfig
from labelcast.pipeline.smoothing import SmoothingConfig

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
            description="Stream id, unique in the pipeline; used in event ids and MQTT topics.",
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
    be dropped (oldest first) when the classifier is behind.

    A source whose ``__enter__`` or ``frames()`` may wait on a network or a device
    (the live sources) also has ``stop()``: thread-safe and non-blocking, it makes
    both return soon. The runner calls it when the pipeline stops; it is optional,
    so sources that never wait long (files) need not have it.
    """

    stream_id: str
    live: bool

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
