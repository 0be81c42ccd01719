"""labelcast: turn live video into labels.

The public API for embedding::

    from labelcast import load_config, Pipeline

    config = load_config("configs/example.yaml")
    for event in Pipeline(config).events():
        print(event.stream, event.seq, event.labels[0].label)
"""

from labelcast.config import PipelineConfig, load_config, parse_config
from labelcast.errors import ConfigError, LabelcastError, ModelError, SinkError, SourceError
from labelcast.pipeline.frames import ChangeEvent, Frame, Label, LabelEvent, LabelState
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
