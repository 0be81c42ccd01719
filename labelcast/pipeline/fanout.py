"""Fan-out of label events, stream states and changes to sinks: a bounded queue and thread each.

:class:`SinkWorker` feeds one sink; :class:`SinkSet` is a pipeline's running sinks, opened
from the config through the sink registry, switched over by a reload.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from labelcast.config import SinkConfig
from labelcast.errors import ReportedSinkError, SinkError
from labelcast.frames import (
    ChangeEvent,
    Frame,
    LabelEvent,
    LabelState,
    StreamStatus,
    UnsampledFrame,
)
from labelcast.sinks import sink_class
from labelcast.sinks.base import AllFramesSink, Sink, as_sink
from labelcast.sinks.callback import CallbackSink
from labelcast.sinks.outbox import hand_over

log = logging.getLogger(__name__)
# The lines SinkSet logs were the runner's before it was split: they stay on its logger.
_runner_log = logging.getLogger("labelcast.pipeline.runner")

_CLOSE = None
_POLL_S = 0.1  # how often a waiting put or close looks at abort()


@dataclass
class SinkCounters:
    """What happened to the events handed to one sink."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    # Unsampled frames (``mode: all-frames`` sinks) dropped because the sink was behind.
    frames_dropped: int = 0


@dataclass(frozen=True)
class _Change:
    """A change event and the state it leads to, queued together."""

    change: ChangeEvent
    state: LabelState


class SinkWorker:
    """Feeds one sink from a bounded queue on a thread of its own.

    A lossless sink's full queue makes ``put`` wait; any other sink's full queue
    drops the event, counts it and logs once per burst, so a slow sink never
    stalls the classifier. After :meth:`abort` nothing waits for the sink any more.
    """

    def __init__(self, sink: Sink, capacity: int = 256) -> None:
        # An object written before the Sink protocol grew a member gets a default for it.
        self.sink = as_sink(sink)
        self.counters = SinkCounters()
        self._queue: queue.Queue[
            tuple[LabelEvent, Frame] | StreamStatus | _Change | UnsampledFrame | None
        ] = queue.Queue(capacity)
        self._in_drop_burst = False
        self._in_frame_drop_burst = False
        self._closing = False
        self._abort = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sink:{sink.name}", daemon=True)

    def start(self) -> None:
        """Start the sink's thread."""
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the sink's thread still runs (after a close that timed out, or an abort)."""
        return self._thread.is_alive()

    def abort(self) -> None:
        """Stop waiting for the sink: a waiting put drops its item (counted), close gives up.

        The sink's thread may still be inside the sink (it is a daemon thread).
        """
        self._abort.set()

    def put(self, event: LabelEvent, frame: Frame) -> None:
        """Hand an event to the sink (waits if the sink is lossless and behind)."""
        if self.sink.lossless:
            if not self._put_waiting((event, frame), None):
                self.counters.dropped += 1
            return
        try:
            self._queue.put_nowait((event, frame))
            self._in_drop_burst = False
        except queue.Full:
            self.counters.dropped += 1
            if not self._in_drop_burst:
                self._in_drop_burst = True
                log.warning(
                    "sink %s is behind; dropping events until it catches up", self.sink.name
                )

    @property
    def wants_all_frames(self) -> bool:
        """Whether the sink takes unsampled frames too (``send_unsampled``)."""
        return self.sink.all_frames

    def put_unsampled(self, item: UnsampledFrame, *, wait: bool) -> None:
        """Hand a frame the sampler skipped to an all-frames sink, in order with its events.

        With ``wait`` a full queue makes the caller (a file source) wait; otherwise the
        frame is dropped and counted, so a live source never waits for a sink.
        """
        while wait and not self._closing and not self._abort.is_set():
            # Not a plain put(): a sink retired by a reload must not hold a source up.
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        try:
            self._queue.put_nowait(item)
            self._in_frame_drop_burst = False
        except queue.Full:
            self.counters.frames_dropped += 1
            if not self._in_frame_drop_burst:
                self._in_frame_drop_burst = True
                log.warning(
                    "sink %s is behind; dropping unsampled frames until it catches up",
                    self.sink.name,
                )

    def put_status(self, status: StreamStatus) -> None:
        """Hand a stream state change to the sink, in order with its events.

        Never dropped, except after :meth:`abort`.
        """
        self._put_waiting(status, None)

    def put_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Hand a change of a stream's label and its new state to the sink, in order with events.

        Lossless sinks always get it (``put`` waits). Other sinks never block the
        classifier: when their queue is full the change is dropped and counted; the
        next change carries the whole state again.
        """
        item = _Change(change, state)
        if self.sink.lossless:
            if not self._put_waiting(item, None):
                self.counters.dropped += 1
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.counters.dropped += 1
            log.warning(
                "sink %s is behind; dropped the %s change of stream %s",
                self.sink.name,
                change.type,
                change.stream,
            )

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what is queued, close the sink; return False if that took over ``timeout``.

        :meth:`abort` ends the wait too (then it returns False if the sink is not done).
        """
        self._closing = True
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._put_waiting(_CLOSE, deadline):
            return False
        while self._thread.is_alive() and not self._expired(deadline):
            self._thread.join(self._slice(deadline))
        return not self._thread.is_alive()

    def _put_waiting(
        self,
        item: tuple[LabelEvent, Frame] | StreamStatus | _Change | None,
        deadline: float | None,
    ) -> bool:
        """Queue ``item``, waiting for room until ``deadline`` or abort(); False if not queued."""
        while True:
            try:
                self._queue.put(item, timeout=self._slice(deadline))
                return True
            except queue.Full:
                if self._expired(deadline):
                    return False

    def _expired(self, deadline: float | None) -> bool:
        return self._abort.is_set() or (deadline is not None and time.monotonic() >= deadline)

    @staticmethod
    def _slice(deadline: float | None) -> float:
        if deadline is None:
            return _POLL_S
        return max(0.001, min(_POLL_S, deadline - time.monotonic()))

    def _run(self) -> None:
        while (item := self._queue.get()) is not _CLOSE:
            try:
                if isinstance(item, StreamStatus):
                    self.sink.send_status(item)
                elif isinstance(item, _Change):
                    self.sink.send_change(item.change, item.state)
                elif isinstance(item, UnsampledFrame):
                    cast(AllFramesSink, self.sink).send_unsampled(item)
                else:
                    self.sink.send(*item)
                    self.counters.sent += 1
            except ReportedSinkError:
                self.counters.failed += 1  # the sink logged it (once per outage)
            except SinkError as exc:
                self.counters.failed += 1
                log.error("%s", exc)
            except Exception:
                self.counters.failed += 1
                log.exception("sink %s failed on %s", self.sink.name, item)
        try:
            self.sink.close()
        except Exception:
            log.exception("sink %s failed to close", self.sink.name)


# A running sink with the config it came from (None: the API's callback sink).
SinkEntry = tuple[SinkConfig | None, SinkWorker]


class SinkSet:
    """A pipeline's running sinks, each fed by a :class:`SinkWorker`, and the hand-off to them.

    Events and changes go out under a lock that a reload also takes to switch sinks,
    so no event is handed to a sink after the reload has closed it.
    """

    def __init__(self) -> None:
        self._entries: list[SinkEntry] = []
        self._lock = threading.Lock()

    @property
    def entries(self) -> list[SinkEntry]:
        """The running sinks with the config each came from (a copy)."""
        return list(self._entries)

    @property
    def workers(self) -> list[SinkWorker]:
        """The running sinks' workers, each with its counters."""
        return [worker for _, worker in self._entries]

    @property
    def wants_all_frames(self) -> bool:
        """Whether a running sink takes unsampled frames too."""
        return any(worker.wants_all_frames for worker in self.workers)

    def open(
        self,
        configs: Sequence[SinkConfig],
        *,
        on_event: Callable[[LabelEvent], object] | None = None,
        on_change: Callable[[ChangeEvent, LabelState], object] | None = None,
    ) -> None:
        """Open the configured sinks, and one for the application's callbacks if it gave any.

        If a sink fails to open, those opened are closed and the error is raised.
        """
        workers = _open(configs)
        entries: list[SinkEntry] = list(zip(configs, workers, strict=True))
        if on_event is not None or on_change is not None:
            callback = SinkWorker(CallbackSink(on_event, on_change=on_change))
            callback.start()
            entries.append((None, callback))
        self._entries = entries

    def replace(
        self,
        unchanged: list[SinkEntry],
        retired: list[SinkEntry],
        configs: list[SinkConfig],
        *,
        timeout: float,
        switched: Callable[[], None],
    ) -> list[SinkWorker]:
        """Open the new sinks, switch events over to them, then close the retired ones.

        New sinks open while the retired ones keep working, so no event falls between
        them; if one fails to open, those opened are closed, the error is raised and
        nothing changed. ``switched`` is called once events go to the new sinks. A new
        MQTT sink whose outbox file a retired one holds takes that outbox over
        (``outbox.hand_over``): it writes once the retired sink has written what it was
        handed and closed, and publishes from there. Returns the sinks opened.
        """
        if not retired and not configs:
            return []
        with hand_over():
            added = _open(configs)
            with self._lock:
                self._entries = unchanged + list(zip(configs, added, strict=True))
            switched()
            for _, worker in retired:
                if not worker.close(timeout):
                    _runner_log.warning("sink %s did not finish in time", worker.sink.name)
        return added

    def publish(self, event: LabelEvent, frame: Frame) -> None:
        """Hand an event and its frame to every sink."""
        with self._lock:
            for worker in self.workers:
                worker.put(event, frame)

    def publish_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Hand a change of a stream's label and its new state to every sink."""
        with self._lock:
            for worker in self.workers:
                worker.put_change(change, state)

    def publish_status(self, status: StreamStatus) -> None:
        """Hand a stream's state change to every sink."""
        for worker in self.workers:
            worker.put_status(status)


def _open(configs: Sequence[SinkConfig]) -> list[SinkWorker]:
    """Open sinks and start their workers; if one fails, close those opened and raise."""
    workers: list[SinkWorker] = []
    try:
        for config in configs:
            workers.append(SinkWorker(sink_class(config.type)(config)))
    except BaseException:
        for worker in workers:
            worker.sink.close()
        raise
    for worker in workers:
        worker.start()
    return workers
