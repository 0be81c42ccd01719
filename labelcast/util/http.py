"""HTTP helpers shared by the operations endpoint, the overlay preview and WHIP ingest.

``parse_bind`` reads ``host:port`` / ``[v6]:port`` addresses and ``parse_host`` a host
alone (config validators call them, so a bad bind is a config error, never a
traceback); ``BoundedHTTPServer`` is a ``ThreadingHTTPServer`` that listens on IPv4 or
IPv6, names its daemon request threads, times requests out and refuses oversized
request heads; ``check_basic_auth`` checks an ``Authorization: Basic`` header in
constant time; ``cross_site_refusal`` guards requests that change something against
other web sites open in the same browser (CSRF) and DNS rebinding.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from typing import Annotated, Any

from pydantic import AfterValidator

# Request line plus headers; browsers send a few kilobytes, so this leaves room for
# cookies while a client cannot make a request thread buffer megabytes.
MAX_HEADER_BYTES = 16 * 1024
# Longest a request thread waits on a silent client (slowloris), in seconds.
REQUEST_TIMEOUT_S = 10.0

_LOOPBACK_NAMES = ("localhost",)


def parse_bind(text: str, field: str, *, allow_ephemeral: bool = True) -> tuple[str, int]:
    """Split ``host:port`` or ``[ipv6]:port`` into (host, port); the host keeps no brackets.

    Raises ValueError naming ``field`` (left out when ``field`` is empty: pydantic adds
    the location itself) for a missing host, a non-numeric port, a port outside
    1..65535 (0, "any free port", when ``allow_ephemeral``) or an unbracketed IPv6 host.
    """
    prefix = f"{field}: " if field else ""
    example = "e.g. 127.0.0.1:9090 or [::1]:9090"
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{prefix}expected [ipv6-address]:port, {example}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{prefix}{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{prefix}expected host:port, {example}")
        if ":" in host:
            raise ValueError(f"{prefix}write an IPv6 address in brackets, {example}")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{prefix}expected host:port with a host name or address, {example}")
    if not port_text.isdecimal() or not port_text.isascii():
        raise ValueError(f"{prefix}the port must be a number, {example}")
    port = int(port_text)
    lowest = 0 if allow_ephemeral else 1
    if not lowest <= port <= 65535:
        raise ValueError(f"{prefix}port {port} is out of range ({lowest}..65535)")
    return host, port


def parse_host(text: str) -> str:
    """Check a host name or address given without a port; return it without brackets.

    Raises ValueError for whitespace, a path, or a colon that is not part of an IPv6
    address (a ``host:port`` where only the host belongs).
    """
    host = text.removeprefix("[").removesuffix("]")
    if any(c.isspace() for c in host) or "/" in host:
        raise ValueError("expected an address or host name, e.g. 127.0.0.1 or ::1")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                "expected an address or host name without a port (the port is `port`)"
            ) from None
    return host


def address_family(host: str) -> socket.AddressFamily:
    """Return the socket family to listen on ``host`` (no brackets) with: IPv6 for IPv6."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _valid_bind(text: str) -> str:
    parse_bind(text, "")
    return text


BindAddress = Annotated[str, AfterValidator(_valid_bind)]
"""A config field holding ``host:port`` or ``[ipv6]:port``, checked by ``parse_bind``."""


def format_bind(host: str, port: int) -> str:
    """Write (host, port) as an address for URLs and messages: IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, no brackets) is this machine only."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_basic_auth(header: str | None, username: str, password: str) -> bool:
    """Whether an ``Authorization`` header carries these basic-auth credentials.

    Compared with ``hmac.compare_digest``: the time taken must not tell how much of a
    guess was right.
    """
    if header is None:
        return False
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    user, _, given = decoded.partition(":")
    expected = f"{username}:{password}"
    return hmac.compare_digest(f"{user}:{given}".encode(), expected.encode())


# Browsers send these ``Sec-Fetch-Site`` values for requests not started by another site.
_SAME_SITE = ("same-origin", "none")


def cross_site_refusal(headers: Any, bind_host: str, *, check_host: bool = True) -> str | None:
    """Why a state-changing request must be refused as cross-site; None if it may go ahead.

    Refused: what a browser marks as started by another site (``Sec-Fetch-Site``), an
    ``Origin`` that is not the ``Host`` asked for, and (``check_host``) a ``Host`` that is
    a name other than ``localhost`` or ``bind_host``: a page whose name an attacker
    rebound to this machine's address (DNS rebinding) sends its own name. Clients that
    are not browsers send none of these headers and pass.
    """
    fetch_site = headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() not in _SAME_SITE:
        return f"cross-site request refused (Sec-Fetch-Site: {fetch_site})"
    host_header = headers.get("Host", "")
    origin = headers.get("Origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != host_header:
        return "cross-origin request refused (Origin does not match Host)"
    if check_host and host_header and not _known_host(host_header, bind_host):
        return "request refused: Host is not an address of this server"
    return None


def _known_host(host_header: str, bind_host: str) -> bool:
    host = urllib.parse.urlsplit(f"//{host_header}").hostname or ""
    if host == bind_host.lower() or host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _HeadersTooLarge(Exception):
    """The request line and headers ran past the server's ``max_header_bytes``."""


class _CappedReader:
    """Wraps a handler's ``rfile``: ``readline`` counts against a budget while armed.

    The handler arms it before the request line and disarms it once the headers are
    parsed, so request bodies (read with ``read``) are never counted.
    """

    def __init__(self, raw: BufferedIOBase, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self._left: int | None = None

    def arm(self) -> None:
        """Start counting a new request head."""
        self._left = self._limit

    def disarm(self) -> None:
        """Stop counting (the head is read)."""
        self._left = None

    def readline(self, size: int = -1) -> bytes:
        """Read one line; raise _HeadersTooLarge once the head is over budget."""
        if self._left is None:
            return self._raw.readline(size)
        # Ask for one byte more than the budget, so a longer line is noticed without
        # reading all of it.
        wanted = self._left + 1 if size < 0 else min(size, self._left + 1)
        line = self._raw.readline(wanted)
        self._left -= len(line)
        if self._left < 0:
            raise _HeadersTooLarge
        return line

    def read(self, size: int = -1) -> bytes:
        """Read the body."""
        return self._raw.read(size)

    def close(self) -> None:
        """Close the underlying file."""
        self._raw.close()

    @property
    def closed(self) -> bool:
        """Whether the underlying file is closed."""
        return self._raw.closed


class BoundedRequestHandler(BaseHTTPRequestHandler):
    """A request handler for ``BoundedHTTPServer``: answers 431 to oversized request heads."""

    server: BoundedHTTPServer

    def setup(self) -> None:
        """Wrap the request stream so that the request head is size-capped."""
        super().setup()
        self._capped = _CappedReader(self.rfile, self.server.max_header_bytes)
        self.rfile = self._capped  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        """Handle one request; refuse it with 431 if its head is too large."""
        self._capped.arm()
        try:
            super().handle_one_request()
        except _HeadersTooLarge:
            self.close_connection = True
            body = b"request header fields too large\n"
            self.wfile.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"Content-Type: text/plain\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                b"Connection: close\r\n\r\n" + body
            )
        except TimeoutError:
            # A client that went silent while being answered (the base class handles
            # one silent while sending): drop it.
            self.close_connection = True

    def parse_request(self) -> bool:
        """Parse the request line and headers, then stop counting bytes against the cap."""
        ok = super().parse_request()
        self._capped.disarm()
        return ok


class BoundedHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer for IPv4 or IPv6, with named daemon threads and bounded requests.

    Each accepted connection gets a socket timeout of ``request_timeout_s`` (a client that
    sends or reads nothing for that long is dropped) and may send at most
    ``max_header_bytes`` of request line and headers (more is answered with 431).
    """

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BoundedRequestHandler],
        *,
        thread_name: str,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        host = address[0]
        # Instance attribute, set before the socket is made in TCPServer.__init__.
        self.address_family = address_family(host)
        self.thread_name = thread_name
        self.request_timeout_s = request_timeout_s
        self.max_header_bytes = max_header_bytes
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept a connection and give it the request timeout."""
        sock, client = super().get_request()
        sock.settimeout(self.request_timeout_s)
        return sock, client

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a named daemon thread."""
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=self.thread_name,
            daemon=True,
        )
        thread.start()
