"""The runner: wires sources, batcher, classifier, postprocess and sinks, and owns their threads.

Its parts: :mod:`~labelcast.pipeline.streams` (a thread per source),
:mod:`~labelcast.pipeline.classify` (the classifier thread),
:mod:`~labelcast.pipeline.fanout` (a thread per sink), :mod:`~labelcast.pipeline.reload`
(what a reload changes) and :mod:`~labelcast.pipeline.health` (liveness, readiness).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterator

from labelcast.config import PipelineConfig
from labelcast.frames import ChangeEvent, LabelEvent, LabelState
from labelcast.model.backends.base import Backend, as_backend
from labelcast.model.classifier import Classifier
from labelcast.pipeline import health, reload
from labelcast.pipeline.classify import ClassifyLoop, build_labelling
from labelcast.pipeline.fanout import SinkWorker
from labelcast.pipeline.metrics import PipelineMetrics
from labelcast.pipeline.reload import ReloadResult
from labelcast.pipeline.state import BatchStats, PipelineState, StreamStats
from labelcast.pipeline.streams import Streams

log = logging.getLogger(__name__)

__all__ = ["BatchStats", "Pipeline", "ReloadResult", "StreamStats", "new_run_id"]


class Pipeline:
    """Runs one configured pipeline: start it, wait for it, stop it, or iterate its events.

    ``on_event`` (optional) is called with each ``LabelEvent`` on a sink thread of its
    own; ``on_change`` (optional) with each ``ChangeEvent`` and the stream's new
    ``LabelState``, on that same thread, in order with the events. ``classifier`` lets
    an embedding application share one loaded model: a Backend, or an object with
    ``classify``, ``info`` and ``id2label`` (then classified one batch at a time).
    """

    def __init__(
        self,
        config: PipelineConfig,
        *,
        on_event: Callable[[LabelEvent], object] | None = None,
        on_change: Callable[[ChangeEvent, LabelState], object] | None = None,
        classifier: object | None = None,
    ) -> None:
        stats = {source.id: StreamStats(source.id) for source in config.sources}
        self._state = PipelineState(config, new_run_id(), stats)
        self.batch_stats = BatchStats()
        self.metrics = PipelineMetrics()
        # The classifier the application lent (never closed here), if any.
        self._lent: Backend | None = None if classifier is None else as_backend(classifier)
        self.classifier: Backend | None = self._lent
        self._on_event = on_event
        self._on_change = on_change
        self._streams = Streams(self._state)
        self._loop: ClassifyLoop | None = None  # made by start(), once the model is there
        self._classifier_thread: threading.Thread | None = None
        self._loader: threading.Thread | None = None  # loads the model during start()
        self._reload_lock = threading.Lock()
        self._done = threading.Event()
        self.metrics.watch(self)

    @property
    def config(self) -> PipelineConfig:
        """The configuration running now (a reload replaces it)."""
        return self._state.config

    @property
    def run_id(self) -> str:
        """Return the id of this run, which event ids include (see :func:`new_run_id`)."""
        return self._state.run_id

    @property
    def stats(self) -> dict[str, StreamStats]:
        """Each stream's progress, updated by the pipeline's threads."""
        return self._state.stats

    def start(self) -> None:
        """Load the model, open the sinks and start every thread; return at once.

        ``stop()`` or ``abort()`` during start-up (from another thread or a signal
        handler) ends it at once, even while the model loads: no source opens, and
        ``wait()`` returns True. Raises ModelError or SinkError (before any thread runs)
        if those can't start, ConfigError if ``labels.groups`` does not fit the model.
        """
        state = self._state
        if self.classifier is None:
            self.classifier = self._load_classifier()
        if self.classifier is None or state.stop.is_set():
            self._end_start_up()
            return
        labelling = build_labelling(self.config, self.classifier, None, state)
        self._loop = ClassifyLoop(state, labelling, self.metrics, self.batch_stats)
        state.sinks.open(self.config.sinks, on_event=self._on_event, on_change=self._on_change)
        if state.stop.is_set():
            for worker in self.sinks:
                worker.close(self.config.shutdown_timeout_s)
            self._end_start_up()
            return
        # A stop() from here on reaches the sources: each checks it before it opens.
        self._classifier_thread = threading.Thread(
            target=self._classify, name="classifier", daemon=True
        )
        handles = [self._streams.add(source_config) for source_config in self.config.sources]
        self._classifier_thread.start()
        for handle in handles:
            self._streams.start(handle)

    def stop(self) -> None:
        """Ask the pipeline to stop: sources stop, queued frames are classified, sinks flush."""
        self._state.stop.set()
        self._streams.stop_all()

    def abort(self) -> None:
        """Stop at once: nothing waits for queued frames or slow sinks any more.

        ``wait()`` then returns soon, whatever a sink or source does; their threads
        may still run (see :meth:`unfinished_threads`).
        """
        self._state.abort.set()
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
        if finished and self.error is not None:
            raise self.error
        return finished

    def run(self) -> None:
        """Start, and wait until every source has ended (or ``stop()`` was called)."""
        self.start()
        self.wait()

    @property
    def error(self) -> BaseException | None:
        """The unexpected error that ended the pipeline (``wait()`` raises it), if any."""
        return None if self._loop is None else self._loop.error

    def unfinished_threads(self) -> list[str]:
        """Name this pipeline's threads that still run (none once a stop has finished).

        After ``abort()``, or a start-up stopped while the model loaded, some may be
        inside native code (a forward pass, a blocked write), where a normal interpreter
        exit can abort the process: ``labelcast run`` then ends with ``os._exit``.
        """
        threads = [self._loader, self._classifier_thread, *self._streams.threads()]
        names = [thread.name for thread in threads if thread is not None and thread.is_alive()]
        return names + [f"sink:{worker.sink.name}" for worker in self.sinks if worker.running]

    @property
    def label_states(self) -> dict[str, LabelState]:
        """Each stream's current smoothed label, as last handed to the sinks."""
        if self._loop is None:
            return {}
        return {
            stream: tracker.state
            for stream, tracker in list(self._loop.labelling.trackers.items())
            if tracker.state is not None
        }

    @property
    def failed_streams(self) -> list[str]:
        """Streams whose source could not be opened or read."""
        return [s.stream for s in self.stats.values() if s.failed is not None]

    @property
    def sinks(self) -> list[SinkWorker]:
        """The running sinks, each with its counters."""
        return self._state.sinks.workers

    def queue_depth(self, stream: str) -> int:
        """Return how many sampled frames of ``stream`` wait for the classifier."""
        return self._state.queues.depth(stream)

    def liveness(self) -> tuple[bool, str]:
        """Whether the classifier and the sources make progress (none hangs), with the reason.

        A source counts as hung when it is online, its queue has room, and it has queued
        no frame for ``classifier_stall_s`` (live sources reconnect long before that).
        """
        return health.liveness(
            self._state,
            self._loop,
            self._classifier_thread,
            self._streams,
            finished=self._done.is_set(),
        )

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Whether the pipeline is ready: model loaded, streams online, sinks connected."""
        return health.readiness(self._state, self._loop, self._streams, self.liveness())

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
            loop = self._loop
            if loop is None or self._done.is_set():
                raise RuntimeError("reconfigure() needs a running pipeline")
            state = self._state
            old = self.config
            model_changed = reload.model_changed(old.model, config.model)
            previous = loop.labelling.backend
            backend = self._load(config) if model_changed else previous
            try:
                labelling = build_labelling(config, backend, loop.labelling, state)
                sinks = reload.sink_changes(state.sinks.entries, list(config.sinks))
                added_sinks = state.sinks.replace(
                    sinks.unchanged,
                    sinks.retired,
                    sinks.added,
                    timeout=old.shutdown_timeout_s,
                    switched=self._streams.update_taps,
                )
            except BaseException:
                if backend is not previous:
                    backend.close()  # the model loaded for the rejected config
                raise

            streams = reload.stream_changes(old, config)
            for stream in streams.added:
                self.stats[stream] = StreamStats(stream)
            state.config = config
            for stream in streams.removed + streams.restarted:
                self._streams.retire(stream, config.shutdown_timeout_s)
            adopted = loop.adopt(labelling)
            if backend is not previous:
                self.classifier = backend
                # The classifier thread no longer uses the previous model: free it (and
                # its staging buffers and threads) now, unless the application lent it.
                if adopted and previous is not self._lent:
                    previous.close()
            for stream in streams.added + streams.restarted:
                handle = self._streams.add(next(s for s in config.sources if s.id == stream))
                self._streams.start(handle)
            for stream in streams.removed:
                state.queues.remove_stream(stream)
                self.stats.pop(stream, None)

            result = ReloadResult(
                streams.added,
                streams.removed,
                streams.restarted,
                streams.kept,
                len(added_sinks),
                len(sinks.retired),
                model_changed,
            )
            log.info("reloaded: %s", reload.describe(result))
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

    # -- threads ---------------------------------------------------------------------------

    @staticmethod
    def _load(config: PipelineConfig) -> Backend:
        """Load the model ``config`` names."""
        return Classifier.load(config.model)

    def _load_classifier(self) -> Backend | None:
        """Load the configured model on a thread of its own; None if ``stop()`` came first.

        A load can take minutes (a download) inside calls no signal interrupts; waiting
        for it here lets ``stop()`` end start-up at once. The loading thread is then left
        to finish on its own, and what it loads is dropped.
        """
        stop = self._state.stop
        if stop.is_set():
            return None
        loaded: list[Backend] = []
        failed: list[BaseException] = []

        def load() -> None:
            try:
                loaded.append(self._load(self.config))
            except BaseException as exc:  # handed to start(), which raises it
                failed.append(exc)

        self._loader = threading.Thread(target=load, name="model-load", daemon=True)
        self._loader.start()
        while self._loader.is_alive():
            if stop.is_set():
                return None
            self._loader.join(0.1)
        if failed:
            raise failed[0]
        return loaded[0]

    def _end_start_up(self) -> None:
        """Finish a pipeline stopped during start-up: nothing runs, ``wait()`` returns."""
        log.info("stopped during start-up: no source was opened")
        self._done.set()

    def _classify(self) -> None:
        """Run the classifier thread: classify until the end, then shut everything down."""
        assert self._loop is not None  # start() made it before starting this thread
        try:
            self._loop.run()
        finally:
            self._finish(self._loop)

    def _finish(self, loop: ClassifyLoop) -> None:
        """Stop the sources, end every stream's state and close the sinks; then done.

        After a failure all of it takes at most ``shutdown_timeout_s``; a graceful end
        waits for the sinks until ``abort()``.
        """
        self.stop()
        # Nothing batches frames any more: a file source waiting for room must not wait.
        self._state.queues.shut()
        loop.release()  # a reload waiting on the classifier thread must not wait any more
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        self._streams.join(deadline)
        # Every frame is classified: streams that still show a label end, so no sink
        # keeps a retained state that nothing watches any more.
        loop.end_states()
        for worker in self.sinks:
            timeout = None if loop.error is None else max(0.0, deadline - time.monotonic())
            if not worker.close(timeout):
                log.warning("sink %s did not finish in time", worker.sink.name)
        self._done.set()


def new_run_id() -> str:
    """Return an id for one run of a pipeline: its start time (UTC) and 4 random hex digits.

    Event ids include it, because ``seq`` starts at 1 again on every run.
    """
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(2)
