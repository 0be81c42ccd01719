"""Home Assistant MQTT discovery: one retained sensor config per subject, showing its label.

A subject is a stream's whole frame (``door``) or a region of it (``door/gate``).
"""

from __future__ import annotations

import json
import re

from labelcast.sinks.mqtt.config import MqttSinkConfig


def discovery_message(config: MqttSinkConfig, pipeline: str, subject: str) -> tuple[str, bytes]:
    """Return the topic and payload of Home Assistant's discovery config of one subject's sensor."""
    stream = subject
    ha = config.homeassistant
    node = _slug(f"{config.topic_prefix}_{pipeline}")
    state = config.topic(pipeline, stream, "state")
    # The sensor shows the stream's smoothed label from the retained state topic,
    # so Home Assistant has it again right after its own restart.
    sensor = {
        "name": f"{stream} label",
        "unique_id": _slug(f"{node}_{stream}_label"),
        "state_topic": state,
        "value_template": "{{ value_json.label if value_json.label is not none else 'none' }}",
        "json_attributes_topic": state,  # label, score and since become attributes
        "availability_topic": config.topic(pipeline, None, "available"),
        "availability_template": "{{ 'online' if value == 'online' else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
        "icon": "mdi:label-outline",
        "device": {
            "identifiers": [node],
            "name": f"labelcast {pipeline}",
            "manufacturer": "labelcast",
            "model": "labelcast pipeline",
            "sw_version": _version(),
        },
        "origin": {"name": "labelcast", "sw_version": _version()},
    }
    topic = f"{ha.prefix}/sensor/{node}/{_slug(stream)}/config"
    return topic, json.dumps(sensor, separators=(",", ":")).encode()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("labelcast")
    except PackageNotFoundError:
        return "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
