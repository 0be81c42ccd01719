"""labelcast: turn live video into labels.

The public API for embedding::

    from labelcast import load_config, Pipeline

    config = load_config("configs/example.yaml")
    for event in Pipeline(config).events():
        print(event.stream, event.seq, event.labels[0].label)
"""

from labelcast.config import PipelineConfig, load_config, parse_config
from labelcast.errors import ConfigError, LabelcastError, ModelError, SinkError, SourceError
from labelcast.pipeline.frames import Frame, Label, LabelEvent
from labelcast.pipeline.runner import Pipeline

__all__ = [
    "ConfigError",
    "Frame",
    "Label",
    "LabelEvent",
    "LabelcastError",
    "ModelError",
    "Pipeline",
    "PipelineConfig",
    "SinkError",
    "SourceError",
    "load_config",
    "parse_config",
]
