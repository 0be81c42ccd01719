"""The Sink protocol every sink adapter implements."""

from __future__ import annotations

from typing import Protocol

from labelcast.pipeline.frames import (
    ChangeEvent,
    Frame,
    LabelEvent,
    LabelState,
    StreamStatus,
    UnsampledFrame,
)


class Sink(Protocol):
    """Receives label events on its own thread; ``send`` may block, ``close`` flushes.

    ``lossless`` sinks get every event: when their queue is full the classifier
    waits for them. Other sinks must never block for long (they keep their own
    durable buffer) and their queue drops, counted, when full.

    ``connected``, ``problem`` and ``backlog`` are what readiness (``/readyz``) and
    the metrics report; they are read from other threads, so they must be cheap.
    """

    name: str
    lossless: bool

    @property
    def connected(self) -> bool:
        """Whether the sink can deliver now (a sink with nothing to connect to: always)."""
        ...

    @property
    def problem(self) -> str | None:
        """Why the sink is not connected (its last connection error, a dead thread), or None."""
        ...

    @property
    def backlog(self) -> int | None:
        """Messages waiting in the sink's durable outbox; None for a sink without one."""
        ...

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Deliver one event and the frame it was computed from; may raise SinkError."""
        ...

    def send_status(self, status: StreamStatus) -> None:
        """Deliver a change of a stream's state (sinks without a status channel ignore it)."""
        ...

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Deliver a change of a stream's smoothed label and the stream's new state.

        Called in order with the stream's label events, after the event whose frame
        confirmed the change. Sinks with a retained channel publish ``state`` there;
        sinks without a change channel ignore both.
        """
        ...

    def close(self) -> None:
        """Flush and release everything the sink holds."""
        ...


class AllFramesSink(Sink, Protocol):
    """A sink that also takes the frames the sampler skipped (``all_frames`` is True).

    The runner then hands it every decoded frame of every stream, in decode order per
    stream: sampled frames with their events through ``send``, the others through
    ``send_unsampled``. Unsampled frames usually arrive before the event of the sampled
    frame they follow (classification takes time); the sink orders them by their
    ``after`` index.
    """

    all_frames: bool

    @property
    def unsampled_dropped(self) -> int:
        """Unsampled frames the sink itself dropped because it was behind."""
        ...

    def send_unsampled(self, frame: UnsampledFrame) -> None:
        """Take a frame the sampler skipped."""
        ...
