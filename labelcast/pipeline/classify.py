"""The classifier thread: batches from the queues, the backend's scores, events to the sinks.

It asks the backend only what the Backend protocol offers: ``submit`` a batch (one stays
in flight while the next is formed when the backend ``overlaps``), then ``result()``. A
reload hands it new label rules (and maybe a new backend) with :meth:`ClassifyLoop.adopt`;
it takes them between two batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from labelcast.config import PipelineConfig, SourceConfig
from labelcast.errors import BatchError, LabelcastError
from labelcast.frames import (
    ChangeEvent,
    Frame,
    Label,
    LabelEvent,
    ModelInfo,
    Subject,
    subject_path,
)
from labelcast.labels.postprocess import StreamPostprocess
from labelcast.labels.smoothing import LabelTracker
from labelcast.model.backends.base import Backend, Completed, Pending
from labelcast.model.selfcheck import run_self_check, self_check_wanted
from labelcast.pipeline.batcher import QueuedFrame
from labelcast.pipeline.metrics import PipelineMetrics
from labelcast.pipeline.state import BatchStats, PipelineState
from labelcast.sources import source_class

Scores = npt.NDArray[np.float32]

# These lines were the runner's before it was split, and they stay on its logger (tests
# count the frames a reload dropped from it).
log = logging.getLogger("labelcast.pipeline.runner")


@dataclass
class Labelling:
    """What turns a batch's probabilities into events: model, label rules, trackers."""

    backend: Backend
    postprocess: StreamPostprocess
    trackers: dict[str, LabelTracker]  # by subject (subject_path)
    model_info: ModelInfo
    # Each subject's last classified scores and seq, for pictures the gate found unchanged.
    last: dict[str, tuple[Scores, int]] = field(default_factory=dict)

    @cached_property
    def streams(self) -> frozenset[str]:
        """The streams whose frames these rules classify."""
        return frozenset(tracker.stream for tracker in self.trackers.values())


def build_labelling(
    config: PipelineConfig, backend: Backend, previous: Labelling | None, state: PipelineState
) -> Labelling:
    """Build each subject's postprocess and tracker (its labels and smoothing overrides).

    Subjects are keyed by ``subject_path``: a stream's whole frame and each of its
    regions. A subject whose rules, model and pipeline name are unchanged from
    ``previous`` (built for ``state.config``, the running config) keeps its tracker, so
    a reload does not reset its state.
    """
    current = state.config
    rules = {
        subject_path(source.id, region): config.subject_labels(source.id, region)
        for source in config.sources
        for region in _regions(source)
    }
    postprocess = StreamPostprocess(
        {subject: labels for subject, (labels, _) in rules.items()}, backend.id2label
    )
    trackers: dict[str, LabelTracker] = {}
    for source in config.sources:
        live = source_class(source.type).live_for(source)
        for region in _regions(source):
            subject = subject_path(source.id, region)
            labels, smoothing = rules[subject]
            if (
                previous is not None
                and previous.backend is backend
                and config.name == current.name
                and subject in previous.trackers
                and _rules_of(current, source.id, region) == rules[subject]
            ):
                trackers[subject] = previous.trackers[subject]
                continue
            trackers[subject] = LabelTracker(
                smoothing,
                postprocess.of(subject).names,
                labels.min_score,
                pipeline=config.name,
                stream=source.id,
                region=region,
                run=state.run_id,
                clock=smoothing.resolved_clock(live),
            )
    info = backend.info
    model_info = ModelInfo(info.id, info.revision, info.precision, info.scoring)
    return Labelling(backend, postprocess, trackers, model_info)


def _regions(source: SourceConfig) -> list[str | None]:
    """Return a source's subjects by region: None for the whole frame (when classified)."""
    whole: list[str | None] = [None] if source.classifies_whole_frame else []
    return whole + [region.id for region in source.regions]


def _rules_of(
    config: PipelineConfig, stream: str, region: str | None
) -> tuple[object, object] | None:
    for source in config.sources:
        if source.id == stream and region in _regions(source):
            return config.subject_labels(stream, region)
    return None


@dataclass(frozen=True)
class _Submitted:
    """A batch handed to the backend: ``pending.result()`` waits for its scores."""

    batch: list[QueuedFrame]
    pictures: list[tuple[QueuedFrame, Subject]]  # the rows of the scores, in order
    labelling: Labelling
    started: float  # time.perf_counter() at submission
    pending: Pending


class ClassifyLoop:
    """The classifier thread's work: :meth:`run` until the queues end or ``abort``.

    ``heartbeat`` is when it last went round (liveness reads it); ``error`` is the
    unexpected error that ended it, if any; ``labelling`` what it classifies with now.
    """

    def __init__(
        self,
        state: PipelineState,
        labelling: Labelling,
        metrics: PipelineMetrics,
        batch_stats: BatchStats,
    ) -> None:
        self.labelling = labelling
        self.heartbeat = time.monotonic()
        self.error: BaseException | None = None
        self._state = state
        self._metrics = metrics
        self._batch_stats = batch_stats
        self._pending: Labelling | None = None  # handed over by a reload
        self._adopted = threading.Event()
        self._seqs: dict[str, int] = {}  # events per subject, across reloads

    def run(self) -> None:
        """Classify batches until every stream has ended, or ``abort``; errors end it too.

        An unexpected error is logged (one line) and kept in ``error``; it is not raised.
        """
        self_check_pending = True
        state = self._state
        queues = state.queues
        # With backend.overlaps one batch stays in flight on the device while the next is
        # formed and staged; its events are published once the next is submitted.
        in_flight: _Submitted | None = None
        try:
            while True:
                if state.abort.is_set():
                    break  # abort(): queued frames are not classified any more
                self.heartbeat = time.monotonic()
                in_flight = self._complete_before_reload(in_flight)
                labelling = self._take_pending()
                batching = state.config.model.batch
                if in_flight is None:
                    batch = queues.next_batch(batching.max_size, batching.max_wait_ms / 1000)
                else:
                    # The device is busy: take only frames already queued, so the batch in
                    # flight is not held back waiting for more.
                    batch = queues.next_batch(batching.max_size, 0.0, idle_s=0.0)
                if not batch and in_flight is not None:
                    # Nothing queued (or all ended): publish the batch in flight first.
                    self._complete(in_flight)
                    in_flight = None
                    continue
                if batch is None:
                    # Frames of failed batches that no later event reported still count.
                    for stream, frames in queues.take_unreported_failed().items():
                        if stream in state.stats:
                            state.stats[stream].dropped += frames
                    break
                if not batch:
                    continue
                in_flight = self._complete_before_reload(in_flight)
                labelling = self._take_pending(batch)
                self._count_batch(batch)
                pictures = [(item, subject) for item in batch for subject in item.frame.subjects]
                images = [item.frame.picture(subject) for item, subject in pictures]
                backend = labelling.backend
                if not images:
                    # Every picture unchanged: nothing for the model, but the trackers
                    # count them, in order after the batch in flight.
                    if in_flight is not None:
                        self._complete(in_flight)
                        in_flight = None
                    empty = Completed(np.zeros((0, len(backend.id2label)), dtype=np.float32))
                    self._complete(_Submitted(batch, [], labelling, time.perf_counter(), empty))
                    continue
                if self_check_pending:
                    self_check_pending = False
                    if self_check_wanted(state.config.model, backend):
                        run_self_check(state.config.model, backend, images)
                started = time.perf_counter()
                try:
                    # A synchronous backend returns a completed batch; a remote one stops
                    # waiting for its server on abort().
                    pending = backend.submit(images, stop=state.abort)
                except BatchError as exc:
                    # A remote model server kept failing this batch (docs/scaling.md): its
                    # frames count as dropped, in each stream's next event; the pipeline goes on.
                    log.warning("%s", exc)
                    for item in batch:
                        queues.count_failed(item)
                    continue
                submitted = _Submitted(batch, pictures, labelling, started, pending)
                if in_flight is not None:
                    self._complete(in_flight)
                    in_flight = None
                if backend.overlaps:
                    in_flight = submitted
                else:
                    self._complete(submitted)
        except LabelcastError as exc:
            self.error = exc
            log.error("%s", exc)
        except BaseException as exc:
            self.error = exc
            # One line that names the cause; the traceback is for --log-level DEBUG
            # (and wait() raises the error itself).
            log.error(
                "the classifier failed, stopping the pipeline: %s: %s", type(exc).__name__, exc
            )
            log.debug("the classifier's error", exc_info=exc)

    def adopt(self, labelling: Labelling) -> bool:
        """Hand new rules to the classifier thread; return whether it took them in time."""
        config = self._state.config
        self._adopted.clear()
        self._pending = labelling
        if not self._adopted.wait(config.shutdown_timeout_s + config.classifier_stall_s):
            log.warning("the classifier did not take the new configuration in time")
            return False
        # The classifier thread also sets it when it ends, without taking anything.
        return self.labelling is labelling

    def release(self) -> None:
        """Let a reload waiting in :meth:`adopt` go on: the classifier thread has ended."""
        self._adopted.set()

    def end_states(self) -> None:
        """End every stream's label state (once every frame is classified).

        So no sink keeps a retained state that nothing watches any more.
        """
        for tracker in self.labelling.trackers.values():
            self._publish_change(tracker, tracker.finish())

    def _take_pending(self, batch: Sequence[QueuedFrame] = ()) -> Labelling:
        """Adopt the labelling a reload handed over, if any; return the one to use now.

        A ``batch`` already formed that holds frames of a stream the new labelling
        does not know (a reload removed it) is classified under the current one: the
        new one is adopted before the next batch.
        """
        current = self.labelling
        pending = self._pending
        if pending is None or any(item.frame.stream not in pending.streams for item in batch):
            return current
        self._pending = None
        # Streams that are gone end their state, so no retained state is left behind.
        for subject, tracker in current.trackers.items():
            if pending.trackers.get(subject) is not tracker:
                self._publish_change(tracker, tracker.finish())
        self.labelling = pending
        self._adopted.set()
        return pending

    def _complete_before_reload(self, in_flight: _Submitted | None) -> _Submitted | None:
        """Publish the batch in flight if a reload waits (it goes out under its own rules).

        Returns what is still in flight.
        """
        if in_flight is not None and self._pending is not None:
            self._complete(in_flight)
            return None
        return in_flight

    def _complete(self, submitted: _Submitted) -> None:
        """Wait for a submitted batch's scores and publish its events and label changes."""
        probs = submitted.pending.result()
        if submitted.pictures:
            # With a batch in flight this includes the time it queued behind the one before.
            self._metrics.model_seconds.observe(time.perf_counter() - submitted.started)
        labelling = submitted.labelling
        # Frames of a stream a reload removed that were still queued when the classifier
        # adopted the new rules (the reload waits at most shutdown_timeout_s for them)
        # have no rules any more: they are dropped, and counted here.
        streams = labelling.streams
        known = [item for item in submitted.batch if item.frame.stream in streams]
        if len(known) < len(submitted.batch):
            self._drop_removed([i for i in submitted.batch if i.frame.stream not in streams])
        rows = [
            i
            for i, (item, subject) in enumerate(submitted.pictures)
            if _subject(item, subject) in labelling.trackers
        ]
        if len(rows) < len(submitted.pictures):
            probs = probs[rows]
        pictures = [submitted.pictures[i] for i in rows]
        subjects = [_subject(item, subject) for item, subject in pictures]
        results = labelling.postprocess.run(subjects, probs) if pictures else []
        outcomes = iter(zip(pictures, subjects, results, strict=True))
        outcome = next(outcomes, None)
        for item in known:
            frame = item.frame
            self._count_frame(item)
            # The item's classified pictures come next, in order (a row per picture).
            while outcome is not None and outcome[0][0] is item:
                (_, subject), key, (labels, scores) = outcome
                seq = self._seqs.get(key, 0) + 1
                self._seqs[key] = seq
                self._publish(item, subject, labels, seq, labelling.model_info)
                labelling.last[key] = (scores, seq)
                self._update(labelling.trackers[key], scores, seq, frame)
                outcome = next(outcomes, None)
            for region in frame.unchanged:
                # The gate found the picture unchanged: smoothing counts the last one again.
                key = subject_path(frame.stream, region)
                last = labelling.last.get(key)
                if last is not None and key in labelling.trackers:
                    self._update(labelling.trackers[key], last[0], last[1], frame)

    def _update(self, tracker: LabelTracker, scores: Scores, seq: int, frame: Frame) -> None:
        """Feed a picture's scores to its subject's tracker; publish the change it confirms."""
        change = tracker.update(scores, seq=seq, pts=frame.pts, captured_at=frame.captured_at)
        self._publish_change(tracker, change)

    @staticmethod
    def _drop_removed(items: Sequence[QueuedFrame]) -> None:
        """Count and log frames of removed streams that can no longer be classified."""
        dropped: dict[str, int] = {}
        for item in items:
            dropped[item.frame.stream] = dropped.get(item.frame.stream, 0) + 1 + item.dropped
        for stream, frames in dropped.items():
            log.warning(
                "stream %s: dropped %d frame(s) still queued when a reload removed the stream "
                "(not classified within shutdown_timeout_s)",
                stream,
                frames,
            )

    def _count_batch(self, batch: list[QueuedFrame]) -> None:
        stats = self._batch_stats
        stats.batches += 1
        stats.frames += len(batch)
        stats.largest = max(stats.largest, len(batch))
        if len({item.frame.stream for item in batch}) > 1:
            stats.multi_stream += 1
        self._metrics.batch_size.observe(len(batch))

    def _count_frame(self, item: QueuedFrame) -> None:
        """Count a frame as classified (all its pictures), with the frames dropped before it.

        A frame with no picture to classify (all unchanged) counts as ``unchanged`` too.
        """
        stats = self._state.stats[item.frame.stream]
        if not item.frame.subjects:
            stats.unchanged += 1
        stats.classified += 1
        stats.dropped += item.dropped

    def _publish(
        self,
        item: QueuedFrame,
        subject: Subject,
        labels: tuple[Label, ...],
        seq: int,
        model_info: ModelInfo,
    ) -> None:
        state = self._state
        frame = item.frame
        latency_s = time.time() - frame.captured_at
        self._metrics.latency_seconds.observe(latency_s)
        event = LabelEvent(
            pipeline=state.config.name,
            run=state.run_id,
            stream=frame.stream,
            seq=seq,
            pts=frame.pts,
            captured_at=frame.captured_at,
            latency_ms=latency_s * 1000.0,
            labels=labels,
            model=model_info,
            dropped=item.dropped_before(subject),
            region=subject.region,
            skipped=item.skipped_before(subject),
        )
        stats = state.stats[frame.stream]
        stats.events[subject.region] = stats.events.get(subject.region, 0) + 1
        self._state.sinks.publish(event, frame)

    def _publish_change(self, tracker: LabelTracker, change: ChangeEvent | None) -> None:
        state = tracker.state
        if change is None or state is None:
            return
        log.debug(
            "stream %s: %s %s -> %s", change.subject, change.type, change.previous, change.label
        )
        self._state.sinks.publish_change(change, state)


def _subject(item: QueuedFrame, subject: Subject) -> str:
    """Return the subject key of a frame's picture."""
    return subject_path(item.frame.stream, subject.region)
