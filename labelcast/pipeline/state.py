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
    """Progress of one stream, updated by the pipeline's threads.

    ``sampled`` counts frames queued for the classifier, ``classified`` those classified
    (one event per subject each) and ``dropped`` those that never will be (a live stream's
    full queue, a failed batch); ``skipped`` counts, per region (None: the whole frame),
    the pictures the change gate found unchanged; ``unchanged`` counts the frames the
    classifier handled without running the model (all their pictures were unchanged):
    they count as classified too.
    ``total_frames`` is how many frames the source will decode when it knows (a file's
    frame count). ``ended`` is set once the source has stopped yielding frames: its
    queued frames may still wait for the classifier.
    """

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
    # The decode indexes of the current run's first and last sampled frame, and how many
    # it sampled: how often the sampler takes a frame, which ``expected`` extrapolates
    # (a reload restarts a source, and its indexes, from 0).
    run_first_index: int | None = None
    run_last_index: int | None = None
    run_sampled: int = 0
    skipped: dict[str | None, int] = field(default_factory=dict)
    unchanged: int = 0
    events: dict[str | None, int] = field(default_factory=dict)  # label events per region

    def opened(self, total_frames: int | None) -> None:
        """Record that the stream's source (re)opened and how many frames it will decode."""
        self.run_first_index = self.run_last_index = None
        self.run_sampled = 0
        self.total_frames = total_frames

    def count_sampled(self, index: int) -> None:
        """Count a frame queued for the classifier; ``index`` is its decode index."""
        if self.run_first_index is None:
            self.run_first_index = index
        self.run_last_index = index
        self.run_sampled += 1
        self.sampled += 1

    @property
    def expected(self) -> int | None:
        """How many of the stream's frames will have been classified when it is done.

        Exact once the source has ended (every frame it queued, less those dropped).
        Before that, for a source that knows its frame count (a file), an estimate: the
        frames queued so far plus those its sampler will take from the frames still to
        decode, at the rate it has taken them so far (exact for ``every``). None when
        nothing tells (a live stream, a file before its second sampled frame).
        """
        # Read once, ``ended`` first: the source and classifier threads update these as we
        # read, and the source counts its last frame before it sets ``ended``.
        ended = self.ended
        classified, sampled, dropped = self.classified, self.sampled, self.dropped
        if ended:
            return max(classified, sampled - dropped)
        total, first, last = self.total_frames, self.run_first_index, self.run_last_index
        taken = self.run_sampled
        if total is None or first is None or last is None or last <= first or taken < 2:
            return None
        # Integer arithmetic: with ``every: n`` the estimate is exact, not off by rounding.
        remaining = max(0, (total - 1 - last) * (taken - 1) // (last - first))
        return max(classified, sampled + remaining - dropped)

    @property
    def finished(self) -> bool:
        """Whether the source has ended and every frame it queued was classified (or dropped)."""
        # The counts before ``ended``, ``sampled`` after it: read while the threads update
        # them, the answer can only be late, never early.
        classified, dropped = self.classified, self.dropped
        return self.ended and classified + dropped >= self.sampled


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
