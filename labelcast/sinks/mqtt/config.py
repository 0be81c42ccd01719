"""The MQTT sink's config: the broker, login and TLS, topics, QoS, the outbox, reconnects.

Pydantic models only (no paho): ``labelcast.config`` builds the sinks' union from them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from labelcast.sinks.outbox.config import OutboxConfig
from labelcast.util.backoff import ReconnectConfig


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


class MqttReconnectConfig(ReconnectConfig):
    """Jittered exponential backoff between connection attempts."""

    min_s: Annotated[
        float, Field(gt=0, description="Delay before the first retry, in seconds.")
    ] = 0.5
    max_s: Annotated[
        float, Field(gt=0, description="Longest delay between retries, in seconds.")
    ] = 30.0

    @model_validator(mode="after")
    def _ordered(self) -> MqttReconnectConfig:
        # Replaces the base's check, with the message this sink has always given.
        if self.max_s < self.min_s:
            raise ValueError("reconnect: max_s must be at least min_s")
        return self


class HomeAssistantConfig(BaseModel):
    """Home Assistant MQTT discovery: one sensor per subject showing its label (and an image)."""

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
        MqttReconnectConfig, Field(description="Backoff between connection attempts.")
    ] = MqttReconnectConfig()
    outbox: Annotated[
        OutboxConfig, Field(description="The durable outbox (bounded by size and age).")
    ] = OutboxConfig()
    homeassistant: Annotated[
        HomeAssistantConfig, Field(description="Home Assistant MQTT discovery (opt-in).")
    ] = HomeAssistantConfig()
    snapshot: Annotated[
        bool,
        Field(
            description="On each start or change of a subject's label, publish the picture "
            "that confirmed it as JPEG, retained, on <subject topic>/snapshot (with "
            "discovery: a Home Assistant image entity beside the sensor)."
        ),
    ] = False

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

    def topic(self, pipeline: str, stream: str | None, kind: str) -> str:
        """``<prefix>/<pipeline>/<stream>/<kind>``, or ``<prefix>/<pipeline>/<kind>``."""
        parts = [self.topic_prefix, pipeline, *([stream] if stream else []), kind]
        return "/".join(parts)
