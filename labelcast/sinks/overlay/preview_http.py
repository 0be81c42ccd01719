"""The preview's HTTP side: the index page, ``/api/streams``, JPEG and MJPEG views, /label.

Requests run on ``BoundedHTTPServer`` threads; they read the :class:`Preview`'s state
and wait on it for new JPEGs, so nothing is queued per viewer. The index page is the
package data file ``preview.html`` (a ``string.Template``). Requests under ``/label`` go
to ``label_http`` once the password is checked.
"""

from __future__ import annotations

import html
import json
import logging
import socket
import string
import urllib.parse
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from labelcast.sinks.overlay import label_http
from labelcast.util.http import BoundedRequestHandler, cross_site_refusal

if TYPE_CHECKING:
    from labelcast.sinks.overlay.preview import Preview

log = logging.getLogger(__name__)

_BOUNDARY = "labelcastframe"
_SEND_BUFFER = 512 * 1024


def _send_parts(connection: socket.socket, parts: tuple[bytes, ...]) -> None:
    """Send ``parts`` in as few system calls as the socket allows, copying none of them.

    Every viewer is sent the very bytes the encoder made: joining them to the part's
    head would copy each picture once per viewer (and leave that memory in the viewers'
    threads' malloc arenas), and each extra write gives up the GIL and takes it back,
    which slows the classifier's thread.
    """
    views = [memoryview(part) for part in parts]
    while views:
        sent = connection.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views.pop(0))
        if views and sent:
            views[0] = views[0][sent:]


@cache
def _index_template() -> string.Template:
    # Read once, from the installed package (a wheel or a zip import alike).
    text = (
        resources.files("labelcast.sinks.overlay")
        .joinpath("preview.html")
        .read_text(encoding="utf-8")
    )
    return string.Template(text)


def _index_page(streams: list[dict[str, Any]]) -> bytes:
    items = []
    views = []
    for entry in streams:
        name = html.escape(entry["stream"])
        url = "stream/" + urllib.parse.quote(entry["stream"], safe="") + ".mjpg"
        score = "" if entry["score"] is None else f" {entry['score']:.2f}"
        now = (
            f"{entry['label'] or '-'}{score} | state: {entry['state'] or '-'} | "
            f"{entry['status'] or '-'}"
        )
        items.append(
            f'<li class="stream" id="s-{name}"><a href="{html.escape(url)}">{name}</a>: '
            f'<span class="now">{html.escape(now)}</span></li>'
        )
        views.append(
            f'<div class="v"><div>{name}</div><img src="{html.escape(url)}" alt="{name}"></div>'
        )
    return _index_template().substitute(items="".join(items), views="".join(views)).encode("utf-8")


def handler_for(preview: Preview) -> type[BoundedRequestHandler]:
    """Return the request handler class of ``preview``'s HTTP server."""

    class Handler(BoundedRequestHandler):
        server_version = "labelcast-preview"

        def setup(self) -> None:
            super().setup()
            # A fixed send buffer bounds what a viewer that stops reading can pin in memory
            # (and makes its writes block, then time out, instead of growing the buffer).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("preview: " + format, *args)

        def do_GET(self) -> None:
            if not preview.authorised(self.headers.get("Authorization")):
                self._refuse()
                return
            parts = urllib.parse.urlsplit(self.path)
            path = parts.path
            if label_http.is_label_path(path):
                self._send(label_http.get(preview.label_store, path, parts.query))
            elif path in ("/", "/index.html"):
                self._reply(200, _index_page(preview.summary()), "text/html; charset=utf-8")
            elif path == "/api/streams":
                body = json.dumps(preview.summary()).encode()
                self._reply(200, body, "application/json")
            elif path.startswith("/stream/") and path.endswith(".mjpg"):
                self._mjpeg(urllib.parse.unquote(path[len("/stream/") : -len(".mjpg")]))
            elif path.startswith("/stream/") and path.endswith(".jpg"):
                stream = urllib.parse.unquote(path[len("/stream/") : -len(".jpg")])
                if not preview.has_picture(stream):
                    self._reply(404, b"no such stream\n", "text/plain")
                elif (found := preview.latest_jpeg(stream, 2.0)) is None:
                    self._reply(503, b"no picture yet\n", "text/plain", {"Retry-After": "1"})
                else:
                    self._reply(200, found.data, "image/jpeg")
            else:
                self._reply(404, b"not found\n", "text/plain")

        def do_POST(self) -> None:
            # Read (or refuse) the body first: an unread body would be taken for the
            # next request on this connection.
            length = self.headers.get("Content-Length")
            if length is None or not length.isdecimal():
                self.close_connection = True
                self._reply(411, b"Content-Length required\n", "text/plain")
                return
            if int(length) > label_http.MAX_BODY_BYTES:
                self.close_connection = True
                self._reply(413, b"request body too large\n", "text/plain")
                return
            body = self.rfile.read(int(length))
            if not preview.authorised(self.headers.get("Authorization")):
                self._refuse()
                return
            path = urllib.parse.urlsplit(self.path).path
            if not label_http.is_label_path(path):
                self._reply(404, b"not found\n", "text/plain")
                return
            # With a password a rebound name gets no credentials: then only the
            # browser's own cross-site marks are checked (a proxy may pass its name).
            why = cross_site_refusal(
                self.headers, preview.address[0], check_host=preview.config.password is None
            )
            if why is not None:
                self._send(label_http.refused(why))
                return
            reply = label_http.post(
                preview.label_store, path, self.headers.get("Content-Type"), body
            )
            self._send(reply)

        def _refuse(self) -> None:
            self._reply(
                401,
                b"authentication required\n",
                "text/plain",
                {"WWW-Authenticate": 'Basic realm="labelcast preview", charset="UTF-8"'},
            )

        def _send(self, reply: label_http.Reply) -> None:
            self._reply(reply.status, reply.body, reply.content_type, reply.headers)

        def _mjpeg(self, stream: str) -> None:
            if not preview.has_picture(stream):
                self._reply(404, b"no such stream\n", "text/plain")
                return
            if not preview.acquire_slot():
                self._reply(503, b"too many viewers\n", "text/plain", {"Retry-After": "5"})
                return
            try:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                version = -1
                while not preview.closed:
                    found = preview.next_jpeg(stream, version, 1.0)
                    if found is None:
                        continue  # nothing new yet; ask again (and stay watched)
                    version, data = found.version, found.data
                    head = (
                        f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n".encode()
                    )
                    _send_parts(self.connection, (head, data, b"\r\n"))
            except OSError:
                pass  # the viewer went away or stopped reading
            finally:
                preview.release_slot()

        def _reply(
            self,
            code: int,
            body: bytes,
            content_type: str,
            headers: dict[str, str] | None = None,
        ) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                headers = {"Cache-Control": "no-store", **(headers or {})}
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass

    return Handler
