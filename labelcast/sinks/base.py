"""The Sink protocol every sink adapter implements, and the protocol of a sink kind's class."""

from __future__ import annotations

from typing import Any, Protocol, cast

from labelcast.frames import (
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

    ``all_frames`` is True only for a sink that also takes the frames the sampler
    skipped (then it is an :class:`AllFramesSink`); every other sink says False.
    """

    name: str
    lossless: bool
    all_frames: bool

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


class LocalSink:
    """Health members of a sink that delivers in this process (a file, a callback, a preview).

    Such a sink has no connection to lose and keeps no outbox: it is always connected,
    has no problem to report and no backlog.
    """

    @property
    def connected(self) -> bool:
        """Always True: there is no connection to lose."""
        return True

    @property
    def problem(self) -> str | None:
        """Always None (see ``connected``)."""
        return None

    @property
    def backlog(self) -> int | None:
        """None: the sink keeps no outbox."""
        return None


class AllFramesSink(Sink, Protocol):
    """A sink that also takes the frames the sampler skipped (``all_frames`` is True).

    The runner then hands it every decoded frame of every stream, in decode order per
    stream: sampled frames with their events through ``send``, the others through
    ``send_unsampled``. Unsampled frames usually arrive before the event of the sampled
    frame they follow (classification takes time); the sink orders them by their
    ``after`` index.
    """

    @property
    def unsampled_dropped(self) -> int:
        """Unsampled frames the sink itself dropped because it was behind."""
        ...

    def send_unsampled(self, frame: UnsampledFrame) -> None:
        """Take a frame the sampler skipped."""
        ...


class SinkClass(Protocol):
    """A sink kind's class: makes sinks of its config, and checks a config cheaply.

    ``config`` is the kind's own config model (``MqttSinkConfig`` for ``mqtt``): typed
    ``Any`` here because each class takes only its own, which the registry guarantees.
    """

    def __call__(self, config: Any) -> Sink:
        """Make a sink of ``config``; may raise SinkError (a file that cannot be opened)."""
        ...

    def check(self, config: Any) -> list[str]:
        """Return what ``labelcast check`` reports: problems found without running the sink.

        Only cheap checks (a folder writable, a broker reachable, a port free); an empty
        list when there is nothing to check.
        """
        ...


# Members a sink written against an older protocol may lack, and what it gets instead.
_DEFAULTS: dict[str, object] = {
    "all_frames": False,
    "connected": True,
    "problem": None,
    "backlog": None,
}


class _CompletedSink:
    """A sink from embedding code that lacks newer Sink members: it gets their defaults.

    Members the sink has are used as they are; a missing ``send_status`` or
    ``send_change`` does nothing, a missing ``connected`` is always True. It is an
    :class:`AllFramesSink` when the sink says ``all_frames``.
    """

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.name: str = sink.name
        self.lossless: bool = sink.lossless
        self.all_frames: bool = _member(sink, "all_frames")

    @property
    def connected(self) -> bool:
        """The sink's own ``connected``, or True."""
        return bool(_member(self._sink, "connected"))

    @property
    def problem(self) -> str | None:
        """The sink's own ``problem``, or None."""
        problem: str | None = _member(self._sink, "problem")
        return problem

    @property
    def backlog(self) -> int | None:
        """The sink's own ``backlog``, or None."""
        backlog: int | None = _member(self._sink, "backlog")
        return backlog

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Pass the event on."""
        self._sink.send(event, frame)

    def send_status(self, status: StreamStatus) -> None:
        """Pass the status on if the sink takes statuses."""
        if hasattr(self._sink, "send_status"):
            self._sink.send_status(status)

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Pass the change on if the sink takes changes."""
        if hasattr(self._sink, "send_change"):
            self._sink.send_change(change, state)

    @property
    def unsampled_dropped(self) -> int:
        """The sink's own count (an ``all_frames`` sink has one), or 0."""
        return int(getattr(self._sink, "unsampled_dropped", 0))

    def send_unsampled(self, frame: UnsampledFrame) -> None:
        """Pass an unsampled frame on (only an ``all_frames`` sink is given any)."""
        self._sink.send_unsampled(frame)

    def close(self) -> None:
        """Close the sink."""
        self._sink.close()


def _member(sink: object, name: str) -> Any:
    # The one place a sink's members are looked up by name: code outside labelcast
    # (embedders' sinks) may predate them. labelcast's own sinks have them all.
    return getattr(sink, name, _DEFAULTS[name])


def as_sink(sink: object) -> Sink:
    """Return ``sink`` as a full :class:`Sink`: itself if it has every member, else wrapped.

    Sinks written for an older protocol (no ``send_change``, no ``all_frames``, ...) get
    the defaults a sink without those channels would have. ``name``, ``lossless``,
    ``send`` and ``close`` are required.
    """
    members = (*_DEFAULTS, "send_status", "send_change")
    if all(hasattr(sink, member) for member in members):
        return cast(Sink, sink)
    return _CompletedSink(sink)
