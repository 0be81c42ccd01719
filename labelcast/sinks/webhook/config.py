"""The webhook sink's config: the URL, which events, headers and signature, batching, TLS.

Pydantic models only (no httpx, no I/O): ``labelcast.config`` builds the sinks' union from
them. Header values and the signing secret are ``SecretStr``, so they never show in a
``repr`` or an error message.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from labelcast.sinks.outbox.config import OutboxConfig
from labelcast.util.backoff import ReconnectConfig

EventKind = Literal["labels", "change", "status"]

# RFC 9110 field names ("token" characters).
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers the sink sets itself: a configured value would contradict the request's body.
_OWN_HEADERS = ("content-type", "content-length", "host", "x-labelcast-")


class WebhookBatchConfig(BaseModel):
    """How many events one request carries; more than one is sent as a JSON array."""

    model_config = ConfigDict(extra="forbid")

    max_events: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description="Events per request, at most; 1 sends each event as a JSON object, "
            "more sends a JSON array of events.",
        ),
    ] = 1
    max_wait_ms: Annotated[
        float,
        Field(
            ge=0,
            le=60_000,
            description="Longest wait for more events to fill a request, in milliseconds, "
            "after the first one is ready (0: send what is there at once).",
        ),
    ] = 0.0


class WebhookTlsConfig(BaseModel):
    """How an https endpoint's certificate is checked; there is never a fallback to http."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Annotated[
        str | None,
        Field(
            description="PEM file of the CA(s) the server's certificate must chain to "
            "(default: the system's trust store)."
        ),
    ] = None
    insecure: Annotated[
        bool,
        Field(
            description="Skip the check that the server's certificate names the URL's host "
            "(the chain is still verified). For testing only."
        ),
    ] = False


class WebhookRetryConfig(ReconnectConfig):
    """Jittered exponential backoff between attempts to deliver a request that failed."""

    min_s: Annotated[
        float, Field(gt=0, le=3600, description="Delay before the first retry, in seconds.")
    ] = 0.5
    max_s: Annotated[
        float, Field(gt=0, le=3600, description="Longest delay between retries, in seconds.")
    ] = 30.0


class WebhookSinkConfig(BaseModel):
    """POST events to an HTTP(S) endpoint, losing none (see docs/webhook.md)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["webhook"] = "webhook"
    url: Annotated[
        str,
        Field(
            min_length=1,
            repr=False,  # its path may hold a secret webhook id
            description="The http:// or https:// URL events are POSTed to; write secrets in "
            "it (a webhook id, user:password@) as ${ENV_VAR}.",
        ),
    ]
    events: Annotated[
        list[EventKind],
        Field(
            min_length=1,
            description="Which events to send: change (labelcast.change/1), labels "
            "(labelcast.label/1, one per classified frame), status (a stream's state).",
        ),
    ] = ["change"]
    headers: Annotated[
        dict[str, SecretStr],
        Field(
            description="Extra request headers, e.g. {Authorization: 'Bearer ${HOOK_TOKEN}'}; "
            "their values are never logged."
        ),
    ] = {}
    secret: Annotated[
        SecretStr | None,
        Field(
            description="Sign each request: X-Labelcast-Signature: sha256=<hex HMAC-SHA256 of "
            "the body with this secret>. Write it as ${ENV_VAR}."
        ),
    ] = None
    timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=600,
            description="Seconds to wait for the connection and for each read of the answer; "
            "a request that times out is retried.",
        ),
    ] = 5.0
    batch: Annotated[
        WebhookBatchConfig, Field(description="Events per request (default: one).")
    ] = WebhookBatchConfig()
    tls: Annotated[
        WebhookTlsConfig | None,
        Field(description="Certificate checks of an https URL (default: the system's trust)."),
    ] = None
    retry: Annotated[
        WebhookRetryConfig,
        Field(
            description="Backoff between attempts after a connection error, a timeout, 429 "
            "or 5xx; a longer Retry-After is honoured."
        ),
    ] = WebhookRetryConfig()
    drain_timeout_s: Annotated[
        float,
        Field(
            ge=0,
            description="On a clean exit, seconds to keep sending the outbox before leaving "
            "the rest for the next start.",
        ),
    ] = 10.0
    outbox: Annotated[
        OutboxConfig, Field(description="The durable outbox (bounded by size and age).")
    ] = OutboxConfig()

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        # Messages never repeat the URL: its path may hold a secret webhook id.
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            raise ValueError("not a valid URL (check the port)") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https://")
        if not parts.hostname:
            raise ValueError("must name a host, like https://hooks.example.lan/labelcast")
        if any(char.isspace() for char in value):
            raise ValueError("must not contain spaces (write them as %20)")
        return value

    @field_validator("events")
    @classmethod
    def _unique_events(cls, value: list[EventKind]) -> list[EventKind]:
        if len(set(value)) != len(value):
            raise ValueError("name each kind once")
        return value

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower().startswith(_OWN_HEADERS):
                raise ValueError(f"{name}: labelcast sets this header itself")
            if any(char in text.get_secret_value() for char in "\r\n\0"):
                raise ValueError(f"{name}: a header value must be one line")
        return value

    @model_validator(mode="after")
    def _tls_needs_https(self) -> WebhookSinkConfig:
        if self.tls is not None and urlsplit(self.url).scheme != "https":
            raise ValueError("tls: only an https:// URL uses TLS")
        return self

    @property
    def where(self) -> str:
        """``scheme://host:port`` of the endpoint, for names and messages (no path, no login)."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = parts.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        return f"{parts.scheme}://{shown}:{port}"
