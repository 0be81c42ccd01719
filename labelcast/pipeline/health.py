"""Health of a running pipeline: liveness (nothing hangs) and readiness (it can do its job).

``/healthz`` and the systemd watchdog ask :func:`liveness`; ``/readyz`` asks
:func:`readiness`. Both only read counters and flags, so they are cheap from any thread.
"""

from __future__ import annotations

import threading
import time

from labelcast.pipeline.classify import ClassifyLoop
from labelcast.pipeline.state import PipelineState
from labelcast.pipeline.streams import Streams


def liveness(
    state: PipelineState,
    loop: ClassifyLoop | None,
    thread: threading.Thread | None,
    streams: Streams,
    *,
    finished: bool,
) -> tuple[bool, str]:
    """Whether the classifier and the sources make progress (none hangs), with the reason.

    ``loop`` and ``thread`` are the classifier's (None before it started); ``finished``
    whether the pipeline has ended. A source counts as hung when it is online, its queue
    has room, and it has queued no frame for ``classifier_stall_s`` (live sources
    reconnect long before that).
    """
    if thread is None or loop is None:
        return False, "not started"
    if finished:
        return True, "finished"
    if not thread.is_alive():
        return False, "the classifier thread has died"
    # Waiting for a remote model server (backend triton) is progress: a down server
    # is not a hung daemon (readiness reports it instead).
    remote = loop.labelling.backend.remote_activity()
    age = time.monotonic() - max(loop.heartbeat, remote or 0.0)
    limit = state.config.classifier_stall_s
    if age > limit:
        return False, f"the classifier has made no progress for {age:.0f} s"
    now = time.monotonic()
    for stream, handle in list(streams.handles.items()):
        stats = state.stats.get(stream)
        if stats is None or stats.ended or stats.state != "online":
            continue
        idle = now - stats.last_progress
        # A stream sampled slower than the limit yields frames slower than it, too.
        fps = handle.config.sample.fps
        stream_limit = max(limit, 3.0 / fps) if fps else limit
        if idle > stream_limit and state.queues.depth(stream) < handle.config.queue_size:
            return False, f"stream {stream} has made no progress for {idle:.0f} s"
    return True, "ok"


def readiness(
    state: PipelineState,
    loop: ClassifyLoop | None,
    streams: Streams,
    alive: tuple[bool, str],
) -> tuple[bool, dict[str, object]]:
    """Whether the pipeline is ready: model loaded, streams online, sinks connected.

    ``alive`` is :func:`liveness`'s answer; the reasons it is not ready are listed.
    """
    reasons: list[str] = []
    if loop is None:
        reasons.append("the model is not loaded yet")
    else:
        remote = loop.labelling.backend.remote_status()  # backend triton: the server
        if remote is not None:
            reasons.append(remote)
    ok, why = alive
    if not ok:
        reasons.append(why)
    states: dict[str, str] = {}
    for stream, handle in list(streams.handles.items()):
        stream_state = state.stats[stream].state or "starting"
        states[stream] = stream_state
        if stream_state != "online" and not handle.config.allow_offline:
            reasons.append(f"stream {stream} is {stream_state}")
    sinks: dict[str, bool] = {}
    for worker in state.sinks.workers:
        connected = worker.sink.connected
        sinks[worker.sink.name] = connected
        if not connected:
            problem = worker.sink.problem
            detail = f": {problem}" if problem else ""
            reasons.append(f"sink {worker.sink.name} is not connected{detail}")
    return not reasons, {"reasons": reasons, "streams": states, "sinks": sinks}
