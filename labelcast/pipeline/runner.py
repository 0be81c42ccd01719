"""The runner: wires sources, batcher, classifier, postprocess and sinks, and owns their threads."""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from labelcast.config import PipelineConfig, SinkConfig, SourceConfig
from labelcast.errors import BatchError, LabelcastError, SourceError
from labelcast.pipeline.batcher import QueuedFrame, StreamQueues
from labelcast.pipeline.classifier import Classifier
from labelcast.pipeline.fanout import SinkWorker
from labelcast.pipeline.frames import (
    ChangeEvent,
    Label,
    LabelEvent,
    LabelState,
    ModelInfo,
    StreamState,
    StreamStatus,
    UnsampledFrame,
)
from labelcast.pipeline.metrics import PipelineMetrics
from labelcast.pipeline.postprocess import StreamPostprocess
from labelcast.pipeline.selfcheck import run_self_check, self_check_wanted
from labelcast.pipeline.smoothing import LabelTracker
from labelcast.sinks.base import Sink
from labelcast.sinks.callback import CallbackSink
from labelcast.sinks.log import LogSink
from labelcast.sinks.mqtt import MqttSink
from labelcast.sinks.outbox import hand_over
from labelcast.sinks.overlay import OverlaySink
from labelcast.sources.base import Source, UnsampledTap, is_live
from labelcast.sources.camera import CameraSource
from labelcast.sources.file import FileSource
from labelcast.sources.stream import RtspSource, StreamSource
from labelcast.sources.webrtc import WebRTCSource

log = logging.getLogger(__name__)

SOURCE_CLASSES: dict[str, Callable[..., Source]] = {
    "file": FileSource,
    "rtsp": RtspSource,
    "stream": StreamSource,
    "camera": CameraSource,
    "webrtc": WebRTCSource,
}
SINK_CLASSES: dict[str, Callable[..., Sink]] = {
    "log": LogSink,
    "mqtt": MqttSink,
    "overlay": OverlaySink,
}


@dataclass
class StreamStats:
    """Progress of one stream, updated by the pipeline's threads."""

    stream: str
    decoded: int = 0
    sampled: int = 0
    classified: int = 0
    dropped: int = 0
    reconnects: int = 0
    total_frames: int | None = None
    ended: bool = False
    failed: str | None = None
    state: StreamState | None = None
    last_progress: float = 0.0  # time.monotonic() of its last queued frame or state change


@dataclass
class BatchStats:
    """How the classifier's micro-batches were filled."""

    batches: int = 0
    frames: int = 0
    largest: int = 0
    multi_stream: int = 0  # batches that held frames of more than one stream


@dataclass(frozen=True)
class ReloadResult:
    """What a reload changed: streams and sinks added, removed or restarted, model reloaded."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    sinks_added: int = 0
    sinks_removed: int = 0
    model_reloaded: bool = False


@dataclass
class _SourceHandle:
    """One running source: its config, its thread and its own stop signal."""

    config: SourceConfig
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    source: Source | None = None


@dataclass
class _Labelling:
    """What turns a batch's probabilities into events: model, label rules, trackers."""

    classifier: Classifier
    postprocess: StreamPostprocess
    trackers: dict[str, LabelTracker]
    model_info: ModelInfo


@dataclass(frozen=True)
class _Submitted:
    """A batch handed to the classifier: ``result()`` waits for its scores."""

    batch: list[QueuedFrame]
    labelling: _Labelling
    started: float  # time.perf_counter() at submission
    result: Callable[[], npt.NDArray[np.float32]]


def _ready(probs: npt.NDArray[np.float32]) -> Callable[[], npt.NDArray[np.float32]]:
    """Return the ``result`` of a batch classified before it was submitted (nothing to wait for)."""
    return lambda: probs


class Pipeline:
    """Runs one configured pipeline: start it, wait for it, stop it, or iterate its events.

    ``on_event`` (optional) is called with each ``LabelEvent`` on a sink thread of its
    own; ``on_change`` (optional) with each ``ChangeEvent`` and the stream's new
    ``LabelState``, on that same thread, in order with the events. ``classifier`` lets
    an embedding application share one loaded model.
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        on_event: Callable[[LabelEvent], object] | None = None,
        on_change: Callable[[ChangeEvent, LabelState], object] | None = None,
        classifier: Classifier | None = None,
    ) -> None:
        self.config = config
        self.run_id = new_run_id()
        self.stats = {source.id: StreamStats(source.id) for source in config.sources}
        self.batch_stats = BatchStats()
        self.metrics = PipelineMetrics()
        self.classifier = classifier
        self._on_event = on_event
        self._on_change = on_change
        self._labelling: _Labelling | None = None
        self._pending: _Labelling | None = None  # adopted by the classifier thread
        self._adopted = threading.Event()
        self._stop = threading.Event()  # graceful: sources stop, queued frames are classified
        self._abort = threading.Event()  # hard: nobody waits for anything any more
        self._sources: dict[str, _SourceHandle] = {}
        self._retired_threads: list[threading.Thread] = []
        self._queues = StreamQueues()
        self._seqs: dict[str, int] = {}  # events per stream, across reloads
        # Each running sink with the config it came from (None: the API's callback sink).
        self._sink_entries: list[tuple[SinkConfig | None, SinkWorker]] = []
        self._classifier_thread: threading.Thread | None = None
        self._loader: threading.Thread | None = None  # loads the model during start()
        self._heartbeat = time.monotonic()
        self._reload_lock = threading.Lock()
        # Held while events go out and while a reload switches sinks, so no event is
        # handed to a sink after the reload has closed it.
        self._sinks_lock = threading.Lock()
        # The classifier the application lent (never closed here), if any.
        self._lent_classifier = classifier
        self._done = threading.Event()
        self._error: BaseException | None = None
        self.metrics.watch(self)

    def start(self) -> None:
        """Load the model, open the sinks and start every thread; return at once.

        ``stop()`` or ``abort()`` during start-up (from another thread or a signal
        handler) ends it at once, even while the model loads: no source opens, and
        ``wait()`` returns True. Raises ModelError or SinkError (before any thread runs)
        if those can't start, ConfigError if ``labels.groups`` does not fit the model.
        """
        if self.classifier is None:
            self.classifier = self._load_classifier()
        if self.classifier is None or self._stop.is_set():
            self._end_start_up()
            return
        self._labelling = self._build_labelling(self.config, self.classifier, None)
        workers = self._open_sinks(self.config.sinks)
        entries: list[tuple[SinkConfig | None, SinkWorker]] = list(
            zip(self.config.sinks, workers, strict=True)
        )
        if self._on_event is not None or self._on_change is not None:
            callback = SinkWorker(CallbackSink(self._on_event, on_change=self._on_change))
            callback.start()
            entries.append((None, callback))
        self._sink_entries = entries
        if self._stop.is_set():
            for worker in self.sinks:
                worker.close(self.config.shutdown_timeout_s)
            self._end_start_up()
            return
        # A stop() from here on reaches the sources: each checks it before it opens.
        self._classifier_thread = threading.Thread(
            target=self._classify_loop, name="classifier", daemon=True
        )
        for source_config in self.config.sources:
            self._add_stream(source_config)
        self._classifier_thread.start()
        for handle in list(self._sources.values()):
            self._start_source(handle)

    def stop(self) -> None:
        """Ask the pipeline to stop: sources stop, queued frames are classified, sinks flush."""
        self._stop.set()
        for handle in list(self._sources.values()):
            self._stop_source(handle)

    def abort(self) -> None:
        """Stop at once: nothing waits for queued frames or slow sinks any more.

        ``wait()`` then returns soon, whatever a sink or source does; their threads
        may still run (see :meth:`unfinished_threads`).
        """
        self._abort.set()
        for worker in self.sinks:
            worker.abort()
        self.stop()

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
    def error(self) -> BaseException | None:
        """The unexpected error that ended the pipeline (``wait()`` raises it), if any."""
        return self._error

    def unfinished_threads(self) -> list[str]:
        """Name this pipeline's threads that still run (none once a stop has finished).

        After ``abort()``, or a start-up stopped while the model loaded, some may be
        inside native code (a forward pass, a blocked write), where a normal interpreter
        exit can abort the process: ``labelcast run`` then ends with ``os._exit``.
        """
        threads = [self._loader, self._classifier_thread, *self._retired_threads]
        threads += [handle.thread for handle in list(self._sources.values())]
        names = [thread.name for thread in threads if thread is not None and thread.is_alive()]
        return names + [f"sink:{worker.sink.name}" for worker in self.sinks if worker.running]

    def _load_classifier(self) -> Classifier | None:
        """Load the configured model on a thread of its own; None if ``stop()`` came first.

        A load can take minutes (a download) inside calls no signal interrupts; waiting
        for it here lets ``stop()`` end start-up at once. The loading thread is then left
        to finish on its own, and what it loads is dropped.
        """
        if self._stop.is_set():
            return None
        loaded: list[Classifier] = []
        failed: list[BaseException] = []

        def load() -> None:
            try:
                loaded.append(Classifier.load(self.config.model))
            except BaseException as exc:  # handed to start(), which raises it
                failed.append(exc)

        self._loader = threading.Thread(target=load, name="model-load", daemon=True)
        self._loader.start()
        while self._loader.is_alive():
            if self._stop.is_set():
                return None
            self._loader.join(0.1)
        if failed:
            raise failed[0]
        return loaded[0]

    def _end_start_up(self) -> None:
        """Finish a pipeline stopped during start-up: nothing runs, ``wait()`` returns."""
        log.info("stopped during start-up: no source was opened")
        self._done.set()

    @property
    def label_states(self) -> dict[str, LabelState]:
        """Each stream's current smoothed label, as last handed to the sinks."""
        labelling = self._labelling
        if labelling is None:
            return {}
        return {
            stream: tracker.state
            for stream, tracker in list(labelling.trackers.items())
            if tracker.state is not None
        }

    @property
    def failed_streams(self) -> list[str]:
        """Streams whose source could not be opened or read."""
        return [s.stream for s in self.stats.values() if s.failed is not None]

    @property
    def sinks(self) -> list[SinkWorker]:
        """The running sinks, each with its counters."""
        return [worker for _, worker in self._sink_entries]

    def queue_depth(self, stream: str) -> int:
        """Return how many sampled frames of ``stream`` wait for the classifier."""
        return self._queues.depth(stream)

    def liveness(self) -> tuple[bool, str]:
        """Whether the classifier and the sources make progress (none hangs), with the reason.

        A source counts as hung when it is online, its queue has room, and it has queued
        no frame for ``classifier_stall_s`` (live sources reconnect long before that).
        """
        thread = self._classifier_thread
        if thread is None:
            return False, "not started"
        if self._done.is_set():
            return True, "finished"
        if not thread.is_alive():
            return False, "the classifier thread has died"
        # Waiting for a remote model server (backend triton) is progress: a down server
        # is not a hung daemon (readiness reports it instead).
        labelling = self._labelling
        remote = labelling.classifier.remote_activity() if labelling is not None else None
        age = time.monotonic() - max(self._heartbeat, remote or 0.0)
        limit = self.config.classifier_stall_s
        if age > limit:
            return False, f"the classifier has made no progress for {age:.0f} s"
        now = time.monotonic()
        for stream, handle in list(self._sources.items()):
            stats = self.stats.get(stream)
            if stats is None or stats.ended or stats.state != "online":
                continue
            idle = now - stats.last_progress
            # A stream sampled slower than the limit yields frames slower than it, too.
            fps = handle.config.sample.fps
            stream_limit = max(limit, 3.0 / fps) if fps else limit
            if idle > stream_limit and self._queues.depth(stream) < handle.config.queue_size:
                return False, f"stream {stream} has made no progress for {idle:.0f} s"
        return True, "ok"

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Whether the pipeline is ready: model loaded, streams online, sinks connected."""
        reasons: list[str] = []
        labelling = self._labelling
        if labelling is None:
            reasons.append("the model is not loaded yet")
        else:
            remote = labelling.classifier.remote_status()  # backend triton: the server
            if remote is not None:
                reasons.append(remote)
        alive, why = self.liveness()
        if not alive:
            reasons.append(why)
        streams: dict[str, str] = {}
        for stream, handle in list(self._sources.items()):
            state = self.stats[stream].state or "starting"
            streams[stream] = state
            if state != "online" and not handle.config.allow_offline:
                reasons.append(f"stream {stream} is {state}")
        sinks: dict[str, bool] = {}
        for worker in self.sinks:
            connected = worker.sink.connected
            sinks[worker.sink.name] = connected
            if not connected:
                problem = worker.sink.problem
                detail = f": {problem}" if problem else ""
                reasons.append(f"sink {worker.sink.name} is not connected{detail}")
        return not reasons, {"reasons": reasons, "streams": streams, "sinks": sinks}

    def reconfigure(self, config: PipelineConfig) -> ReloadResult:
        """Switch to a new configuration without stopping what did not change.

        Everything new is built first (model, label rules, sinks); if any of it fails,
        the error is raised and the running pipeline is untouched. Then removed and
        changed sources stop (their queued frames are still classified), the classifier
        adopts the new model and rules between two batches, and added or changed
        sources start. Unchanged sources and sinks keep running; every stream's ``seq``
        continues.
        """
        with self._reload_lock:
            if self._labelling is None or self._done.is_set():
                raise RuntimeError("reconfigure() needs a running pipeline")
            old = self.config
            # Batch size and wait apply at once; anything else (buckets too) loads the model.
            model_changed = old.model.model_dump(
                exclude={"batch": {"max_size", "max_wait_ms"}}
            ) != config.model.model_dump(exclude={"batch": {"max_size", "max_wait_ms"}})
            previous = self._labelling.classifier
            classifier = Classifier.load(config.model) if model_changed else previous
            try:
                labelling = self._build_labelling(config, classifier, self._labelling)
                running = list(self._sink_entries)
                unchanged = [e for e in running if e[0] is None or e[0] in config.sinks]
                unchanged_configs = [cfg for cfg, _ in unchanged]
                new_sink_configs = [cfg for cfg in config.sinks if cfg not in unchanged_configs]
                retired = [entry for entry in running if entry not in unchanged]
                added_sinks = self._replace_sinks(unchanged, retired, new_sink_configs)
            except BaseException:
                if classifier is not previous:
                    classifier.close()  # the model loaded for the rejected config
                raise

            old_sources = {s.id: s for s in old.sources}
            new_sources = {s.id: s for s in config.sources}
            removed = [i for i in old_sources if i not in new_sources]
            added = [i for i in new_sources if i not in old_sources]
            restarted = [
                i
                for i in new_sources
                if i in old_sources and _source_key(old_sources[i]) != _source_key(new_sources[i])
            ]
            kept = [i for i in new_sources if i in old_sources and i not in restarted]

            for stream in added:
                self.stats[stream] = StreamStats(stream)
            self.config = config
            for stream in removed + restarted:
                self._retire_source(stream)
            adopted = self._adopt(labelling)
            if classifier is not previous:
                self.classifier = classifier
                # The classifier thread no longer uses the previous model: free it (and
                # its staging buffers and threads) now, unless the application lent it.
                if adopted and previous is not self._lent_classifier:
                    previous.close()
            for stream in added + restarted:
                self._add_stream(new_sources[stream])
                self._start_source(self._sources[stream])
            for stream in removed:
                self._queues.remove_stream(stream)
                self.stats.pop(stream, None)

            result = ReloadResult(
                tuple(added),
                tuple(removed),
                tuple(restarted),
                tuple(kept),
                len(added_sinks),
                len(retired),
                model_changed,
            )
            log.info("reloaded: %s", _describe_reload(result))
            return result

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

    # -- sources ---------------------------------------------------------------------------

    def _add_stream(self, config: SourceConfig) -> None:
        live = is_live(SOURCE_CLASSES[config.type], config)
        self._queues.add_stream(config.id, config.queue_size, live=live)
        self._seqs.setdefault(config.id, 0)
        self.stats.setdefault(config.id, StreamStats(config.id))
        self._sources[config.id] = _SourceHandle(config)

    def _start_source(self, handle: _SourceHandle) -> None:
        handle.thread = threading.Thread(
            target=self._source_loop,
            args=(handle,),
            name=f"source:{handle.config.id}",
            daemon=True,
        )
        handle.thread.start()

    def _stop_source(self, handle: _SourceHandle) -> None:
        handle.stop.set()
        if handle.source is not None:
            _interrupt(handle.source)

    def _retire_source(self, stream: str) -> None:
        """Stop a source, wait for its thread, and for its queued frames to be classified."""
        handle = self._sources.pop(stream)
        self._stop_source(handle)
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        if handle.thread is not None:
            handle.thread.join(self.config.shutdown_timeout_s)
        while self._queues.depth(stream) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _source_loop(self, handle: _SourceHandle) -> None:
        config = handle.config
        stream = config.id
        stats = self.stats[stream]
        stats.ended, stats.failed = False, None
        end_reason = "ended"

        def on_status(state: StreamState, reason: str | None = None) -> None:
            self._set_status(stream, state, reason)

        try:
            if handle.stop.is_set() or self._stop.is_set():
                end_reason = "stopped"  # before it opened (the pipeline's start-up, a reload)
                return
            source = SOURCE_CLASSES[config.type](config, on_status=on_status)
            source.on_unsampled = self._tap(source)
            handle.source = source
            if handle.stop.is_set():  # stopped before the source existed
                _interrupt(source)
            with source:
                if not handle.stop.is_set():  # a live source stopped while connecting
                    self._set_status(stream, "online", None)
                stats.total_frames = getattr(source, "frame_count_hint", None)
                frames = source.frames()
                with contextlib.closing(frames):  # type: ignore[type-var]
                    for frame in frames:
                        stats.decoded = getattr(source, "frames_decoded", stats.decoded)
                        # A frame in hand was sampled: it is queued even when stopping.
                        if not self._queues.put(frame, self._abort):
                            break
                        stats.sampled += 1
                        stats.last_progress = time.monotonic()
                        if handle.stop.is_set():
                            break
                stats.decoded = getattr(source, "frames_decoded", stats.decoded)
            if handle.stop.is_set():
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
        stats = self.stats.get(stream)
        if stats is None:
            return
        if stats.state == state and state != "reconnecting":
            return
        if state == "reconnecting" and stats.state != "reconnecting":
            stats.reconnects += 1
        stats.state = state
        stats.last_progress = time.monotonic()
        if state == "online":
            log.info("stream %s: online", stream)
        else:
            log.info("stream %s: %s (%s)", stream, state, reason)
        status = StreamStatus(self.config.name, stream, state, reason, time.time())
        for worker in self.sinks:
            worker.put_status(status)

    # -- sinks -----------------------------------------------------------------------------

    def _open_sinks(self, configs: Sequence[SinkConfig]) -> list[SinkWorker]:
        """Open sinks and start their workers; if one fails, close those opened and raise."""
        workers: list[SinkWorker] = []
        try:
            for sink_config in configs:
                workers.append(SinkWorker(SINK_CLASSES[sink_config.type](sink_config)))
        except BaseException:
            for worker in workers:
                worker.sink.close()
            raise
        for worker in workers:
            worker.start()
        return workers

    def _replace_sinks(
        self,
        unchanged: list[tuple[SinkConfig | None, SinkWorker]],
        retired: list[tuple[SinkConfig | None, SinkWorker]],
        configs: list[SinkConfig],
    ) -> list[SinkWorker]:
        """Open the new sinks, switch events over to them, then close the retired ones.

        New sinks open while the retired ones keep working, so no event falls between
        them; if one fails to open, those opened are closed, the error is raised and
        nothing changed. A new MQTT sink whose outbox file a retired one holds takes
        that outbox over (``outbox.hand_over``): it writes once the retired sink has
        written what it was handed and closed, and publishes from there.
        """
        if not retired and not configs:
            return []
        with hand_over():
            added = self._open_sinks(configs)
            with self._sinks_lock:
                self._sink_entries = unchanged + list(zip(configs, added, strict=True))
            self._update_taps()
            for _, worker in retired:
                if not worker.close(self.config.shutdown_timeout_s):
                    log.warning("sink %s did not finish in time", worker.sink.name)
        return added

    def _tap(self, source: Source) -> UnsampledTap | None:
        """Return the source's ``on_unsampled``: None unless a sink wants every frame.

        Handing unsampled frames out costs a colour conversion each, so sources do it
        only while an all-frames sink runs. A file source waits for a lossless sink; a
        live source never waits (the sink drops and counts instead).
        """
        if not any(worker.wants_all_frames for worker in self.sinks):
            return None
        live = source.live

        def deliver(frame: UnsampledFrame) -> None:
            workers = [worker for worker in self.sinks if worker.wants_all_frames]
            if not live and any(worker.sink.lossless for worker in workers):
                # A file decodes far ahead of the classifier, and its unsampled frames
                # wait in the sink for their labels: keep its lead to about one sampled
                # frame, so that few wait at a time.
                while self._queues.depth(frame.stream) > 0 and not self._abort.is_set():
                    time.sleep(0.005)
            for worker in workers:
                wait = worker.sink.lossless and not live
                # A waiting file is bounded by the sink's queue: the sink keeps its frames.
                worker.put_unsampled(replace(frame, keep=wait), wait=wait)

        return deliver

    def _update_taps(self) -> None:
        """Point every running source's ``on_unsampled`` at the current sinks."""
        for handle in list(self._sources.values()):
            if handle.source is not None:
                handle.source.on_unsampled = self._tap(handle.source)

    # -- classification --------------------------------------------------------------------

    def _build_labelling(
        self, config: PipelineConfig, classifier: Classifier, previous: _Labelling | None
    ) -> _Labelling:
        """Build each stream's postprocess and tracker (its labels and smoothing overrides).

        A stream whose rules, model and pipeline name are unchanged keeps its tracker,
        so a reload does not reset its state.
        """
        rules = {source.id: config.stream_labels(source.id) for source in config.sources}
        postprocess = StreamPostprocess(
            {stream: labels for stream, (labels, _) in rules.items()}, classifier.id2label
        )
        trackers: dict[str, LabelTracker] = {}
        for source in config.sources:
            labels, smoothing = rules[source.id]
            if (
                previous is not None
                and previous.classifier is classifier
                and config.name == self.config.name
                and source.id in previous.trackers
                and self._rules_of(source.id) == rules[source.id]
            ):
                trackers[source.id] = previous.trackers[source.id]
                continue
            live = is_live(SOURCE_CLASSES[source.type], source)
            trackers[source.id] = LabelTracker(
                smoothing,
                postprocess.of(source.id).names,
                labels.min_score,
                pipeline=config.name,
                stream=source.id,
                run=self.run_id,
                clock=smoothing.resolved_clock(live),
            )
        info = classifier.info
        model_info = ModelInfo(info.id, info.revision, info.precision)
        return _Labelling(classifier, postprocess, trackers, model_info)

    def _rules_of(self, stream: str) -> tuple[object, object] | None:
        if any(source.id == stream for source in self.config.sources):
            return self.config.stream_labels(stream)
        return None

    def _adopt(self, labelling: _Labelling) -> bool:
        """Hand new rules to the classifier thread; return whether it took them in time."""
        self._adopted.clear()
        self._pending = labelling
        if not self._adopted.wait(self.config.shutdown_timeout_s + self.config.classifier_stall_s):
            log.warning("the classifier did not take the new configuration in time")
            return False
        # The classifier thread also sets it when it ends, without taking anything.
        return self._labelling is labelling

    def _take_pending(self, batch: Sequence[QueuedFrame] = ()) -> _Labelling:
        """Adopt the labelling a reload handed over, if any; return the one to use now.

        A ``batch`` already formed that holds frames of a stream the new labelling
        does not know (a reload removed it) is classified under the current one: the
        new one is adopted before the next batch.
        """
        current = self._labelling
        assert current is not None  # start() built it
        pending = self._pending
        if pending is None or any(item.frame.stream not in pending.trackers for item in batch):
            return current
        self._pending = None
        # Streams that are gone end their state, so no retained state is left behind.
        for stream, tracker in current.trackers.items():
            if pending.trackers.get(stream) is not tracker:
                self._publish_change(tracker, tracker.finish())
        self._labelling = pending
        self._adopted.set()
        return pending

    def _classify_loop(self) -> None:
        self_check_pending = True
        # On CUDA (classifier.overlaps) one batch stays in flight on the device while the
        # next is formed and staged; its events are published once the next is submitted.
        in_flight: _Submitted | None = None
        try:
            while True:
                if self._abort.is_set():
                    break  # abort(): queued frames are not classified any more
                self._heartbeat = time.monotonic()
                in_flight = self._complete_before_reload(in_flight)
                labelling = self._take_pending()
                batching = self.config.model.batch
                if in_flight is None:
                    batch = self._queues.next_batch(batching.max_size, batching.max_wait_ms / 1000)
                else:
                    # The device is busy: take only frames already queued, so the batch in
                    # flight is not held back waiting for more.
                    batch = self._queues.next_batch(batching.max_size, 0.0, idle_s=0.0)
                if not batch and in_flight is not None:
                    # Nothing queued (or all ended): publish the batch in flight first.
                    self._complete(in_flight)
                    in_flight = None
                    continue
                if batch is None:
                    # Frames of failed batches that no later event reported still count.
                    for stream, frames in self._queues.take_unreported_failed().items():
                        if stream in self.stats:
                            self.stats[stream].dropped += frames
                    break
                if not batch:
                    continue
                in_flight = self._complete_before_reload(in_flight)
                labelling = self._take_pending(batch)
                self._count_batch(batch)
                images = [item.frame.image for item in batch]
                classifier = labelling.classifier
                if self_check_pending:
                    self_check_pending = False
                    if self_check_wanted(self.config.model, classifier):
                        run_self_check(self.config.model, classifier, images)
                # Wrappers with only classify() (a duck-typed Classifier) run serially.
                overlaps = bool(getattr(classifier, "overlaps", False))
                started = time.perf_counter()
                try:
                    if overlaps:
                        result = classifier.submit(images).result
                    elif classifier.info.backend == "triton":
                        # A remote backend stops waiting for its server on abort().
                        result = _ready(classifier.classify(images, stop=self._abort))
                    else:
                        result = _ready(classifier.classify(images))
                except BatchError as exc:
                    # A remote model server kept failing this batch (docs/scaling.md): its
                    # frames count as dropped, in each stream's next event; the pipeline goes on.
                    log.warning("%s", exc)
                    for item in batch:
                        self._queues.count_failed(item.frame.stream, item.dropped + 1)
                    continue
                submitted = _Submitted(batch, labelling, started, result)
                if in_flight is not None:
                    self._complete(in_flight)
                    in_flight = None
                if overlaps:
                    in_flight = submitted
                else:
                    self._complete(submitted)
        except BaseException as exc:
            self._error = exc
            if isinstance(exc, LabelcastError):
                log.error("%s", exc)
            else:
                # One line that names the cause; the traceback is for --log-level DEBUG
                # (and wait() raises the error itself).
                log.error(
                    "the classifier failed, stopping the pipeline: %s: %s",
                    type(exc).__name__,
                    exc,
                )
                log.debug("the classifier's error", exc_info=exc)
        finally:
            self._finish()

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
        probs = submitted.result()
        # With a batch in flight this includes the time it queued behind the one before.
        self.metrics.model_seconds.observe(time.perf_counter() - submitted.started)
        labelling = submitted.labelling
        # Frames of a stream a reload removed that were still queued when the classifier
        # adopted the new rules (the reload waits at most shutdown_timeout_s for them)
        # have no rules any more: they are dropped, and counted here.
        rows = [
            i for i, item in enumerate(submitted.batch) if item.frame.stream in labelling.trackers
        ]
        if len(rows) < len(submitted.batch):
            self._drop_removed(
                [item for item in submitted.batch if item.frame.stream not in labelling.trackers]
            )
            probs = probs[rows]
        batch = [submitted.batch[i] for i in rows]
        streams = [item.frame.stream for item in batch]
        for item, (labels, scores) in zip(
            batch, labelling.postprocess.run(streams, probs), strict=True
        ):
            frame = item.frame
            self._seqs[frame.stream] += 1
            seq = self._seqs[frame.stream]
            self._publish(item, labels, seq, labelling.model_info)
            tracker = labelling.trackers[frame.stream]
            change = tracker.update(scores, seq=seq, pts=frame.pts, captured_at=frame.captured_at)
            self._publish_change(tracker, change)

    def _drop_removed(self, items: Sequence[QueuedFrame]) -> None:
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

    def _finish(self) -> None:
        """Stop the sources, end every stream's state and close the sinks; then done.

        After a failure all of it takes at most ``shutdown_timeout_s``; a graceful end
        waits for the sinks until ``abort()``.
        """
        self.stop()
        # Nothing batches frames any more: a file source waiting for room must not wait.
        self._queues.shut()
        self._adopted.set()  # a reload waiting on this thread must not wait any more
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        for handle in list(self._sources.values()):
            if handle.thread is not None:
                handle.thread.join(max(0.0, deadline - time.monotonic()))
                if handle.thread.is_alive():
                    log.warning("stream %s did not stop in time", handle.config.id)
        # Every frame is classified: streams that still show a label end, so no sink
        # keeps a retained state that nothing watches any more.
        if self._labelling is not None:
            for tracker in self._labelling.trackers.values():
                self._publish_change(tracker, tracker.finish())
        for worker in self.sinks:
            timeout = None if self._error is None else max(0.0, deadline - time.monotonic())
            if not worker.close(timeout):
                log.warning("sink %s did not finish in time", worker.sink.name)
        self._done.set()

    def _count_batch(self, batch: list[QueuedFrame]) -> None:
        stats = self.batch_stats
        stats.batches += 1
        stats.frames += len(batch)
        stats.largest = max(stats.largest, len(batch))
        if len({item.frame.stream for item in batch}) > 1:
            stats.multi_stream += 1
        self.metrics.batch_size.observe(len(batch))

    def _publish(
        self, item: QueuedFrame, labels: tuple[Label, ...], seq: int, model_info: ModelInfo
    ) -> None:
        frame = item.frame
        stats = self.stats[frame.stream]
        stats.classified += 1
        stats.dropped += item.dropped
        latency_s = time.time() - frame.captured_at
        self.metrics.latency_seconds.observe(latency_s)
        event = LabelEvent(
            pipeline=self.config.name,
            run=self.run_id,
            stream=frame.stream,
            seq=seq,
            pts=frame.pts,
            captured_at=frame.captured_at,
            latency_ms=latency_s * 1000.0,
            labels=labels,
            model=model_info,
            dropped=item.dropped,
        )
        with self._sinks_lock:
            for worker in self.sinks:
                worker.put(event, frame)

    def _publish_change(self, tracker: LabelTracker, change: ChangeEvent | None) -> None:
        state = tracker.state
        if change is None or state is None:
            return
        log.debug(
            "stream %s: %s %s -> %s", change.stream, change.type, change.previous, change.label
        )
        with self._sinks_lock:
            for worker in self.sinks:
                worker.put_change(change, state)


def new_run_id() -> str:
    """Return an id for one run of a pipeline: its start time (UTC) and 4 random hex digits.

    Event ids include it, because ``seq`` starts at 1 again on every run.
    """
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)


def _source_key(config: SourceConfig) -> dict[str, object]:
    """Return what restarts a source when it changes (label rules apply without one)."""
    return config.model_dump(exclude={"labels", "smoothing", "allow_offline"})


def _describe_reload(result: ReloadResult) -> str:
    parts = [
        f"{name} {', '.join(streams)}"
        for name, streams in (
            ("added", result.added),
            ("removed", result.removed),
            ("restarted", result.restarted),
        )
        if streams
    ]
    if result.sinks_added or result.sinks_removed:
        parts.append(f"sinks +{result.sinks_added} -{result.sinks_removed}")
    if result.model_reloaded:
        parts.append("model reloaded")
    return "; ".join(parts) or "nothing changed"


def _interrupt(source: Source) -> None:
    """Make a source that may be waiting on a network or device return soon (if it can)."""
    stop = getattr(source, "stop", None)
    if callable(stop):
        stop()
