"""``labelcast listen``: subscribe with an mqtt sink's settings and print what arrives."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, TextIO

from labelcast.errors import SinkError
from labelcast.sinks.mqtt.config import MqttSinkConfig
from labelcast.sinks.mqtt.connection import (
    describe_connect_error,
    describe_refusal,
    make_client,
    start_connect,
    tls_context,
)
from labelcast.sinks.mqtt.discovery import SNAPSHOT_KIND
from labelcast.util.backoff import Backoff

if TYPE_CHECKING:
    import paho.mqtt.client as paho
    from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)


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
    from paho.mqtt.enums import MQTTErrorCode

    context = tls_context(config.tls) if config.tls is not None else None
    base = f"{config.topic_prefix}/{pipeline}"
    # Label events of whole frames (<stream>/labels) and of regions (<stream>/<region>/labels).
    topics = [f"{base}/#"] if everything else [f"{base}/+/labels", f"{base}/+/+/labels"]
    done = stop or threading.Event()
    answers: list[ReasonCode] = []
    printed = 0

    def on_connect(
        client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        answers.append(reason)
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in topics])
            log.info("listening on %s to %s", config.where, ", ".join(topics))

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        nonlocal printed
        if done.is_set():
            return
        if message.topic.rpartition("/")[2] == SNAPSHOT_KIND:
            text = f"(JPEG, {len(message.payload)} bytes)"  # a picture is no text line
        else:
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
    backoff = Backoff(config.reconnect)
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
                done.wait(min(backoff.next_delay(), remaining()))
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
