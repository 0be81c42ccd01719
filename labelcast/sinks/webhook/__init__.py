"""The webhook sink: events POSTed to an HTTP(S) endpoint through a durable outbox.

``config`` holds the models (no httpx), ``delivery`` the thread that empties the outbox
into the endpoint, ``sink`` the Sink itself (see docs/webhook.md). httpx loads when a
sink is made, not on import.
"""

from __future__ import annotations

from labelcast.sinks.webhook.config import (
    WebhookBatchConfig,
    WebhookRetryConfig,
    WebhookSinkConfig,
    WebhookTlsConfig,
)
from labelcast.sinks.webhook.sink import WebhookSink

__all__ = [
    "WebhookBatchConfig",
    "WebhookRetryConfig",
    "WebhookSink",
    "WebhookSinkConfig",
    "WebhookTlsConfig",
]
