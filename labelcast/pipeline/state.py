"""What a running pipeline's threads share: its config, counters, queues, sinks and stop signals."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from labelcast.config import PipelineConfig
from labelcast.frames import StreamState
from labelcast.pipeline.batcher import StreamQueues
from labelcast.pipeline.fanout import SinkSet


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


@dataclass
class PipelineState:
    """The state the runner's parts share: the runner owns it, the threads read and update it.

    ``config`` is replaced by a reload (everyone reads the current one from here); the
    rest is updated in place, so a reference to ``stats`` or ``sinks`` stays valid.
    """

    config: PipelineConfig
    run_id: str
    stats: dict[str, StreamStats]
    queues: StreamQueues = field(default_factory=StreamQueues)
    sinks: SinkSet = field(default_factory=SinkSet)
    # Graceful: sources stop, queued frames are classified, sinks flush.
    stop: threading.Event = field(default_factory=threading.Event)
    # Hard: nobody waits for anything any more.
    abort: threading.Event = field(default_factory=threading.Event)
