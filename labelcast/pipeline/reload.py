"""Reload planning: what a new configuration changes, compared with the running one.

The runner carries the plan out (``Pipeline.reconfigure``); this module only compares
configs, so every rule of what restarts what is in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

from labelcast.config import PipelineConfig, SinkConfig, SourceConfig
from labelcast.model.config import ModelConfig
from labelcast.pipeline.fanout import SinkEntry

# Applied without loading the model again: the batcher reads them for each batch.
_BATCH_KEYS = {"batch": {"max_size", "max_wait_ms"}}


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


@dataclass(frozen=True)
class StreamChanges:
    """The streams a reload adds, removes, restarts (their source changed) and keeps."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    restarted: tuple[str, ...]
    kept: tuple[str, ...]


@dataclass(frozen=True)
class SinkChanges:
    """The running sinks a reload keeps and retires, and the sink configs it opens."""

    unchanged: list[SinkEntry]
    retired: list[SinkEntry]
    added: list[SinkConfig]


def model_changed(old: ModelConfig, new: ModelConfig) -> bool:
    """Whether the model must be loaded again.

    Batch size and wait apply at once; anything else (buckets too) loads the model.
    """
    return old.model_dump(exclude=_BATCH_KEYS) != new.model_dump(exclude=_BATCH_KEYS)


def stream_changes(old: PipelineConfig, new: PipelineConfig) -> StreamChanges:
    """Compare the streams of two configs, by stream id, in the new config's order."""
    old_sources = {s.id: s for s in old.sources}
    new_sources = {s.id: s for s in new.sources}
    restarted = [
        i
        for i in new_sources
        if i in old_sources and source_key(old_sources[i]) != source_key(new_sources[i])
    ]
    return StreamChanges(
        added=tuple(i for i in new_sources if i not in old_sources),
        removed=tuple(i for i in old_sources if i not in new_sources),
        restarted=tuple(restarted),
        kept=tuple(i for i in new_sources if i in old_sources and i not in restarted),
    )


def sink_changes(running: list[SinkEntry], configs: list[SinkConfig]) -> SinkChanges:
    """Compare the running sinks with a new config's: an unchanged config keeps its sink.

    The application's callback sink (no config) is always kept.
    """
    unchanged = [e for e in running if e[0] is None or e[0] in configs]
    unchanged_configs = [cfg for cfg, _ in unchanged]
    return SinkChanges(
        unchanged=unchanged,
        retired=[entry for entry in running if entry not in unchanged],
        added=[cfg for cfg in configs if cfg not in unchanged_configs],
    )


def source_key(config: SourceConfig) -> dict[str, object]:
    """Return what restarts a source when it changes (label rules apply without one)."""
    return config.model_dump(exclude={"labels", "smoothing", "allow_offline"})


def describe(result: ReloadResult) -> str:
    """Say in one line what a reload changed."""
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
