"""The MQTT sink: label events to a broker through a durable outbox; availability; HA discovery.

``send`` only appends to the on-disk outbox (a local SQLite transaction), so the
pipeline never waits for the network. A publisher thread (``publisher.py``) connects,
publishes the outbox in order with the configured QoS, and removes each message once
the broker acknowledges it; it reconnects with jittered exponential backoff. See
docs/mqtt.md for the topics, payloads and the exact delivery promise.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from labelcast.errors import SinkError
from labelcast.frames import ChangeEvent, Frame, LabelEvent, LabelState, StreamStatus
from labelcast.sinks.mqtt.config import MqttSinkConfig
from labelcast.sinks.mqtt.connection import probe_broker, tls_context
from labelcast.sinks.mqtt.discovery import (
    SNAPSHOT_KIND,
    discovery_message,
    image_discovery_message,
)
from labelcast.sinks.mqtt.publisher import Publisher, RetainedSession
from labelcast.sinks.outbox import Outbox
from labelcast.sinks.outbox.config import default_outbox_path as outbox_file
from labelcast.sinks.outbox.sender import OutboxSink, check_delivery, close_outbox
from labelcast.sinks.pictures import LatestPictures
from labelcast.util.jpeg import encode_jpeg

log = logging.getLogger(__name__)

# JPEG quality of the pictures ``snapshot: true`` publishes.
SNAPSHOT_QUALITY = 85


def default_outbox_path(config: MqttSinkConfig) -> Path:
    """Where the outbox lives unless ``outbox.path`` says otherwise."""
    key = f"{config.host}_{config.broker_port}_{config.topic_prefix}_{config.client_id or ''}"
    return outbox_file("mqtt", key)


def outbox_path(config: MqttSinkConfig) -> Path:
    """Return the outbox file of ``config``: ``outbox.path``, or the default one."""
    return Path(config.outbox.path) if config.outbox.path else default_outbox_path(config)


class MqttSink(OutboxSink):
    """Publishes label events (QoS 1 by default) through a durable outbox; lossless, never blocks.

    Topics under ``<prefix>/<pipeline>``: ``available`` (retained ``online`` /
    ``stopped`` / Last Will ``offline``), and per stream ``<stream>/status``
    (retained JSON) and ``<stream>/labels`` (one label event per message).

    Construction checks TLS and the login once: a certificate that is not trusted
    or a refused password raises SinkError (fail closed); a broker that is merely
    unreachable is logged, and events wait in the outbox until it answers.

    The pipeline name (part of every topic and of the Last Will) comes from the
    first event or status, unless ``pipeline`` is given.
    """

    lossless = True
    all_frames = False

    def __init__(self, config: MqttSinkConfig, pipeline: str | None = None) -> None:
        self.config = config
        self.name = f"mqtt:{config.where}"
        context = tls_context(config.tls) if config.tls is not None else None
        path = outbox_path(config)
        self.outbox = Outbox(
            path,
            max_bytes=config.outbox.max_bytes,
            max_age_s=config.outbox.max_age_s,
            sync=config.outbox.sync,
            name=f"mqtt sink {config.where}",
        )
        try:
            probe = probe_broker(config, context=context)
            if probe.fatal:
                raise SinkError(probe.message)
            self._session = RetainedSession()
            self._publisher = Publisher(
                config,
                self.outbox,
                name=self.name,
                context=context,
                session=self._session,
                probe=probe,
            )
        except BaseException:
            self.outbox.close()
            raise
        if not probe.ok:
            log.warning("%s; events wait in the outbox %s until it answers", probe.message, path)
        # The subjects (streams, regions) seen so far, on the sink's thread.
        self._subjects: set[str] = set()
        # With snapshot: true, each subject's latest frame (a change's picture comes from it).
        self._pictures = LatestPictures() if config.snapshot else None
        if pipeline is not None:
            self._publisher.know(pipeline)
        self._publisher.start()

    # -- health (any thread) ---------------------------------------------------------------

    @property
    def sender(self) -> Publisher:
        """The publisher thread (``connected``, ``problem``, ``rejected`` are its own)."""
        return self._publisher

    @property
    def published(self) -> int:
        """Messages the broker acknowledged (QoS 0: handed to the socket)."""
        return self._publisher.published

    # -- the sink protocol (the sink's thread) ---------------------------------------------

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Append the event to the outbox (``<subject>/labels``); never waits for the broker.

        A subject is a stream (its whole frame) or a region of one: ``<stream>/<region>``.
        """
        self._learn(event.pipeline, event.subject)
        if self._pictures is not None:
            self._pictures.remember(event, frame)
        self.publish(event.pipeline, event.subject, "labels", event.to_json().encode(), qos=None)

    def send_status(self, status: StreamStatus) -> None:
        """Append the stream's state to the outbox as the retained ``<stream>/status``."""
        self._publisher.know(status.pipeline)
        payload = json.dumps(status.to_dict(), separators=(",", ":")).encode()
        self.publish(status.pipeline, status.stream, "status", payload, qos=1, retain=True)

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Append the change to ``<subject>/events`` and the new state to ``<subject>/state``.

        The change goes with the configured QoS, like label events; the state is
        retained (a new subscriber, or Home Assistant after a restart, reads it at once).
        With ``snapshot: true`` a ``start`` or ``change`` first publishes the picture that
        confirmed it, JPEG, retained on ``<subject>/snapshot`` (an ``end`` keeps the last).
        """
        self._learn(change.pipeline, change.subject)
        if self._pictures is not None and change.type != "end":
            found = self._pictures.confirming(change)
            if found is not None:
                jpeg = encode_jpeg(found[1], SNAPSHOT_QUALITY)
                subject = change.subject
                self.publish(change.pipeline, subject, SNAPSHOT_KIND, jpeg, qos=1, retain=True)
        self.publish(change.pipeline, change.subject, "events", change.to_json().encode(), qos=None)
        self.publish(
            state.pipeline, state.subject, "state", state.to_json().encode(), qos=1, retain=True
        )

    def publish(
        self,
        pipeline: str,
        stream: str,
        kind: str,
        payload: bytes,
        *,
        qos: int | None,
        retain: bool = False,
    ) -> None:
        """Append a message for ``<prefix>/<pipeline>/<stream>/<kind>`` to the outbox.

        The one path of every per-stream topic (``labels``, ``status``, ``state``,
        ``events``, ``snapshot``): durable, in order, acknowledged.
        ``qos=None`` means the configured QoS. Retained messages are coalesced per
        topic while waiting. Raises SinkError if the outbox cannot be written.
        """
        topic = self.topic(pipeline, stream, kind)
        self.outbox.put(topic, payload, qos=self.config.qos if qos is None else qos, retain=retain)

    def topic(self, pipeline: str, stream: str | None, kind: str) -> str:
        """``<prefix>/<pipeline>/<stream>/<kind>``, or ``<prefix>/<pipeline>/<kind>``."""
        return self.config.topic(pipeline, stream, kind)

    def close(self) -> None:
        """Publish what the outbox holds for up to ``drain_timeout_s``, say ``stopped``, leave.

        What the broker has not acknowledged by then stays in the outbox for the next start.
        """
        publisher = self._publisher
        # A sink that never saw an event or status (its pipeline failed to start) has
        # no pipeline name, so it cannot connect: don't wait for it.
        close_outbox(
            self.outbox,
            name=self.name,
            receiver="the broker",
            timeout_s=self.config.drain_timeout_s,
            sending=lambda: publisher.knows_pipeline and publisher.alive,
            stop=publisher.stop,
            summary=lambda: (
                f"{self.outbox.counters.delivered} message(s) acknowledged, "
                f"{self.outbox.counters.dropped} dropped by the outbox bounds, "
                f"{self.rejected} rejected"
            ),
        )

    @staticmethod
    def check(config: MqttSinkConfig) -> list[str]:
        """Tell ``labelcast check`` whether the broker is reachable, trusted and lets us in."""
        try:
            context = tls_context(config.tls) if config.tls is not None else None
        except SinkError as exc:
            return [str(exc)]

        def probe() -> tuple[bool, str]:
            result = probe_broker(config, context=context)
            return result.ok, result.message

        return check_delivery(f"mqtt sink {config.where}", outbox_path(config), probe)

    # -- learning the pipeline and its subjects --------------------------------------------

    def _learn(self, pipeline: str, subject: str) -> None:
        self._publisher.know(pipeline)
        if subject in self._subjects:
            return
        self._subjects.add(subject)
        if self.config.homeassistant.discovery:
            self._session.put(*discovery_message(self.config, pipeline, subject))
            # An image entity with snapshot: true; without, an empty config removes one.
            self._session.put(*image_discovery_message(self.config, pipeline, subject))
