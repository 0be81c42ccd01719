"""Connecting to the broker: paho clients, TLS, one-off probes, and what failures mean.

paho is imported inside the functions that make or drive a client, so that the config
(and ``labelcast check`` of other sinks) never loads it.
"""

from __future__ import annotations

import ssl
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from labelcast.errors import SinkError
from labelcast.sinks.mqtt.config import MqttSinkConfig, TlsConfig

if TYPE_CHECKING:
    import paho.mqtt.client as paho
    from paho.mqtt.reasoncodes import ReasonCode

# How long one turn of the publisher's network loop waits for socket activity; it
# bounds the delay between an event reaching the outbox and its PUBLISH.
TICK_S = 0.02
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
CLOSED_EARLY = "the broker closed the connection before its CONNACK (a TLS port? then set tls)"


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
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

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
    from paho.mqtt.enums import MQTTErrorCode

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
            if client.loop(TICK_S * 5) != MQTTErrorCode.MQTT_ERR_SUCCESS and not answers:
                return BrokerProbe(False, False, f"mqtt sink {config.where}: {CLOSED_EARLY}")
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
        client.loop(TICK_S)
