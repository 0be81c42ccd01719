"""The webhook sink's delivery thread: POSTs the outbox in order, one request at a time.

Each request carries the oldest events not yet delivered (one, or a JSON array of up to
``batch.max_events``). A 2xx answer removes them from the outbox; a connection error, a
timeout, 408, 425, 429, 5xx or a redirect keeps them and retries the same request after
the shared jittered backoff (or a longer ``Retry-After``); any other 4xx is a permanent
rejection: they are dropped, counted and logged, and the queue moves on. Because only
one request is ever in flight, events reach the endpoint in outbox order, which per
subject is ``seq`` order. httpx loads with the first deliverer, not on import.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from labelcast.errors import SinkError
from labelcast.redact import Redactor, url_secrets
from labelcast.sinks.outbox import Outbox, StoredMessage
from labelcast.sinks.webhook.config import WebhookSinkConfig
from labelcast.util.backoff import Backoff

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

# Longest the thread sleeps with nothing to send before it looks at the outbox again
# (``wake`` cuts it short when an event arrives).
IDLE_S = 0.2
# A Retry-After longer than this is not believed: the queue would stall for hours.
MAX_RETRY_AFTER_S = 3600.0
# Answers worth retrying among the 4xx: the request itself was fine.
_RETRY_4XX = frozenset({408, 425, 429})

Outcome = Literal["delivered", "rejected", "retry"]


@dataclass(frozen=True)
class Attempt:
    """What one request came to; ``message`` is safe to log (secrets masked)."""

    outcome: Outcome
    message: str
    retry_after: float | None = None


@dataclass(frozen=True)
class EndpointProbe:
    """The outcome of opening one connection (TCP and TLS); ``fatal`` needs a config change."""

    ok: bool
    fatal: bool
    message: str


def message_key(kind: str, event_id: str) -> str:
    """Return the outbox ``topic`` of an event: its kind and id (``change gw/door/r/7/start``)."""
    return f"{kind} {event_id}"


def split_key(topic: str) -> tuple[str, str]:
    """Return (kind, id) of an outbox ``topic`` written by :func:`message_key`."""
    kind, _, event_id = topic.partition(" ")
    return kind, event_id


def make_redactor(config: WebhookSinkConfig) -> Redactor:
    """Make a redactor for messages about the endpoint: URL login, path, query, headers, secret.

    The path and query are masked whole: webhook ids (Home Assistant, n8n) are secrets.
    """
    parts = urlsplit(config.url)
    secrets = [config.url, *url_secrets(config.url), parts.path.strip("/"), parts.query]
    secrets += [value.get_secret_value() for value in config.headers.values()]
    if config.secret is not None:
        secrets.append(config.secret.get_secret_value())
    return Redactor(secrets)


def tls_context(config: WebhookSinkConfig) -> ssl.SSLContext | None:
    """Return the SSL context of an https URL (system trust, or ``tls.ca_file``); None for http.

    Raises SinkError naming ``tls.ca_file`` when that file cannot be used.
    """
    if urlsplit(config.url).scheme != "https":
        return None
    ca_file = config.tls.ca_file if config.tls is not None else None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SinkError(
            f"webhook sink {config.where}: tls.ca_file: cannot use {ca_file} as a CA file ({exc})"
        ) from exc
    if config.tls is not None and config.tls.insecure:
        context.check_hostname = False
    return context


def describe_error(exc: BaseException, config: WebhookSinkConfig, redactor: Redactor) -> str:
    """One clear message for a request or connection that failed (never with a secret)."""
    where = f"webhook sink {config.where}"
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the socket's own error
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = cause.verify_message or str(cause)
            return (
                f"{where}: the server's TLS certificate is not trusted or does not name the "
                f"host ({detail}); check tls.ca_file (no fallback to http)"
            )
        if isinstance(cause, ConnectionRefusedError):
            return f"{where}: connection refused (is the server running?)"
        if isinstance(cause, TimeoutError) or type(cause).__name__.endswith("Timeout"):
            return f"{where}: no answer within {config.timeout_s:g} s"
        cause = cause.__cause__ or cause.__context__
    text = redactor.text(exc) or type(exc).__name__
    return f"{where}: request failed ({text})"


def probe_endpoint(config: WebhookSinkConfig, context: ssl.SSLContext | None) -> EndpointProbe:
    """Open one TCP connection (and TLS handshake) to the endpoint; send no request.

    A webhook may act on any request, so this is all that can be checked without effects.
    An untrusted certificate is fatal; an endpoint that is down is not.
    """
    parts = urlsplit(config.url)
    host = parts.hostname or ""
    port = parts.port or (443 if context is not None else 80)
    redactor = make_redactor(config)
    try:
        with socket.create_connection((host, port), timeout=config.timeout_s) as sock:
            if context is not None:
                with context.wrap_socket(sock, server_hostname=host):
                    pass
    except (OSError, ssl.SSLError) as exc:
        fatal = isinstance(exc, ssl.SSLCertVerificationError)
        return EndpointProbe(False, fatal, describe_error(exc, config, redactor))
    return EndpointProbe(True, False, f"webhook sink {config.where}: reachable")


def retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return min(max(0.0, moment.timestamp() - time.time()), MAX_RETRY_AFTER_S)


def judge(status: int, reason: str, where: str, header: str | None) -> Attempt:
    """Sort an HTTP answer: 2xx delivered, 408/425/429/5xx/3xx retried, other 4xx rejected."""
    text = f"webhook sink {where}: answered {status} {reason}".rstrip()
    if 200 <= status < 300:
        return Attempt("delivered", text)
    if 400 <= status < 500 and status not in _RETRY_4XX:
        return Attempt("rejected", text)
    if 300 <= status < 400:
        text += " (a redirect: set url to the address it points to)"
    return Attempt("retry", text, retry_after(header))


def request_body(messages: list[StoredMessage], batched: bool) -> bytes:
    """One event's JSON as it is, or (``batch.max_events`` > 1) a JSON array of them."""
    if not batched:
        return messages[0].payload
    return b"[" + b",".join(message.payload for message in messages) + b"]"


def request_headers(
    messages: list[StoredMessage], body: bytes, secret: bytes | None
) -> dict[str, str]:
    """Return the X-Labelcast-* headers of a request (see docs/webhook.md) and its signature."""
    keys = [split_key(message.topic) for message in messages]
    kinds = list(dict.fromkeys(kind for kind, _ in keys))
    headers = {
        "Content-Type": "application/json",
        "X-Labelcast-Event": ",".join(kinds),
        "X-Labelcast-Id": keys[0][1],
        "X-Labelcast-Count": str(len(keys)),
        "X-Labelcast-Last-Id": keys[-1][1],
    }
    if secret is not None:
        digest = hmac.new(secret, body, hashlib.sha256).hexdigest()
        headers["X-Labelcast-Signature"] = f"sha256={digest}"
    return headers


class Deliverer:
    """POSTs an outbox to the endpoint on a thread of its own; one request at a time.

    ``connected`` and ``problem`` are read by readiness from other threads: the
    endpoint counts as connected while its last answer (or the start-up probe) did
    not call for a retry.
    """

    def __init__(
        self,
        config: WebhookSinkConfig,
        outbox: Outbox,
        *,
        name: str,
        context: ssl.SSLContext | None,
        probe: EndpointProbe,
    ) -> None:
        import httpx

        self.config = config
        self.outbox = outbox
        self.name = name
        self._redactor = make_redactor(config)
        secret = config.secret
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        self._client = httpx.Client(
            headers={name: value.get_secret_value() for name, value in config.headers.items()},
            timeout=config.timeout_s,
            verify=context if context is not None else True,
            follow_redirects=False,
            trust_env=False,  # no proxies or netrc from the environment: the URL says it all
        )
        # Changes of the endpoint's state are logged once: not the probe's again.
        self._state: str | None = probe.message
        self._problem: str | None = None if probe.ok else probe.message
        self._failure: str | None = None  # set once if the thread dies
        self.delivered = 0
        self.rejected = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"webhook-delivery:{config.where}", daemon=True
        )

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def wake(self) -> None:
        """Tell the thread an event is waiting (it also looks every ``IDLE_S``)."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    @property
    def connected(self) -> bool:
        """Whether the endpoint answered the last request (or the probe) and the thread runs."""
        return self._problem is None and self._failure is None

    @property
    def problem(self) -> str | None:
        """Why nothing is delivered now: a dead thread, or the last failed attempt."""
        return self._failure or self._problem

    def stop(self) -> bool:
        """End the thread (a request in flight finishes first); False if it did not end in time."""
        self._stop.set()
        self._wake.set()
        # A request in flight may wait for the connection, the upload and the answer.
        self._thread.join(3 * self.config.timeout_s + 5)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._deliver_loop()
        except Exception as exc:
            # Nothing is delivered from now on: readiness reports it until a restart.
            self._failure = f"the delivery thread died ({type(exc).__name__}: {exc})"
            log.error(
                "%s: %s; nothing is delivered until labelcast restarts, events stay in the "
                "outbox for the next start",
                self.name,
                self._redactor.text(self._failure),
                exc_info=True,
            )
        finally:
            self._client.close()

    def _deliver_loop(self) -> None:
        backoff = Backoff(self.config.retry)
        batch: list[StoredMessage] = []
        while not self._stop.is_set():
            try:
                # A request that failed is sent again as it was: nothing overtakes it.
                batch = batch or self._collect()
                if not batch:
                    continue
                attempt = self._post(batch)
                if attempt.outcome == "retry":
                    self._note(attempt)
                    delay = max(backoff.next_delay(), attempt.retry_after or 0.0)
                    self._stop.wait(delay)
                    continue
                self.outbox.remove([message.id for message in batch])
            except SinkError as exc:
                # The outbox file failed (disk full, removed): log it once, retry later.
                self._note(Attempt("retry", str(exc)))
                self._stop.wait(backoff.next_delay())
                continue
            backoff.reset()
            self._note(Attempt("delivered", f"{self.name}: delivering"))
            if attempt.outcome == "delivered":
                self.delivered += len(batch)
            else:
                self._reject(batch, attempt)
            batch = []

    def _collect(self) -> list[StoredMessage]:
        """Take the next request's events: up to ``max_events``, waiting ``max_wait_ms``."""
        limit = self.config.batch.max_events
        batch = self.outbox.take(limit)
        if not batch:
            self._wake.wait(IDLE_S)
            self._wake.clear()
            return []
        deadline = time.monotonic() + self.config.batch.max_wait_ms / 1000
        while len(batch) < limit and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._wake.wait(min(left, IDLE_S))
            self._wake.clear()
            batch += self.outbox.take(limit - len(batch))
        return batch

    def _post(self, batch: list[StoredMessage]) -> Attempt:
        import httpx

        body = request_body(batch, self.config.batch.max_events > 1)
        headers = request_headers(batch, body, self._secret)
        try:
            response = self._client.post(self.config.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Attempt("retry", describe_error(exc, self.config, self._redactor))
        return judge(
            response.status_code,
            response.reason_phrase,
            self.config.where,
            response.headers.get("Retry-After"),
        )

    def _reject(self, batch: list[StoredMessage], attempt: Attempt) -> None:
        # A permanent rejection: retrying the same request cannot succeed, and it must
        # not hold up the events behind it.
        self.rejected += len(batch)
        first, last = split_key(batch[0].topic)[1], split_key(batch[-1].topic)[1]
        ids = first if len(batch) == 1 else f"{first} .. {last}"
        log.error(
            "%s; dropped %d event(s) (%s), %d rejected since start",
            attempt.message,
            len(batch),
            ids,
            self.rejected,
        )

    def _note(self, attempt: Attempt) -> None:
        """Log each change of the endpoint's state once (repeats go to debug)."""
        message = attempt.message
        if message == self._state:
            log.debug("%s", message)
            return
        self._state = message
        if attempt.outcome != "retry":
            self._problem = None
            log.info("%s; %d event(s) wait in the outbox", message, self.outbox.pending)
            return
        self._problem = message
        log.warning(
            "%s; retrying with backoff up to %g s, events wait in the outbox",
            message,
            self.config.retry.max_s,
        )
