"""Bounded per-stream frame queues and the micro-batcher that drains them fairly."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from labelcast.frames import Frame, Subject


@dataclass(frozen=True)
class QueuedFrame:
    """A sampled frame taken from its stream's queue, with the drops that preceded it.

    ``dropped`` counts the stream's frames dropped before it; ``subject_dropped`` and
    ``subject_skipped`` count, per region (None: the whole frame), the pictures dropped
    and the skips they carried, not yet reported in an event of that subject.
    """

    frame: Frame
    dropped: int
    subject_dropped: dict[str | None, int] = field(default_factory=dict)
    subject_skipped: dict[str | None, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """How many pictures of the frame go to the classifier."""
        return len(self.frame.subjects)

    def dropped_before(self, subject: Subject) -> int:
        """Pictures of ``subject`` dropped since its previous event."""
        return self.subject_dropped.get(subject.region, 0)

    def skipped_before(self, subject: Subject) -> int:
        """Pictures of ``subject`` the change gate skipped since its previous event."""
        return subject.skipped + self.subject_skipped.get(subject.region, 0)


@dataclass
class _StreamQueue:
    capacity: int
    live: bool
    frames: deque[Frame] = field(default_factory=deque)
    closed: bool = False
    dropped_pending: int = 0
    dropped_total: int = 0
    failed_pending: int = 0  # frames of failed batches, not yet reported in an event
    # Per region (None: whole frame): pictures dropped, and the gate's skips they carried.
    subject_dropped: dict[str | None, int] = field(default_factory=dict)
    subject_skipped: dict[str | None, int] = field(default_factory=dict)

    def lose(self, frame: Frame, skipped: dict[str | None, int] | None = None) -> None:
        """Count a frame's pictures as dropped; their skips go to the next ones."""
        for subject in frame.subjects:
            region = subject.region
            self.subject_dropped[region] = self.subject_dropped.get(region, 0) + 1
            carried = subject.skipped + (skipped or {}).get(region, 0)
            self.subject_skipped[region] = self.subject_skipped.get(region, 0) + carried

    def take(self) -> QueuedFrame:
        """Take the oldest frame with the drops (of the stream, of its subjects) before it."""
        frame = self.frames.popleft()
        regions = [subject.region for subject in frame.subjects]
        item = QueuedFrame(
            frame,
            self.dropped_pending + self.failed_pending,
            {r: self.subject_dropped.pop(r) for r in regions if r in self.subject_dropped},
            {r: self.subject_skipped.pop(r) for r in regions if r in self.subject_skipped},
        )
        self.dropped_pending = self.failed_pending = 0
        return item


class StreamQueues:
    """One bounded queue per stream, all behind one lock so a batch can wait on any of them.

    A live stream's full queue drops its oldest frame (a gateway wants the freshest
    picture) and counts the drop; a file stream's full queue makes the producer wait.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[str, _StreamQueue] = {}
        self._order: list[str] = []
        self._next = 0
        self._shut = False

    def add_stream(self, stream: str, capacity: int, live: bool) -> None:
        """Register a stream before its producer starts (again, after a reload).

        Frames a stream of the same id still has queued are kept, in order.
        """
        with self._cond:
            old = self._queues.get(stream)
            queue = _StreamQueue(capacity=capacity, live=live)
            if old is not None:
                queue.frames = old.frames
                queue.dropped_pending = old.dropped_pending
                queue.failed_pending = old.failed_pending
                queue.dropped_total = old.dropped_total
                queue.subject_dropped = old.subject_dropped
                queue.subject_skipped = old.subject_skipped
            self._queues[stream] = queue
            if stream not in self._order:
                self._order.append(stream)

    def remove_stream(self, stream: str) -> None:
        """Forget an ended stream whose frames were all handed out (a reload removed it)."""
        with self._cond:
            queue = self._queues.get(stream)
            if queue is not None and queue.closed and not queue.frames:
                del self._queues[stream]
                if stream in self._order:
                    self._order.remove(stream)
                    self._next = 0

    def put(self, frame: Frame, stop: threading.Event) -> bool:
        """Enqueue a frame; return False if ``stop`` was set while waiting for room.

        ``stop`` is the hard stop: a graceful stop still queues the frames in hand.
        Returns False at once after :meth:`shut`.
        """
        with self._cond:
            if self._shut:
                return False
            queue = self._queues[frame.stream]
            if queue.live:
                if len(queue.frames) >= queue.capacity:
                    queue.lose(queue.frames.popleft())
                    queue.dropped_pending += 1
                    queue.dropped_total += 1
            else:
                while len(queue.frames) >= queue.capacity:
                    if stop.is_set() or self._shut:
                        return False
                    self._cond.wait(0.1)
            queue.frames.append(frame)
            self._cond.notify_all()
            return True

    def shut(self) -> None:
        """Take no more frames: nothing batches them any more (the classifier has ended).

        A producer waiting for room returns at once, so a file source never waits forever.
        """
        with self._cond:
            self._shut = True
            self._cond.notify_all()

    def close_stream(self, stream: str) -> None:
        """Mark a stream as ended: its queued frames are still batched, then it is forgotten."""
        with self._cond:
            self._queues[stream].closed = True
            self._cond.notify_all()

    def depth(self, stream: str) -> int:
        """Return how many frames of ``stream`` wait to be batched."""
        with self._cond:
            queue = self._queues.get(stream)
            return len(queue.frames) if queue is not None else 0

    def count_failed(self, item: QueuedFrame) -> None:
        """Count a frame dropped after it left the queue (a batch that failed).

        It and the drops it carried are reported like queue drops, in the ``dropped``
        of the next events; :meth:`take_unreported_failed` returns the stream's frames
        no later frame reported.
        """
        with self._cond:
            queue = self._queues.get(item.frame.stream)
            if queue is not None:
                frames = item.dropped + 1
                queue.failed_pending += frames
                queue.dropped_total += frames
                for region, count in item.subject_dropped.items():
                    queue.subject_dropped[region] = queue.subject_dropped.get(region, 0) + count
                queue.lose(item.frame, item.subject_skipped)

    def take_unreported_failed(self) -> dict[str, int]:
        """Return (and forget) each stream's failed frames that no frame reported yet."""
        with self._cond:
            unreported = {s: q.failed_pending for s, q in self._queues.items() if q.failed_pending}
            for stream in unreported:
                self._queues[stream].failed_pending = 0
            return unreported

    def dropped(self, stream: str) -> int:
        """Return how many frames of ``stream`` were dropped in all."""
        with self._cond:
            return self._queues[stream].dropped_total

    def next_batch(
        self, max_size: int, max_wait_s: float, idle_s: float = 1.0
    ) -> list[QueuedFrame] | None:
        """Wait for frames and return up to ``max_size`` of them, round-robin across streams.

        ``max_size`` counts pictures: a frame with regions brings one per subject (a frame
        that does not fit waits for the next batch). The batch is returned when it is
        full, ``max_wait_s`` after its first frame, or
        when no open stream can add to it. Returns an empty batch after ``idle_s`` with
        no frame (so the caller can show it is alive), and None once every stream has
        ended and all their frames were handed out.
        """
        with self._cond:
            idle_until = time.monotonic() + idle_s
            while not self._has_frames():
                if self._all_ended():
                    return None
                if time.monotonic() >= idle_until:
                    return []
                self._cond.wait(0.1)
            deadline = time.monotonic() + max_wait_s
            batch: list[QueuedFrame] = []
            while True:
                full = self._take_round_robin(batch, max_size)
                remaining = deadline - time.monotonic()
                if full or remaining <= 0 or self._all_ended():
                    break
                self._cond.wait(remaining)
            self._forget_ended()
            self._cond.notify_all()
            return batch

    def _has_frames(self) -> bool:
        return any(q.frames for q in self._queues.values())

    def _all_ended(self) -> bool:
        return all(q.closed for q in self._queues.values()) and not self._has_frames()

    def _take_round_robin(self, batch: list[QueuedFrame], max_size: int) -> bool:
        """Add frames to ``batch``, one per stream in turn; return whether it is full."""
        size = sum(item.size for item in batch)
        taken = True
        while taken:
            taken = False
            for _ in range(len(self._order)):
                stream = self._order[self._next % len(self._order)]
                queue = self._queues[stream]
                if queue.frames:
                    # The first frame always fits: config keeps a frame's pictures <= max_size.
                    if batch and size + len(queue.frames[0].subjects) > max_size:
                        return True
                    batch.append(queue.take())
                    size += batch[-1].size
                    taken = True
                self._next = (self._next + 1) % len(self._order)
                if size >= max_size:
                    return True
        return False

    def _forget_ended(self) -> None:
        for stream in [s for s in self._order if self._queues[s].closed]:
            if not self._queues[stream].frames:
                self._order.remove(stream)
                self._next = 0
