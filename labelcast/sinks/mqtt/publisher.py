"""The MQTT sink's publisher thread: connects, publishes the outbox in order, removes acks.

It reconnects with jittered exponential backoff, re-sends the retained session messages
(Home Assistant discovery) on every connection, and on a clean exit says ``stopped`` and
disconnects so the broker drops the Last Will. paho loads with the first publisher.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from labelcast.errors import SinkError
from labelcast.sinks.mqtt.config import MqttSinkConfig
from labelcast.sinks.mqtt.connection import (
    CLOSED_EARLY,
    TICK_S,
    BrokerProbe,
    describe_connect_error,
    describe_refusal,
    make_client,
    start_connect,
)
from labelcast.sinks.mqtt.discovery import SNAPSHOT_KIND
from labelcast.sinks.outbox import Outbox
from labelcast.util.backoff import Backoff

if TYPE_CHECKING:
    import paho.mqtt.client as paho
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

# On a clean exit: how long to wait for the broker to acknowledge ``stopped``.
LEAVE_TIMEOUT_S = 2.0


class RetainedSession:
    """Retained messages re-sent on every connection (Home Assistant discovery configs).

    The sink's thread adds them; the publisher sends those not yet sent on this
    connection. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: dict[str, bytes] = {}
        self._dirty: set[str] = set()

    def put(self, topic: str, payload: bytes) -> None:
        """Add (or replace) the message of ``topic``; it is sent on the next turn."""
        with self._lock:
            self._messages[topic] = payload
            self._dirty.add(topic)

    def resend_all(self) -> None:
        """Mark every message unsent (a new connection: the broker may have lost them)."""
        with self._lock:
            self._dirty = set(self._messages)

    def take_unsent(self) -> list[tuple[str, bytes]]:
        """Return the messages not sent on this connection, by topic, and mark them sent."""
        with self._lock:
            if not self._dirty:
                return []
            messages = [(topic, self._messages[topic]) for topic in sorted(self._dirty)]
            self._dirty.clear()
        return messages


class Publisher:
    """Publishes an outbox to the broker on a thread of its own, once the pipeline is known.

    The pipeline's name is part of every topic and of the Last Will, so the thread
    waits for ``know(pipeline)`` before it connects. ``connected`` and ``problem`` are
    read by readiness from other threads.
    """

    def __init__(
        self,
        config: MqttSinkConfig,
        outbox: Outbox,
        *,
        name: str,
        context: ssl.SSLContext | None,
        session: RetainedSession,
        probe: BrokerProbe,
    ) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.config = config
        self.outbox = outbox
        self.name = name
        self._context = context
        self._session = session
        # Changes of the connection's state are logged once: not the probe's again.
        self._state: str | None = probe.message
        # Why the publisher is not connected (its last failed attempt), for readiness.
        self._problem: str | None = None if probe.ok else probe.message
        # Set once if the thread dies: nothing is published any more.
        self._failure: str | None = None
        self._pipeline: str | None = None
        self._known = threading.Event()
        self._stop = threading.Event()
        # Thread state.
        self._client: paho.Client | None = None
        self._connected = False
        self._connack: ReasonCode | None = None
        self._window = config.max_inflight
        self._inflight: dict[int, int] = {}  # MQTT message id -> outbox id
        self._acked: list[int] = []
        self._leave_mid: int | None = None
        self._leave_acked = False
        self.rejected = 0
        self.published = 0
        self._json_props: Properties | None = None
        self._jpeg_props: Properties | None = None
        if config.protocol == "5":
            self._json_props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            self._json_props.PayloadFormatIndicator = 1
            self._json_props.ContentType = "application/json"
            # A snapshot is binary: no UTF-8 payload format indicator (receivers may check it).
            self._jpeg_props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            self._jpeg_props.ContentType = "image/jpeg"
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-publisher:{config.where}", daemon=True
        )

    def start(self) -> None:
        """Start the thread (it connects once the pipeline is known)."""
        self._thread.start()

    def know(self, pipeline: str) -> None:
        """Tell the thread the pipeline's name (the first call counts); it may connect now."""
        if not self._known.is_set():
            self._pipeline = pipeline
            self._known.set()

    @property
    def knows_pipeline(self) -> bool:
        """Whether the pipeline's name is known (else the publisher cannot connect)."""
        return self._known.is_set()

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    @property
    def connected(self) -> bool:
        """Whether the publisher is connected to the broker (and alive)."""
        return self._connected and self._failure is None

    @property
    def problem(self) -> str | None:
        """Why nothing is published now: a dead publisher, the last failed connection attempt."""
        if self._failure is not None:
            return self._failure
        if self._connected:
            return None
        return self._problem or "not connected to the broker yet"

    def stop(self) -> bool:
        """Say ``stopped``, disconnect and end the thread; False if it did not end in time."""
        self._stop.set()
        self._known.set()
        self._thread.join(self.config.connect_timeout_s + LEAVE_TIMEOUT_S + 5)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._known.wait()
            pipeline = self._pipeline
            if pipeline is None:
                return
            self._publish_loop(pipeline)
        except Exception as exc:
            # Nothing is published from now on: readiness reports it until a restart.
            self._failure = f"the publisher thread died ({type(exc).__name__}: {exc})"
            log.error(
                "%s: %s; nothing is published until labelcast restarts, events stay in the "
                "outbox for the next start",
                self.name,
                self._failure,
                exc_info=True,
            )

    def _publish_loop(self, pipeline: str) -> None:
        available = self.config.topic(pipeline, None, "available")
        client_id = self.config.client_id or f"labelcast-{pipeline}-{uuid.uuid4().hex[:8]}"
        client = make_client(self.config, client_id, context=self._context, will_topic=available)
        client.max_inflight_messages_set(self.config.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        backoff = Backoff(self.config.reconnect)
        while not self._stop.is_set():
            if not self._connected:
                if not self._connect(client, available):
                    self._stop.wait(backoff.next_delay())
                    continue
                backoff.reset()
            client.loop(TICK_S)
            if self._connected and not client.is_connected():
                # A socket paho found closed without calling on_disconnect.
                self._lost(None)
            try:
                self._flush_acks()
                if self._connected:
                    self._publish_session(client)
                    self._publish_outbox(client)
            except SinkError as exc:
                # The outbox file failed (disk full, removed): log it once, retry later.
                self._note(BrokerProbe(False, False, str(exc)))
                self._stop.wait(backoff.next_delay())
        try:
            self._leave(client, available)
        except SinkError as exc:
            log.error("%s", exc)

    def _connect(self, client: paho.Client, available: str) -> bool:
        from paho.mqtt.enums import MQTTErrorCode

        self._connack = None
        try:
            start_connect(client, self.config)
        except (OSError, ValueError) as exc:
            self._note(describe_connect_error(exc, self.config))
            return False
        deadline = time.monotonic() + self.config.connect_timeout_s
        silence = f"no CONNACK within {self.config.connect_timeout_s:g} s"
        while self._connack is None and time.monotonic() < deadline and not self._stop.is_set():
            if client.loop(TICK_S) != MQTTErrorCode.MQTT_ERR_SUCCESS and self._connack is None:
                silence = CLOSED_EARLY
                break
        reason = self._connack
        if reason is None or reason.is_failure:
            client.disconnect()
            self._note(
                describe_refusal(reason, self.config)
                if reason is not None
                else BrokerProbe(False, False, f"mqtt sink {self.config.where}: {silence}")
            )
            return False
        self._connected = True
        client.publish(available, b"online", qos=1, retain=True)
        self._session.resend_all()
        self._note(BrokerProbe(True, False, f"{self.name}: connected"))
        return True

    def _note(self, probe: BrokerProbe) -> None:
        """Log each change of the connection's state once (repeats go to debug)."""
        if probe.message == self._state:
            log.debug("%s", probe.message)
            return
        self._state = probe.message
        self._problem = None if probe.ok else probe.message
        if probe.ok:
            log.info(
                "%s (MQTT %s); %d message(s) wait in the outbox",
                probe.message,
                self.config.protocol,
                self.outbox.pending,
            )
        elif probe.fatal:
            log.error("%s; retrying with backoff, events wait in the outbox", probe.message)
        else:
            log.warning(
                "%s; retrying with backoff up to %g s, events wait in the outbox",
                probe.message,
                self.config.reconnect.max_s,
            )

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._connack = reason
        receive_maximum = getattr(props, "ReceiveMaximum", None)
        self._window = min(self.config.max_inflight, receive_maximum or self.config.max_inflight)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._lost(reason)

    def _lost(self, reason: ReasonCode | None) -> None:
        if not self._connected:
            return
        self._connected = False
        if not self._stop.is_set():
            # 0x80 is what paho reports for a socket that simply closed.
            plain = reason is None or reason.value in (0, 0x80)
            detail = "" if plain else f" ({reason})"
            self._note(BrokerProbe(False, False, f"{self.name}: connection lost{detail}"))

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        if mid == self._leave_mid:
            self._leave_acked = True
            return
        message_id = self._inflight.pop(mid, None)
        if message_id is None:
            return
        if reason.is_failure:
            # The broker took the message and refused it (an ACL, a quota): retrying
            # the same message can't succeed, so it leaves the outbox, counted.
            self.rejected += 1
            log.error("%s: the broker rejected a message (%s)", self.name, reason)
        else:
            self.published += 1
        self._acked.append(message_id)

    def _flush_acks(self) -> None:
        if self._acked:
            acked, self._acked = self._acked, []
            self.outbox.remove(acked)

    def _publish_session(self, client: paho.Client) -> None:
        for topic, payload in self._session.take_unsent():
            client.publish(topic, payload, qos=1, retain=True, properties=self._json_props)

    def _publish_outbox(self, client: paho.Client) -> None:
        from paho.mqtt.enums import MQTTErrorCode

        free = self._window - len(self._inflight)
        for message in self.outbox.take(free):
            info = client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=self._properties(message.topic),
            )
            if message.qos == 0:
                # QoS 0 is never acknowledged: it leaves the outbox once handed to the socket.
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self.published += 1
                    self._acked.append(message.id)
            else:
                # Kept even if the connection just dropped: paho re-sends it on reconnect.
                self._inflight[info.mid] = message.id

    def _properties(self, topic: str) -> Properties | None:
        """Return the MQTT 5 properties of an outbox message: JSON, or a snapshot's JPEG."""
        if topic.rpartition("/")[2] == SNAPSHOT_KIND:
            return self._jpeg_props
        return self._json_props

    def _leave(self, client: paho.Client, available: str) -> None:
        """Say ``stopped`` and disconnect cleanly, so the broker discards the Last Will."""
        if self._connected:
            # A reload's new sink that takes the outbox over says online itself: this one
            # leaves without a word (the clean disconnect still drops the Last Will).
            if not self.outbox.handing_over:
                self._leave_mid = client.publish(available, b"stopped", qos=1, retain=True).mid
                deadline = time.monotonic() + LEAVE_TIMEOUT_S
                while not self._leave_acked and self._connected and time.monotonic() < deadline:
                    client.loop(TICK_S)
            self._connected = False
            client.disconnect()
            client.loop(TICK_S)
        self._flush_acks()
