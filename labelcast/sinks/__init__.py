"""Sink adapters, one module (or package) per sink kind, and the registry of kinds.

``SINK_CONFIGS`` lists every kind's config model (each with ``type: Literal[...]``;
config.py builds its discriminated union from it) and ``sink_class(kind)`` returns the
class that makes sinks of a kind. Importing this package loads no paho, httpx, PyAV or Pillow:
each adapter imports those when a sink is made.
"""

from __future__ import annotations

from pydantic import BaseModel

from labelcast.sinks.base import SinkClass
from labelcast.sinks.log import LogSink, LogSinkConfig
from labelcast.sinks.mqtt import MqttSink, MqttSinkConfig
from labelcast.sinks.overlay import OverlaySink, OverlaySinkConfig
from labelcast.sinks.snapshot import SnapshotSink, SnapshotSinkConfig
from labelcast.sinks.webhook import WebhookSink, WebhookSinkConfig

# In the order config.py's union (and so ``labelcast schema``) lists them.
SINK_CONFIGS: tuple[type[BaseModel], ...] = (
    LogSinkConfig,
    MqttSinkConfig,
    WebhookSinkConfig,
    OverlaySinkConfig,
    SnapshotSinkConfig,
)

_CLASSES: dict[str, SinkClass] = {
    "log": LogSink,
    "mqtt": MqttSink,
    "webhook": WebhookSink,
    "overlay": OverlaySink,
    "snapshot": SnapshotSink,
}


def sink_class(kind: str) -> SinkClass:
    """Return the class of sinks of type ``kind`` (a config's ``type``).

    Raises KeyError for a kind no adapter serves (config validation rules that out).
    """
    return _CLASSES[kind]


__all__ = ["SINK_CONFIGS", "SinkClass", "sink_class"]
