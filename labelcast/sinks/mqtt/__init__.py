"""The MQTT sink: label events to a broker through a durable outbox (see docs/mqtt.md).

``config`` holds the models (no paho), ``connection`` makes and probes paho clients,
``publisher`` is the thread that empties the outbox into the broker, ``discovery`` the
Home Assistant sensor configs, ``sink`` the Sink itself and ``listen`` the
``labelcast listen`` command. paho loads when a client is made, not on import.
"""

from __future__ import annotations

from labelcast.sinks.mqtt.config import (
    HomeAssistantConfig,
    MqttReconnectConfig,
    MqttSinkConfig,
    TlsConfig,
)
from labelcast.sinks.mqtt.listen import listen, listen_config
from labelcast.sinks.mqtt.sink import MqttSink, default_outbox_path
from labelcast.sinks.outbox.config import OutboxConfig

__all__ = [
    "HomeAssistantConfig",
    "MqttReconnectConfig",
    "MqttSink",
    "MqttSinkConfig",
    "OutboxConfig",
    "TlsConfig",
    "default_outbox_path",
    "listen",
    "listen_config",
]
