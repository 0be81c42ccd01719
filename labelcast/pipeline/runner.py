"""The runner: wires sources, batcher, classifier, postprocess and sinks, and owns their threads."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from labelcast.config import PipelineConfig, SourceConfig
from labelcast.errors import LabelcastError, SourceError
from labelcast.pipeline.batcher import QueuedFrame, StreamQueues
from labelcast.pipeline.classifier import Classifier
from labelcast.pipeline.fanout import SinkWorker
from labelcast.pipeline.frames import Label, LabelEvent, ModelInfo, StreamState, StreamStatus
from labelcast.pipeline.postprocess import Postprocess
from labelcast.sinks.base import Sink
from labelcast.sinks.callback import CallbackSink
from labelcast.sinks.log import LogSink
from labelcast.sources.base import Source
from labelcast.sources.file import FileSource

log = logging.getLogger(__name__)

SOURCE_CLASSES: dict[str, Callable[..., Source]] = {"file": FileSource}
SINK_CLASSES: dict[str, Callable[..., Sink]] = {"log": LogSink}


@dataclass
class StreamStats:
    """Progress of one stream, updated by the pipeline's threads."""

    stream: str
    decoded: int = 0
    classified: int = 0
    dropped: int = 0
    total_frames: int | None = None
    ended: bool = False
    failed: str | None = None
    state: StreamState | None = None


@dataclass
class BatchStats:
    """How the classifier's micro-batches were filled."""

    batches: int = 0
    frames: int = 0
    largest: int = 0
    multi_stream: int = 0  # batches that held frames of more than one stream


class Pipeline:
    """Runs one configured pipeline: start it, wait for it, stop it, or iterate its events.

    ``on_event`` (optional) is called with each ``LabelEvent`` on a sink thread of its
    own. ``classifier`` lets an embedding application share one loaded model.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        on_event: Callable[[LabelEvent], object] | None = None,
        classifier: Classifier | None = None,
    ) -> None:
        self.config = config
        self.stats = {source.id: StreamStats(source.id) for source in config.sources}
        self.batch_stats = BatchStats()
        self.classifier = classifier
        self._on_event = on_event
        self._stop = threading.Event()
        self._queues = StreamQueues()
        self._sink_workers: list[SinkWorker] = []
        self._threads: list[threading.Thread] = []
        self._classifier_thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None

    def start(self) -> None:
        """Load the model, open the sinks and start every thread; return at once.

        Raises ModelError or SinkError (before any thread runs) if those can't start.
        """
        if self.classifier is None:
            self.classifier = Classifier.load(self.config.model)
        sinks: list[Sink] = [SINK_CLASSES[cfg.type](cfg) for cfg in self.config.sinks]
        if self._on_event is not None:
            sinks.append(CallbackSink(self._on_event))
        self._sink_workers = [SinkWorker(sink) for sink in sinks]
        for worker in self._sink_workers:
            worker.start()
        for source_config in self.config.sources:
            self._queues.add_stream(
                source_config.id,
                source_config.queue_size,
                live=getattr(SOURCE_CLASSES[source_config.type], "live", False),
            )
        self._classifier_thread = threading.Thread(
            target=self._classify_loop, args=(self.classifier,), name="classifier", daemon=True
        )
        self._classifier_thread.start()
        for source_config in self.config.sources:
            thread = threading.Thread(
                target=self._source_loop,
                args=(source_config,),
                name=f"source:{source_config.id}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Ask the pipeline to stop: sources stop, queued frames are classified, sinks flush."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the pipeline has finished; return False if ``timeout`` passed first.

        Re-raises an unexpected error of the classifier thread.
        """
        finished = self._done.wait(timeout)
        if finished and self._classifier_thread is not None:
            self._classifier_thread.join()
        if finished and self._error is not None:
            raise self._error
        return finished

    def run(self) -> None:
        """Start, and wait until every source has ended (or ``stop()`` was called)."""
        self.start()
        self.wait()

    @property
    def failed_streams(self) -> list[str]:
        """Streams whose source could not be opened or read."""
        return [s.stream for s in self.stats.values() if s.failed is not None]

    def events(self) -> Iterator[LabelEvent]:
        """Run the pipeline and yield its events as they come; stops it when the loop ends.

        The iterator is lossless: if the caller is slow, the pipeline waits for it.
        """
        if self._on_event is not None or self._classifier_thread is not None:
            raise RuntimeError("events() needs a fresh Pipeline created without on_event")
        handoff: queue.Queue[LabelEvent | None] = queue.Queue(maxsize=64)
        self._on_event = handoff.put
        self.start()

        def signal_end() -> None:
            self._done.wait()
            handoff.put(None)

        watcher = threading.Thread(target=signal_end, name="events-end", daemon=True)
        watcher.start()
        try:
            while (event := handoff.get()) is not None:
                yield event
        finally:
            self.stop()
            # Keep draining so a lossless hand-off never blocks the shutdown.
            while not self._done.is_set():
                with contextlib.suppress(queue.Empty):
                    handoff.get(timeout=0.1)
        self.wait()

    def _source_loop(self, config: SourceConfig) -> None:
        stream = config.id
        stats = self.stats[stream]
        end_reason = "ended"

        def on_status(state: StreamState, reason: str | None = None) -> None:
            self._set_status(stream, state, reason)

        try:
            with SOURCE_CLASSES[config.type](config, on_status=on_status) as source:
                self._set_status(stream, "online", None)
                stats.total_frames = getattr(source, "frame_count_hint", None)
                frames = source.frames()
                with contextlib.closing(frames):  # type: ignore[type-var]
                    for frame in frames:
                        stats.decoded = getattr(source, "frames_decoded", stats.decoded)
                        if self._stop.is_set() or not self._queues.put(frame, self._stop):
                            break
                stats.decoded = getattr(source, "frames_decoded", stats.decoded)
            if self._stop.is_set():
                end_reason = "stopped"
        except SourceError as exc:
            stats.failed = end_reason = str(exc)
            log.error("%s", exc)
        except Exception as exc:
            stats.failed = end_reason = f"stream {stream!r}: unexpected error: {exc!r}"
            log.exception("stream %r failed", stream)
        finally:
            stats.ended = True
            self._queues.close_stream(stream)
            self._set_status(stream, "offline", end_reason)

    def _set_status(self, stream: str, state: StreamState, reason: str | None) -> None:
        stats = self.stats[stream]
        if stats.state == state and state != "reconnecting":
            return
        stats.state = state
        if state == "online":
            log.info("stream %s: online", stream)
        else:
            log.info("stream %s: %s (%s)", stream, state, reason)
        status = StreamStatus(self.config.name, stream, state, reason, time.time())
        for worker in self._sink_workers:
            worker.put_status(status)

    def _classify_loop(self, classifier: Classifier) -> None:
        config = self.config
        postprocess = Postprocess(config.labels, classifier.id2label)
        info = classifier.info
        model_info = ModelInfo(info.id, info.revision, info.precision)
        max_wait_s = config.model.batch.max_wait_ms / 1000
        seqs = dict.fromkeys(self.stats, 0)
        try:
            while batch := self._queues.next_batch(config.model.batch.max_size, max_wait_s):
                self._count_batch(batch)
                probs = classifier.classify([item.frame.image for item in batch])
                for item, labels in zip(batch, postprocess.labels(probs), strict=True):
                    seqs[item.frame.stream] += 1
                    self._publish(item, labels, seqs[item.frame.stream], model_info)
        except BaseException as exc:
            self._error = exc
            if isinstance(exc, LabelcastError):
                log.error("%s", exc)
            else:
                log.exception("the classifier failed; stopping the pipeline")
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join()
            for worker in self._sink_workers:
                worker.close()
            self._done.set()

    def _count_batch(self, batch: list[QueuedFrame]) -> None:
        stats = self.batch_stats
        stats.batches += 1
        stats.frames += len(batch)
        stats.largest = max(stats.largest, len(batch))
        if len({item.frame.stream for item in batch}) > 1:
            stats.multi_stream += 1

    def _publish(
        self, item: QueuedFrame, labels: tuple[Label, ...], seq: int, model_info: ModelInfo
    ) -> None:
        frame = item.frame
        stats = self.stats[frame.stream]
        stats.classified += 1
        stats.dropped += item.dropped
        event = LabelEvent(
            pipeline=self.config.name,
            stream=frame.stream,
            seq=seq,
            pts=frame.pts,
            captured_at=frame.captured_at,
            latency_ms=(time.time() - frame.captured_at) * 1000.0,
            labels=labels,
            model=model_info,
            dropped=item.dropped,
        )
        for worker in self._sink_workers:
            worker.put(event, frame)
