"""Prometheus metrics of a pipeline, in a registry of its own.

Histograms are observed on the hot path (an observation costs about a microsecond);
counters and gauges are read from the pipeline's own statistics when scraped, so
nothing else is instrumented.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol, cast

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from labelcast.config import PipelineConfig
from labelcast.pipeline.fanout import SinkWorker
from labelcast.pipeline.state import StreamStats
from labelcast.sinks.base import AllFramesSink

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Observed(Protocol):
    """What the metrics read of a pipeline at each scrape (``Pipeline`` is one)."""

    @property
    def config(self) -> PipelineConfig:
        """The running config (its ``name`` labels every metric)."""
        ...

    @property
    def stats(self) -> Mapping[str, StreamStats]:
        """Each stream's counters."""
        ...

    @property
    def sinks(self) -> list[SinkWorker]:
        """The running sinks, each with its counters."""
        ...

    def queue_depth(self, stream: str) -> int:
        """Return how many sampled frames of ``stream`` wait for the classifier."""
        ...

    def liveness(self) -> tuple[bool, str]:
        """Whether the pipeline makes progress, and why not."""
        ...

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Whether the pipeline is ready, and why not."""
        ...


class PipelineMetrics:
    """The histograms a pipeline observes, and the registry they are exported from."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.batch_size = Histogram(
            "labelcast_batch_size",
            "Frames per classifier batch.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "labelcast_model_seconds",
            "Time to classify one batch (preprocess, forward, softmax); on CUDA, from "
            "submission to result, including waiting behind the batch before it.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.latency_seconds = Histogram(
            "labelcast_latency_seconds",
            "From a frame's capture to its event's hand-off to sinks.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def watch(self, pipeline: Observed) -> None:
        """Export the pipeline's counters and gauges, read at each scrape."""
        self.registry.register(_PipelineCollector(pipeline))

    def exposition(self) -> bytes:
        """Return the metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class _PipelineCollector(Collector):
    def __init__(self, pipeline: Observed) -> None:
        self._pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        pipeline = self._pipeline
        name = pipeline.config.name
        stream_counters = {
            "frames_decoded": ("Frames decoded.", "decoded"),
            "frames_sampled": ("Frames sampled for classification.", "sampled"),
            "frames_classified": ("Frames classified (one event per subject each).", "classified"),
            "frames_dropped": (
                "Sampled frames dropped because the classifier was behind.",
                "dropped",
            ),
            "source_reconnects": ("Times a live source started reconnecting.", "reconnects"),
        }
        families = {
            key: CounterMetricFamily(f"labelcast_{key}", text, labels=["pipeline", "stream"])
            for key, (text, _) in stream_counters.items()
        }
        depth = GaugeMetricFamily(
            "labelcast_queue_depth",
            "Sampled frames waiting to be batched.",
            labels=["pipeline", "stream"],
        )
        online = GaugeMetricFamily(
            "labelcast_stream_online",
            "1 while the stream is online.",
            labels=["pipeline", "stream"],
        )
        # Per subject: region "" is the whole frame.
        skipped = CounterMetricFamily(
            "labelcast_frames_skipped",
            "Pictures the change gate found unchanged (not classified), per subject.",
            labels=["pipeline", "stream", "region"],
        )
        events = CounterMetricFamily(
            "labelcast_label_events",
            "Label events published (pictures classified), per subject.",
            labels=["pipeline", "stream", "region"],
        )
        for stream, stats in list(pipeline.stats.items()):
            for key, (_, attribute) in stream_counters.items():
                families[key].add_metric([name, stream], getattr(stats, attribute))
            depth.add_metric([name, stream], pipeline.queue_depth(stream))
            online.add_metric([name, stream], 1.0 if stats.state == "online" else 0.0)
            for region, count in list(stats.skipped.items()):
                skipped.add_metric([name, stream, region or ""], count)
            for region, count in list(stats.events.items()):
                events.add_metric([name, stream, region or ""], count)
        yield from families.values()
        yield depth
        yield online
        yield skipped
        yield events

        sink_events = CounterMetricFamily(
            "labelcast_sink_events",
            "Events handed to each sink, by outcome.",
            labels=["pipeline", "sink", "outcome"],
        )
        outbox = GaugeMetricFamily(
            "labelcast_sink_outbox_depth",
            "Events waiting in a sink's durable outbox.",
            labels=["pipeline", "sink"],
        )
        connected = GaugeMetricFamily(
            "labelcast_sink_connected",
            "1 while the sink can deliver (connected, its publisher alive); 1 for local sinks.",
            labels=["pipeline", "sink"],
        )
        frames_dropped = CounterMetricFamily(
            "labelcast_sink_frames_dropped",
            "Unsampled frames an all-frames sink dropped because it was behind.",
            labels=["pipeline", "sink"],
        )
        for worker in pipeline.sinks:
            sink = worker.sink.name
            counters = worker.counters
            for outcome in ("sent", "failed", "dropped"):
                sink_events.add_metric([name, sink, outcome], getattr(counters, outcome))
            backlog = worker.sink.backlog
            if backlog is not None:
                outbox.add_metric([name, sink], float(backlog))
            connected.add_metric([name, sink], 1.0 if worker.sink.connected else 0.0)
            if worker.wants_all_frames:
                in_sink = cast(AllFramesSink, worker.sink).unsampled_dropped
                frames_dropped.add_metric([name, sink], counters.frames_dropped + in_sink)
        yield sink_events
        yield outbox
        yield connected
        yield frames_dropped

        alive, _ = pipeline.liveness()
        ready, _ = pipeline.readiness()
        yield _gauge(
            "labelcast_ready", "1 while the pipeline is ready (/readyz is 200).", name, ready
        )
        yield _gauge("labelcast_alive", "1 while the classifier makes progress.", name, alive)
        yield from _cuda_memory(name)


def _gauge(metric: str, text: str, pipeline: str, value: bool | float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(metric, text, labels=["pipeline"])
    family.add_metric([pipeline], float(value))
    return family


def _cuda_memory(pipeline: str) -> Iterator[Metric]:
    import torch

    if not torch.cuda.is_available():
        return
    allocated = GaugeMetricFamily(
        "labelcast_cuda_memory_allocated_bytes",
        "CUDA memory held by tensors.",
        labels=["pipeline", "device"],
    )
    reserved = GaugeMetricFamily(
        "labelcast_cuda_memory_reserved_bytes",
        "CUDA memory reserved by torch's allocator.",
        labels=["pipeline", "device"],
    )
    for index in range(torch.cuda.device_count()):
        allocated.add_metric([pipeline, str(index)], float(torch.cuda.memory_allocated(index)))
        reserved.add_metric([pipeline, str(index)], float(torch.cuda.memory_reserved(index)))
    yield allocated
    yield reserved
