"""Home Assistant MQTT discovery: retained entity configs, per subject, under a device.

Each subject gets a sensor showing its label and, with ``snapshot: true``, an image
entity showing the picture of its latest change.

A subject is a stream's whole frame (``door``) or a region of it (``door/gate``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from labelcast.sinks.mqtt.config import MqttSinkConfig

# The last topic level of a subject's snapshot picture (JPEG bytes, retained).
SNAPSHOT_KIND = "snapshot"


def discovery_message(config: MqttSinkConfig, pipeline: str, subject: str) -> tuple[str, bytes]:
    """Return the topic and payload of Home Assistant's discovery config of one subject's sensor."""
    stream = subject
    node = _node(config, pipeline)
    state = config.topic(pipeline, stream, "state")
    # The sensor shows the stream's smoothed label from the retained state topic,
    # so Home Assistant has it again right after its own restart.
    sensor = {
        "name": f"{stream} label",
        "unique_id": _slug(f"{node}_{stream}_label"),
        "state_topic": state,
        "value_template": "{{ value_json.label if value_json.label is not none else 'none' }}",
        "json_attributes_topic": state,  # label, score and since become attributes
        **_entity_common(config, pipeline),
        "icon": "mdi:label-outline",
        **_device(node, pipeline),
    }
    topic = f"{config.homeassistant.prefix}/sensor/{node}/{_slug(stream)}/config"
    return topic, json.dumps(sensor, separators=(",", ":")).encode()


def image_discovery_message(
    config: MqttSinkConfig, pipeline: str, subject: str
) -> tuple[str, bytes]:
    """Return the topic and payload of the discovery config of one subject's image entity.

    With ``snapshot: false`` the payload is empty: published retained, it removes an
    image entity an earlier run with ``snapshot: true`` announced (Home Assistant deletes
    an entity whose config becomes empty; the broker forgets the retained config).
    """
    node = _node(config, pipeline)
    topic = f"{config.homeassistant.prefix}/image/{node}/{_slug(subject)}/config"
    if not config.snapshot:
        return topic, b""
    image = {
        "name": f"{subject} snapshot",
        "unique_id": _slug(f"{node}_{subject}_snapshot"),
        "image_topic": config.topic(pipeline, subject, SNAPSHOT_KIND),
        "content_type": "image/jpeg",
        **_entity_common(config, pipeline),
        **_device(node, pipeline),
    }
    return topic, json.dumps(image, separators=(",", ":")).encode()


def _node(config: MqttSinkConfig, pipeline: str) -> str:
    return _slug(f"{config.topic_prefix}_{pipeline}")


def _entity_common(config: MqttSinkConfig, pipeline: str) -> dict[str, Any]:
    """Availability of every entity: unavailable unless the pipeline says ``online``."""
    return {
        "availability_topic": config.topic(pipeline, None, "available"),
        "availability_template": "{{ 'online' if value == 'online' else 'offline' }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def _device(node: str, pipeline: str) -> dict[str, Any]:
    """Return the device every entity of a pipeline belongs to, and the config's origin."""
    return {
        "device": {
            "identifiers": [node],
            "name": f"labelcast {pipeline}",
            "manufacturer": "labelcast",
            "model": "labelcast pipeline",
            "sw_version": _version(),
        },
        "origin": {"name": "labelcast", "sw_version": _version()},
    }


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("labelcast")
    except PackageNotFoundError:
        return "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
