"""The pipeline's streams: one thread per source, each stream's state, and its frames' hand-off.

A source thread opens its source, queues the frames it samples for the classifier and
hands the frames it skips to the sinks that want every frame; it reports the stream's
state (online, reconnecting, offline) to the log and the sinks.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace

from labelcast.config import SourceConfig
from labelcast.errors import SourceError
from labelcast.frames import StreamState, StreamStatus, UnsampledFrame
from labelcast.pipeline.regions import SubjectPicker
from labelcast.pipeline.state import PipelineState, StreamStats
from labelcast.sources import source_class
from labelcast.sources.base import Source, UnsampledTap

# These lines were the runner's before it was split, and they stay on its logger: tools
# and tests follow the streams' states there ("stream door: reconnecting (...)").
log = logging.getLogger("labelcast.pipeline.runner")


@dataclass
class SourceHandle:
    """One running source: its config, its thread and its own stop signal."""

    config: SourceConfig
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    source: Source | None = None


class Streams:
    """Each stream's source and thread; their frames go to the state's queues and sinks."""

    def __init__(self, state: PipelineState) -> None:
        self._state = state
        self.handles: dict[str, SourceHandle] = {}

    def add(self, config: SourceConfig) -> SourceHandle:
        """Register a stream (its queue and counters) before its thread starts."""
        live = source_class(config.type).live_for(config)
        self._state.queues.add_stream(config.id, config.queue_size, live=live)
        self._state.stats.setdefault(config.id, StreamStats(config.id))
        handle = SourceHandle(config)
        self.handles[config.id] = handle
        return handle

    def start(self, handle: SourceHandle) -> None:
        """Start a stream's source thread."""
        handle.thread = threading.Thread(
            target=self._run,
            args=(handle,),
            name=f"source:{handle.config.id}",
            daemon=True,
        )
        handle.thread.start()

    def stop(self, handle: SourceHandle) -> None:
        """Ask a stream's source to stop; a source waiting on a network or device returns soon."""
        handle.stop.set()
        if handle.source is not None:
            handle.source.stop()

    def stop_all(self) -> None:
        """Ask every stream's source to stop."""
        for handle in list(self.handles.values()):
            self.stop(handle)

    def retire(self, stream: str, timeout: float) -> None:
        """Stop a source, wait for its thread, and for its queued frames to be classified.

        Waits at most ``timeout`` for each.
        """
        handle = self.handles.pop(stream)
        self.stop(handle)
        deadline = time.monotonic() + timeout
        if handle.thread is not None:
            handle.thread.join(timeout)
        while self._state.queues.depth(stream) and time.monotonic() < deadline:
            time.sleep(0.05)

    def join(self, deadline: float) -> None:
        """Wait until every source thread has ended, or ``deadline`` (time.monotonic())."""
        for handle in list(self.handles.values()):
            if handle.thread is not None:
                handle.thread.join(max(0.0, deadline - time.monotonic()))
                if handle.thread.is_alive():
                    log.warning("stream %s did not stop in time", handle.config.id)

    def threads(self) -> list[threading.Thread]:
        """Return the source threads started."""
        handles = list(self.handles.values())
        return [handle.thread for handle in handles if handle.thread is not None]

    def set_status(self, stream: str, state: StreamState, reason: str | None) -> None:
        """Record a stream's new state, log it once and hand it to the sinks."""
        stats = self._state.stats.get(stream)
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
        status = StreamStatus(self._state.config.name, stream, state, reason, time.time())
        self._state.sinks.publish_status(status)

    def update_taps(self) -> None:
        """Point every running source's ``on_unsampled`` at the current sinks."""
        for handle in list(self.handles.values()):
            if handle.source is not None:
                handle.source.on_unsampled = self._tap(handle.source)

    def _run(self, handle: SourceHandle) -> None:
        """Run a source thread: open the source, queue its frames until it ends or stops."""
        state = self._state
        config = handle.config
        stream = config.id
        stats = state.stats[stream]
        stats.ended, stats.failed = False, None
        end_reason = "ended"

        def on_status(new: StreamState, reason: str | None = None) -> None:
            self.set_status(stream, new, reason)

        try:
            if handle.stop.is_set() or state.stop.is_set():
                end_reason = "stopped"  # before it opened (the pipeline's start-up, a reload)
                return
            source = source_class(config.type)(config, on_status=on_status)
            source.on_unsampled = self._tap(source)
            handle.source = source
            if handle.stop.is_set():  # stopped before the source existed
                source.stop()
            with source:
                if not handle.stop.is_set():  # a live source stopped while connecting
                    self.set_status(stream, "online", None)
                stats.opened(source.frame_count_hint)
                picker = SubjectPicker(config, stats.skipped)
                frames = source.frames()
                with contextlib.closing(frames):  # type: ignore[type-var]
                    for sampled in frames:
                        stats.decoded = source.frames_decoded
                        stats.last_progress = time.monotonic()
                        # Regions cut out, unchanged pictures gated (a frame whose pictures
                        # are all unchanged still goes: smoothing counts them).
                        frame = picker.pick(sampled)
                        # A frame in hand was sampled: it is queued even when stopping.
                        if not state.queues.put(frame, state.abort):
                            break
                        stats.count_sampled(frame.index)
                        if handle.stop.is_set():
                            break
                stats.decoded = source.frames_decoded
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
            state.queues.close_stream(stream)
            self.set_status(stream, "offline", end_reason)

    def _tap(self, source: Source) -> UnsampledTap | None:
        """Return the source's ``on_unsampled``: None unless a sink wants every frame.

        Handing unsampled frames out costs a colour conversion each, so sources do it
        only while an all-frames sink runs. A file source waits for a lossless sink; a
        live source never waits (the sink drops and counts instead).
        """
        sinks = self._state.sinks
        if not sinks.wants_all_frames:
            return None
        queues, abort = self._state.queues, self._state.abort
        live = source.live

        def deliver(frame: UnsampledFrame) -> None:
            workers = [worker for worker in sinks.workers if worker.wants_all_frames]
            if not live and any(worker.sink.lossless for worker in workers):
                # A file decodes far ahead of the classifier, and its unsampled frames
                # wait in the sink for their labels: keep its lead to about one sampled
                # frame, so that few wait at a time.
                while queues.depth(frame.stream) > 0 and not abort.is_set():
                    time.sleep(0.005)
            for worker in workers:
                wait = worker.sink.lossless and not live
                # A waiting file is bounded by the sink's queue: the sink keeps its frames.
                worker.put_unsampled(replace(frame, keep=wait), wait=wait)

        return deliver
