"""labelcast: turn live video into labels.

The public API for embedding (README.md, "Python API", has the whole example)::

    from labelcast import load_config, Pipeline

    # "sinks=[]" (a --set override) drops the config's log sink and its JSON on stdout.
    config = load_config("configs/example.yaml", ["sinks=[]"])
    for event in Pipeline(config).events():
        best = event.labels[0].label if event.labels else "(no label)"  # may be empty
        print(event.stream, event.seq, best)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from labelcast.config import PipelineConfig, load_config, parse_config
from labelcast.errors import ConfigError, LabelcastError, ModelError, SinkError, SourceError
from labelcast.frames import ChangeEvent, Frame, Label, LabelEvent, LabelState

if TYPE_CHECKING:
    from labelcast.pipeline.runner import Pipeline

__all__ = [
    "ChangeEvent",
    "ConfigError",
    "Frame",
    "Label",
    "LabelEvent",
    "LabelState",
    "LabelcastError",
    "ModelError",
    "Pipeline",
    "PipelineConfig",
    "SinkError",
    "SourceError",
    "load_config",
    "parse_config",
]


def __getattr__(name: str) -> Any:
    """Import ``Pipeline`` on first use (PEP 562).

    It brings in torch and the adapters, which reading a config file (``labelcast
    check``, ``labelcast schema``, ``import labelcast.config``) does not need.
    """
    if name == "Pipeline":
        from labelcast.pipeline.runner import Pipeline

        globals()[name] = Pipeline  # later lookups skip this function
        return Pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
