"""The webhook sink: label, change and status events POSTed to a URL through a durable outbox.

``send`` only appends to the on-disk outbox (a local SQLite transaction), so the
pipeline never waits for the network. A delivery thread (``delivery.py``) POSTs the
outbox in order and removes each event once the endpoint answers 2xx. See
docs/webhook.md for the payloads, headers and the exact delivery promise.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from labelcast.errors import SinkError
from labelcast.frames import ChangeEvent, Frame, LabelEvent, LabelState, StreamStatus
from labelcast.sinks.outbox import Outbox, default_outbox_path
from labelcast.sinks.outbox.sender import OutboxSink, check_delivery, close_outbox
from labelcast.sinks.webhook.config import WebhookSinkConfig
from labelcast.sinks.webhook.delivery import (
    Deliverer,
    message_key,
    probe_endpoint,
    tls_context,
)

log = logging.getLogger(__name__)


def outbox_path(config: WebhookSinkConfig) -> Path:
    """Return the outbox file: ``outbox.path``, or one named after the endpoint.

    The default name holds the host and port and a digest of the whole URL, never its
    path: a webhook id in the path is a secret.
    """
    if config.outbox.path:
        return Path(config.outbox.path)
    digest = hashlib.sha256(config.url.encode()).hexdigest()[:12]
    return default_outbox_path("webhook", f"{config.where}_{digest}")


def status_id(status: StreamStatus) -> str:
    """Return the id of a status event: ``<pipeline>/<stream>/status/<at>/<state>``."""
    return f"{status.pipeline}/{status.stream}/status/{status.to_dict()['at']}/{status.state}"


class WebhookSink(OutboxSink):
    """POSTs the configured kinds of events through a durable outbox; lossless, never blocks.

    Construction opens one connection to the endpoint (no request): an https certificate
    that is not trusted raises SinkError (fail closed); an endpoint that is merely down
    is logged, and events wait in the outbox until it answers.
    """

    lossless = True
    all_frames = False

    def __init__(self, config: WebhookSinkConfig) -> None:
        self.config = config
        self.name = f"webhook:{config.where}"
        self._kinds = frozenset(config.events)
        context = tls_context(config)
        path = outbox_path(config)
        self.outbox = Outbox(
            path,
            max_bytes=config.outbox.max_bytes,
            max_age_s=config.outbox.max_age_s,
            sync=config.outbox.sync,
            name=f"webhook sink {config.where}",
        )
        try:
            probe = probe_endpoint(config, context)
            if probe.fatal:
                raise SinkError(probe.message)
            self._deliverer = Deliverer(
                config, self.outbox, name=self.name, context=context, probe=probe
            )
        except BaseException:
            self.outbox.close()
            raise
        if not probe.ok:
            log.warning("%s; events wait in the outbox %s until it answers", probe.message, path)
        self._deliverer.start()

    # -- health (any thread) ---------------------------------------------------------------

    @property
    def sender(self) -> Deliverer:
        """The delivery thread (``connected``, ``problem``, ``rejected`` are its own).

        It counts as connected while its last request (or the start-up probe) needed no
        retry; ``rejected`` counts events refused with a 4xx other than 408, 425 and 429.
        """
        return self._deliverer

    @property
    def delivered(self) -> int:
        """Events the endpoint acknowledged with a 2xx answer."""
        return self._deliverer.delivered

    # -- the sink protocol (the sink's thread) ---------------------------------------------

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Append the label event to the outbox if ``events`` has ``labels``."""
        if "labels" in self._kinds:
            self._put("labels", event.id, event.to_json())

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Append the change event to the outbox if ``events`` has ``change``.

        The state is not sent: it is the change's ``label``, ``score`` and ``since``.
        """
        if "change" in self._kinds:
            self._put("change", change.id, change.to_json())

    def send_status(self, status: StreamStatus) -> None:
        """Append the stream's new state to the outbox if ``events`` has ``status``."""
        if "status" in self._kinds:
            # The same JSON as the MQTT sink's retained <stream>/status.
            payload = json.dumps(status.to_dict(), separators=(",", ":"))
            self._put("status", status_id(status), payload)

    def _put(self, kind: str, event_id: str, payload: str) -> None:
        """Write one event durably and wake the delivery thread; SinkError if the file fails."""
        self.outbox.put(message_key(kind, event_id), payload.encode(), qos=1)
        self._deliverer.wake()

    def close(self) -> None:
        """Deliver what the outbox holds for up to ``drain_timeout_s``, then stop.

        What the endpoint has not acknowledged by then stays in the outbox for the next start.
        """
        deliverer = self._deliverer
        close_outbox(
            self.outbox,
            name=self.name,
            receiver="the endpoint",
            timeout_s=self.config.drain_timeout_s,
            sending=lambda: deliverer.alive,
            stop=deliverer.stop,
            summary=lambda: (
                f"{deliverer.delivered} event(s) delivered, "
                f"{self.outbox.counters.dropped} dropped by the outbox bounds, "
                f"{deliverer.rejected} rejected"
            ),
        )

    @staticmethod
    def check(config: WebhookSinkConfig) -> list[str]:
        """Tell ``labelcast check`` whether the outbox is writable and the endpoint reachable.

        Only a connection is opened (and TLS checked): no request, a webhook may act on any.
        """
        try:
            context = tls_context(config)
        except SinkError as exc:
            return [str(exc)]

        def probe() -> tuple[bool, str]:
            result = probe_endpoint(config, context)
            return result.ok, result.message

        return check_delivery(f"webhook sink {config.where}", outbox_path(config), probe)
