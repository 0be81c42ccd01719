"""The MQTT sink: label events to a broker through a durable outbox; availability; HA discovery.

``send`` only appends to the on-disk outbox (a local SQLite transaction), so the
pipeline never waits for the network. A publisher thread connects, publishes the
outbox in order with the configured QoS, and removes each message once the broker
acknowledges it; it reconnects with jittered exponential backoff. See docs/mqtt.md
for the topics, payloads and the exact delivery promise.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from labelcast.errors import SinkError
from labelcast.pipeline.frames import ChangeEvent, Frame, LabelEvent, LabelState, StreamStatus
from labelcast.sinks.outbox import Outbox

log = logging.getLogger(__name__)

# How long one turn of the publisher's network loop waits for socket activity; it
# bounds the delay between an event reaching the outbox and its PUBLISH.
_TICK_S = 0.02
# On a clean exit: how long to wait for the broker to acknowledge ``stopped``.
_LEAVE_TIMEOUT_S = 2.0
# CONNACK reason codes that retrying cannot fix: the configuration must change.
# (Mosquitto answers a wrong password with 0x87 "Not authorized".)
_REFUSALS_TO_FIX = {
    0x84: "does not support this MQTT version; try protocol: '3.1.1'",
    0x85: "rejected the client id; set another client_id",
    0x86: "refused the login{user}; check username and password",
    0x87: "refused the login{user}; check username and password (and the broker's ACL)",
    0x8A: "has banned this client{user}",
    0x8C: "rejected the authentication method{user}",
}
# A broker that closes the connection before its CONNACK: often a TLS port without tls.
_CLOSED_EARLY = "the broker closed the connection before its CONNACK (a TLS port? then set tls)"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


def _parse_size(value: object) -> object:
    """Accept byte counts as integers or as strings like ``64MiB``, ``500kB``, ``1GB``."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError("expected a size in bytes, like 67108864, '64MiB' or '500kB'")
    unit = (match.group(2) or "").lower()
    factor = _SIZE_UNITS[unit[:1]] if "i" not in unit else 1024 ** "kmg".index(unit[0]) * 1024
    return int(float(match.group(1)) * factor)


class TlsConfig(BaseModel):
    """TLS to the broker; once set there is no fallback to plain text."""

    model_config = ConfigDict(extra="forbid")

    ca: Annotated[
        str | None,
        Field(
            description="PEM file of the CA(s) the broker's certificate must chain to "
            "(default: the system's trust store)."
        ),
    ] = None
    cert: Annotated[
        str | None, Field(description="PEM client certificate, for brokers that require one.")
    ] = None
    key: Annotated[
        str | None, Field(description="PEM private key of the client certificate (unencrypted).")
    ] = None
    insecure: Annotated[
        bool,
        Field(
            description="Skip the check that the broker's certificate names `host` (the chain is "
            "still verified). For testing only."
        ),
    ] = False

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls: set both cert and key, or neither")
        return self


class ReconnectConfig(BaseModel):
    """Jittered exponential backoff between connection attempts."""

    model_config = ConfigDict(extra="forbid")

    min_s: Annotated[
        float, Field(gt=0, description="Delay before the first retry, in seconds.")
    ] = 0.5
    max_s: Annotated[
        float, Field(gt=0, description="Longest delay between retries, in seconds.")
    ] = 30.0

    @model_validator(mode="after")
    def _ordered(self) -> ReconnectConfig:
        if self.max_s < self.min_s:
            raise ValueError("reconnect: max_s must be at least min_s")
        return self


class OutboxConfig(BaseModel):
    """The on-disk outbox that holds events until the broker acknowledges them."""

    model_config = ConfigDict(extra="forbid")

    path: Annotated[
        str | None,
        Field(
            description="SQLite file of the outbox (default: "
            "$XDG_STATE_HOME/labelcast/mqtt-outbox-<host>_<port>_<prefix>_<client_id>.sqlite). "
            "Keep it across restarts; give each running pipeline its own."
        ),
    ] = None
    max_bytes: Annotated[
        int,
        Field(
            ge=4096,
            description="Bound on the messages waiting (topics + payloads), in bytes or as "
            "'64MiB'; when exceeded the oldest label events are dropped and counted.",
        ),
    ] = 64 * 1024 * 1024
    max_age_s: Annotated[
        float,
        Field(
            ge=0,
            description="Label events older than this many seconds are dropped and counted "
            "instead of published (0: no age bound).",
        ),
    ] = 7 * 24 * 3600.0
    sync: Annotated[
        Literal["normal", "full"],
        Field(
            description="SQLite synchronous mode: normal survives a crash of labelcast; "
            "full also survives power loss, at one fsync per event."
        ),
    ] = "normal"

    _size = field_validator("max_bytes", mode="before")(_parse_size)


class HomeAssistantConfig(BaseModel):
    """Home Assistant MQTT discovery: one sensor per stream showing its top label."""

    model_config = ConfigDict(extra="forbid")

    discovery: Annotated[
        bool, Field(description="Publish retained discovery config messages for each stream.")
    ] = False
    prefix: Annotated[
        str,
        Field(
            pattern=r"^[^#+]+$",
            description="Home Assistant's discovery prefix (its MQTT integration setting).",
        ),
    ] = "homeassistant"


class MqttSinkConfig(BaseModel):
    """Publish label events and stream states to an MQTT broker, losing none (see docs/mqtt.md)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["mqtt"] = "mqtt"
    host: Annotated[str, Field(min_length=1, description="Broker host name or address.")] = (
        "localhost"
    )
    port: Annotated[
        int | None,
        Field(ge=1, le=65535, description="Broker port (default: 1883, or 8883 with tls)."),
    ] = None
    client_id: Annotated[
        str | None,
        Field(
            min_length=1,
            description="MQTT client id (default: labelcast-<pipeline>-<random>); two clients "
            "with one id take turns being disconnected.",
        ),
    ] = None
    keepalive: Annotated[
        int,
        Field(
            ge=5,
            le=65535,
            description="Seconds between keep-alive pings; a silent broker is given up after "
            "1.5 times this.",
        ),
    ] = 30
    protocol: Annotated[
        Literal["5", "3.1.1"], Field(description="MQTT protocol version: '5' or '3.1.1'.")
    ] = "5"
    username: Annotated[
        str | None, Field(min_length=1, description="User name to log in with.")
    ] = None
    password: Annotated[
        SecretStr | None,
        Field(description="Password to log in with; write it as ${ENV_VAR}, never inline."),
    ] = None
    tls: Annotated[
        TlsConfig | None,
        Field(description="Connect with TLS (`tls: {}` uses the system's trust store)."),
    ] = None
    topic_prefix: Annotated[
        str,
        Field(description="First level(s) of every topic: <prefix>/<pipeline>/<stream>/labels."),
    ] = "labelcast"
    qos: Annotated[
        Literal[0, 1, 2],
        Field(
            description="QoS of label events; 1 or 2 keep each event in the outbox until the "
            "broker acknowledges it, 0 publishes at most once."
        ),
    ] = 1
    max_inflight: Annotated[
        int,
        Field(
            ge=1,
            le=65535,
            description="Messages published but not yet acknowledged, at most (the broker's "
            "receive maximum lowers it).",
        ),
    ] = 20
    connect_timeout_s: Annotated[
        float,
        Field(gt=0, description="Seconds to wait for TCP, TLS and the broker's CONNACK."),
    ] = 5.0
    drain_timeout_s: Annotated[
        float,
        Field(
            ge=0,
            description="On a clean exit, seconds to keep publishing the outbox before leaving "
            "the rest for the next start.",
        ),
    ] = 10.0
    reconnect: Annotated[
        ReconnectConfig, Field(description="Backoff between connection attempts.")
    ] = ReconnectConfig()
    outbox: Annotated[
        OutboxConfig, Field(description="The durable outbox (bounded by size and age).")
    ] = OutboxConfig()
    homeassistant: Annotated[
        HomeAssistantConfig, Field(description="Home Assistant MQTT discovery (opt-in).")
    ] = HomeAssistantConfig()

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        # YAML reads `protocol: 5` as a number.
        return str(value) if isinstance(value, int | float) else value

    @field_validator("topic_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError("must be one or more non-empty topic levels, like 'labelcast'")
        if any(char in value for char in "#+\0") or value.startswith("$"):
            raise ValueError("must not contain the wildcards # or +, or start with $")
        return value

    @model_validator(mode="after")
    def _password_needs_user(self) -> MqttSinkConfig:
        if self.password is not None and self.username is None:
            raise ValueError("password: set username too")
        return self

    @property
    def broker_port(self) -> int:
        """The port to connect to: ``port``, or the default for plain or TLS connections."""
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883

    @property
    def where(self) -> str:
        """``host:port`` of the broker, for messages."""
        return f"{self.host}:{self.broker_port}"


# -- connecting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerProbe:
    """The outcome of one connection attempt: ``fatal`` problems need a config change."""

    ok: bool
    fatal: bool
    message: str


def tls_context(tls: TlsConfig) -> ssl.SSLContext:
    """Build the SSL context of a TLS config; SinkError names the file that can't be used."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise SinkError(f"mqtt sink: tls.ca: cannot use {tls.ca} as a CA file ({exc})") from exc
    if tls.cert is not None:
        try:
            context.load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(
                f"mqtt sink: tls.cert/tls.key: cannot use {tls.cert} and {tls.key} ({exc})"
            ) from exc
    return context


def make_client(
    config: MqttSinkConfig,
    client_id: str,
    *,
    context: ssl.SSLContext | None = None,
    will_topic: str | None = None,
) -> paho.Client:
    """Build a paho client with the config's protocol, login, TLS and (optionally) Last Will."""
    v5 = config.protocol == "5"
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=None if v5 else True,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        # The publisher reconnects itself, with jittered backoff.
        reconnect_on_failure=False,
    )
    client.connect_timeout = config.connect_timeout_s
    if config.username is not None:
        password = config.password.get_secret_value() if config.password else None
        client.username_pw_set(config.username, password)
    if config.tls is not None:
        client.tls_set_context(context or tls_context(config.tls))
        if config.tls.insecure:
            client.tls_insecure_set(True)
    if will_topic is not None:
        client.will_set(will_topic, b"offline", qos=1, retain=True)
    return client


def start_connect(client: paho.Client, config: MqttSinkConfig) -> None:
    """Open the socket (TCP and TLS handshake) and send CONNECT; raises OSError/SSLError."""
    if config.protocol == "5":
        client.connect(config.host, config.broker_port, config.keepalive, clean_start=True)
    else:
        client.connect(config.host, config.broker_port, config.keepalive)


def describe_connect_error(exc: BaseException, config: MqttSinkConfig) -> BrokerProbe:
    """Turn an exception of ``start_connect`` into one clear message (never with the password)."""
    where = f"mqtt sink {config.where}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or str(exc)
        if "mismatch" in detail.lower():
            return BrokerProbe(
                False,
                True,
                f"{where}: the broker's TLS certificate is not valid for host "
                f"{config.host!r} ({detail}); connect by a name the certificate lists",
            )
        return BrokerProbe(
            False,
            True,
            f"{where}: the broker's TLS certificate is not trusted ({detail}); "
            "check tls.ca (no fallback to plain text)",
        )
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return BrokerProbe(
            False, False, f"{where}: the broker closed the connection during the TLS handshake"
        )
    if isinstance(exc, ssl.SSLError):
        return BrokerProbe(
            False,
            True,
            f"{where}: TLS handshake failed ({exc.reason or exc}); is this a TLS port, and "
            "does the broker want a client certificate (tls.cert, tls.key)?",
        )
    if isinstance(exc, ConnectionRefusedError):
        return BrokerProbe(False, False, f"{where}: connection refused (is the broker running?)")
    if isinstance(exc, TimeoutError):
        return BrokerProbe(
            False, False, f"{where}: no answer within {config.connect_timeout_s:g} s"
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return BrokerProbe(False, False, f"{where}: cannot connect ({reason})")
    return BrokerProbe(False, False, f"{where}: cannot connect ({type(exc).__name__}: {exc})")


def describe_refusal(reason: ReasonCode, config: MqttSinkConfig) -> BrokerProbe:
    """Turn a failed CONNACK into one clear message; login refusals are fatal."""
    where = f"mqtt sink {config.where}"
    user = f" of user {config.username!r}" if config.username else " (no username set)"
    advice = _REFUSALS_TO_FIX.get(reason.value)
    if advice is not None:
        return BrokerProbe(
            False, True, f"{where}: the broker {advice.format(user=user)} (CONNACK: {reason})"
        )
    return BrokerProbe(False, False, f"{where}: the broker refused the connection ({reason})")


def probe_broker(config: MqttSinkConfig, *, context: ssl.SSLContext | None = None) -> BrokerProbe:
    """Connect once (TCP, TLS, login) without a Last Will, then disconnect cleanly."""
    # Never the daemon's own client id: the broker would disconnect a running labelcast.
    # A configured id keeps its prefix, which broker ACLs often match on.
    client_id = f"{config.client_id or 'labelcast'}-check-{uuid.uuid4().hex[:6]}"
    client = make_client(config, client_id, context=context)
    answers: list[ReasonCode] = []

    def on_connect(
        client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        answers.append(reason)

    client.on_connect = on_connect
    try:
        start_connect(client, config)
    except (OSError, ValueError) as exc:
        return describe_connect_error(exc, config)
    deadline = time.monotonic() + config.connect_timeout_s
    try:
        while not answers and time.monotonic() < deadline:
            if client.loop(_TICK_S * 5) != MQTTErrorCode.MQTT_ERR_SUCCESS and not answers:
                return BrokerProbe(False, False, f"mqtt sink {config.where}: {_CLOSED_EARLY}")
        if not answers:
            return BrokerProbe(
                False,
                False,
                f"mqtt sink {config.where}: no CONNACK within {config.connect_timeout_s:g} s",
            )
        if answers[0].is_failure:
            return describe_refusal(answers[0], config)
        return BrokerProbe(
            True, False, f"mqtt sink {config.where}: broker reachable, login accepted"
        )
    finally:
        client.disconnect()
        client.loop(_TICK_S)


class Backoff:
    """Jittered exponential backoff with a cap.

    The step starts at ``min_s`` and doubles up to ``max_s``; each delay is drawn
    between half the step and the step (never below ``min_s``), so clients that lost
    the broker together don't all come back at the same instant.
    """

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        """Return the delay before the next attempt."""
        step = min(self.max_s, self.min_s * 2 ** min(self._attempt, 32))
        self._attempt += 1
        return max(self.min_s, self._rng.uniform(step / 2, step))

    def reset(self) -> None:
        """Start again from ``min_s`` (after a successful connection)."""
        self._attempt = 0


def default_outbox_path(config: MqttSinkConfig) -> Path:
    """Where the outbox lives unless ``outbox.path`` says otherwise."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    key = f"{config.host}_{config.broker_port}_{config.topic_prefix}_{config.client_id or ''}"
    key = re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-_")
    return Path(state) / "labelcast" / f"mqtt-outbox-{key}.sqlite"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("labelcast")
    except PackageNotFoundError:
        return "unknown"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


# -- the sink ------------------------------------------------------------------------------


class MqttSink:
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

    def __init__(self, config: MqttSinkConfig, pipeline: str | None = None) -> None:
        self.config = config
        self.name = f"mqtt:{config.where}"
        self._context = tls_context(config.tls) if config.tls is not None else None
        path = Path(config.outbox.path) if config.outbox.path else default_outbox_path(config)
        self.outbox = Outbox(
            path,
            max_bytes=config.outbox.max_bytes,
            max_age_s=config.outbox.max_age_s,
            sync=config.outbox.sync,
            name=f"mqtt sink {config.where}",
        )
        try:
            probe = probe_broker(config, context=self._context)
        except BaseException:
            self.outbox.close()
            raise
        if probe.fatal:
            self.outbox.close()
            raise SinkError(probe.message)
        if not probe.ok:
            log.warning("%s; events wait in the outbox %s until it answers", probe.message, path)
        # The publisher logs changes of the connection's state only: not this one again.
        self._state: str | None = probe.message
        # Why the publisher is not connected (its last failed attempt), for readiness.
        self._problem: str | None = None if probe.ok else probe.message
        # Set once if the publisher thread dies: nothing is published any more.
        self._failure: str | None = None
        # Shared with the sink's thread, under _lock.
        self._lock = threading.Lock()
        self._pipeline = pipeline
        self._streams: set[str] = set()
        self._session: dict[str, bytes] = {}  # retained messages re-sent on every connect
        self._session_dirty: set[str] = set()
        self._known = threading.Event()
        if pipeline is not None:
            self._known.set()
        self._stop = threading.Event()
        # Publisher-thread state.
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
        if config.protocol == "5":
            self._json_props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            self._json_props.PayloadFormatIndicator = 1
            self._json_props.ContentType = "application/json"
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-publisher:{config.where}", daemon=True
        )
        self._thread.start()

    # -- health (any thread) ---------------------------------------------------------------

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

    @property
    def backlog(self) -> int:
        """Messages in the outbox that the broker has not acknowledged."""
        return self.outbox.pending

    # -- the sink protocol (the sink's thread) ---------------------------------------------

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Append the event to the outbox (``<stream>/labels``); never waits for the broker."""
        self._learn(event.pipeline, event.stream)
        self.publish(event.pipeline, event.stream, "labels", event.to_json().encode(), qos=None)

    def send_status(self, status: StreamStatus) -> None:
        """Append the stream's state to the outbox as the retained ``<stream>/status``."""
        self._learn(status.pipeline, status.stream)
        payload = json.dumps(status.to_dict(), separators=(",", ":")).encode()
        self.publish(status.pipeline, status.stream, "status", payload, qos=1, retain=True)

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Append the change to ``<stream>/events`` and the new state to ``<stream>/state``.

        The change goes with the configured QoS, like label events; the state is
        retained (a new subscriber, or Home Assistant after a restart, reads it at once).
        """
        self._learn(change.pipeline, change.stream)
        self.publish(change.pipeline, change.stream, "events", change.to_json().encode(), qos=None)
        self.publish(
            state.pipeline, state.stream, "state", state.to_json().encode(), qos=1, retain=True
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
        ``events``): durable, in order, acknowledged.
        ``qos=None`` means the configured QoS. Retained messages are coalesced per
        topic while waiting. Raises SinkError if the outbox cannot be written.
        """
        topic = self.topic(pipeline, stream, kind)
        self.outbox.put(topic, payload, qos=self.config.qos if qos is None else qos, retain=retain)

    def topic(self, pipeline: str, stream: str | None, kind: str) -> str:
        """``<prefix>/<pipeline>/<stream>/<kind>``, or ``<prefix>/<pipeline>/<kind>``."""
        parts = [self.config.topic_prefix, pipeline, *([stream] if stream else []), kind]
        return "/".join(parts)

    def close(self) -> None:
        """Publish what the outbox holds for up to ``drain_timeout_s``, say ``stopped``, leave.

        What the broker has not acknowledged by then stays in the outbox for the next start.
        """
        deadline = time.monotonic() + self.config.drain_timeout_s
        waiting = self.outbox.pending
        # A sink that never saw an event or status (its pipeline failed to start) has
        # no pipeline name, so it cannot connect: don't wait for it.
        # On a reload the new sink that takes the outbox over publishes what it holds.
        handing_over = self.outbox.handing_over
        draining = self._known.is_set() and self._thread.is_alive() and not handing_over
        if waiting and draining and self.config.drain_timeout_s > 0:
            log.info(
                "%s: waiting up to %g s for the broker to take %d message(s)",
                self.name,
                self.config.drain_timeout_s,
                waiting,
            )
        while draining and self.outbox.pending and time.monotonic() < deadline:
            if not self._thread.is_alive():
                break
            time.sleep(0.05)
        self._stop.set()
        self._known.set()
        self._thread.join(self.config.connect_timeout_s + _LEAVE_TIMEOUT_S + 5)
        if self._thread.is_alive():
            # It may still use the outbox: leave the file open; what it holds is safe.
            log.warning("%s: the publisher did not stop in time", self.name)
            return
        left = self.outbox.pending
        counters = self.outbox.counters
        log.info(
            "%s: %d message(s) acknowledged, %d dropped by the outbox bounds, %d rejected",
            self.name,
            counters.delivered,
            counters.dropped,
            self.rejected,
        )
        if left and not handing_over:
            log.warning(
                "%s: %d message(s) not acknowledged stay in the outbox %s; they are published "
                "on the next start",
                self.name,
                left,
                self.outbox.path,
            )
        self.outbox.close()

    @staticmethod
    def check(config: MqttSinkConfig) -> list[str]:
        """Tell ``labelcast check`` whether the broker is reachable, trusted and lets us in."""
        try:
            context = tls_context(config.tls) if config.tls is not None else None
        except SinkError as exc:
            return [str(exc)]
        path = Path(config.outbox.path) if config.outbox.path else default_outbox_path(config)
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        problems = []
        if not os.access(folder, os.W_OK):
            problems.append(f"mqtt sink {config.where}: the outbox {path} is not writable")
        probe = probe_broker(config, context=context)
        if probe.ok:
            log.info("%s", probe.message)
        else:
            problems.append(probe.message)
        return problems

    # -- learning the pipeline and its streams ---------------------------------------------

    def _learn(self, pipeline: str, stream: str) -> None:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = pipeline
                self._known.set()
            if stream in self._streams:
                return
            self._streams.add(stream)
            if self.config.homeassistant.discovery:
                topic, payload = self._discovery(pipeline, stream)
                self._session[topic] = payload
                self._session_dirty.add(topic)

    def _discovery(self, pipeline: str, stream: str) -> tuple[str, bytes]:
        """Home Assistant's discovery config of one stream's top-label sensor."""
        ha = self.config.homeassistant
        node = _slug(f"{self.config.topic_prefix}_{pipeline}")
        state = self.topic(pipeline, stream, "state")
        # The sensor shows the stream's smoothed label from the retained state topic,
        # so Home Assistant has it again right after its own restart.
        config = {
            "name": f"{stream} label",
            "unique_id": _slug(f"{node}_{stream}_label"),
            "state_topic": state,
            "value_template": "{{ value_json.label if value_json.label is not none else 'none' }}",
            "json_attributes_topic": state,  # label, score and since become attributes
            "availability_topic": self.topic(pipeline, None, "available"),
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
        return topic, json.dumps(config, separators=(",", ":")).encode()

    # -- the publisher thread --------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._known.wait()
            with self._lock:
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
        available = self.topic(pipeline, None, "available")
        client_id = self.config.client_id or f"labelcast-{pipeline}-{uuid.uuid4().hex[:8]}"
        client = make_client(self.config, client_id, context=self._context, will_topic=available)
        client.max_inflight_messages_set(self.config.max_inflight)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        backoff = Backoff(self.config.reconnect.min_s, self.config.reconnect.max_s)
        while not self._stop.is_set():
            if not self._connected:
                if not self._connect(client, available):
                    self._stop.wait(backoff.next())
                    continue
                backoff.reset()
            client.loop(_TICK_S)
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
                self._stop.wait(backoff.next())
        try:
            self._leave(client, available)
        except SinkError as exc:
            log.error("%s", exc)

    def _connect(self, client: paho.Client, available: str) -> bool:
        self._connack = None
        try:
            start_connect(client, self.config)
        except (OSError, ValueError) as exc:
            self._note(describe_connect_error(exc, self.config))
            return False
        deadline = time.monotonic() + self.config.connect_timeout_s
        silence = f"no CONNACK within {self.config.connect_timeout_s:g} s"
        while self._connack is None and time.monotonic() < deadline and not self._stop.is_set():
            if client.loop(_TICK_S) != MQTTErrorCode.MQTT_ERR_SUCCESS and self._connack is None:
                silence = _CLOSED_EARLY
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
        with self._lock:
            self._session_dirty = set(self._session)
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
        with self._lock:
            if not self._session_dirty:
                return
            messages = [(topic, self._session[topic]) for topic in sorted(self._session_dirty)]
            self._session_dirty.clear()
        for topic, payload in messages:
            client.publish(topic, payload, qos=1, retain=True, properties=self._json_props)

    def _publish_outbox(self, client: paho.Client) -> None:
        free = self._window - len(self._inflight)
        for message in self.outbox.take(free):
            info = client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=self._json_props,
            )
            if message.qos == 0:
                # QoS 0 is never acknowledged: it leaves the outbox once handed to the socket.
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self.published += 1
                    self._acked.append(message.id)
            else:
                # Kept even if the connection just dropped: paho re-sends it on reconnect.
                self._inflight[info.mid] = message.id

    def _leave(self, client: paho.Client, available: str) -> None:
        """Say ``stopped`` and disconnect cleanly, so the broker discards the Last Will."""
        if self._connected:
            # A reload's new sink that takes the outbox over says online itself: this one
            # leaves without a word (the clean disconnect still drops the Last Will).
            if not self.outbox.handing_over:
                self._leave_mid = client.publish(available, b"stopped", qos=1, retain=True).mid
                deadline = time.monotonic() + _LEAVE_TIMEOUT_S
                while not self._leave_acked and self._connected and time.monotonic() < deadline:
                    client.loop(_TICK_S)
            self._connected = False
            client.disconnect()
            client.loop(_TICK_S)
        self._flush_acks()


# -- listening -----------------------------------------------------------------------------


def listen(
    config: MqttSinkConfig,
    pipeline: str,
    *,
    out: TextIO,
    everything: bool = False,
    count: int | None = None,
    timeout_s: float | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Subscribe with the sink's settings and print what arrives; return the messages printed.

    Prints label events as JSON lines (``everything``: every topic of the pipeline,
    as ``topic payload`` lines, retained ones included). Stops after ``count``
    messages, ``timeout_s`` seconds, or when ``stop`` is set; reconnects with
    backoff meanwhile. Raises SinkError if TLS or the login is refused.
    """
    context = tls_context(config.tls) if config.tls is not None else None
    base = f"{config.topic_prefix}/{pipeline}"
    topic = f"{base}/#" if everything else f"{base}/+/labels"
    done = stop or threading.Event()
    answers: list[ReasonCode] = []
    printed = 0

    def on_connect(
        client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        answers.append(reason)
        if not reason.is_failure:
            client.subscribe(topic, qos=1)
            log.info("listening on %s to %s", config.where, topic)

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        nonlocal printed
        if done.is_set():
            return
        text = message.payload.decode("utf-8", errors="replace")
        out.write(f"{message.topic} {text}\n" if everything else f"{text}\n")
        out.flush()
        printed += 1
        if count is not None and printed >= count:
            done.set()

    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining() -> float:
        return 3600.0 if deadline is None else max(0.0, deadline - time.monotonic())

    client = make_client(config, f"labelcast-listen-{uuid.uuid4().hex[:10]}", context=context)
    client.on_connect = on_connect
    client.on_message = on_message
    backoff = Backoff(config.reconnect.min_s, config.reconnect.max_s)
    state: str | None = None
    try:
        while not done.is_set() and remaining() > 0:
            answers.clear()
            try:
                start_connect(client, config)
            except (OSError, ValueError) as exc:
                problem = describe_connect_error(exc, config)
                if problem.fatal:
                    raise SinkError(problem.message) from exc
                if problem.message != state:
                    state = problem.message
                    log.warning("%s; retrying", problem.message)
                done.wait(min(backoff.next(), remaining()))
                continue
            while not done.is_set() and remaining() > 0:
                if client.loop(0.1) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if answers and answers[0].is_failure:
                    problem = describe_refusal(answers[0], config)
                    if problem.fatal:
                        raise SinkError(problem.message)
                    break
            if answers and not answers[0].is_failure:
                backoff.reset()
                state = None
    finally:
        client.disconnect()
    return printed


def listen_config(sinks: list[Any], index: int | None = None) -> MqttSinkConfig | None:
    """Pick the mqtt sink config to listen with: sink number ``index``, or the first mqtt sink."""
    if index is not None:
        chosen = sinks[index] if 0 <= index < len(sinks) else None
        return chosen if isinstance(chosen, MqttSinkConfig) else None
    return next((sink for sink in sinks if isinstance(sink, MqttSinkConfig)), None)
