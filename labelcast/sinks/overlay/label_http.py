"""The /label page's HTTP side: the page, its JSON API, the pictures and their thumbnails.

``get`` and ``post`` turn a request (path, query or body) into a :class:`Reply`; the
preview's request handler (``preview_http.py``) has already checked the password. The
page is the package data file ``label.html``: plain HTML, CSS and JavaScript, nothing
fetched from elsewhere (gateways are often offline).

| request | answer |
|---|---|
| ``GET /label`` | the page |
| ``GET /label/api/subjects`` | subjects with pictures, training labels with counts |
| ``GET /label/api/pictures?subject=S&offset=N&limit=N`` | a page of S's pictures, newest first |
| ``GET /label/thumb/<file>``, ``/label/picture/<file>`` | a picture, small or as taken |
| ``POST /label/api/move`` ``{"files": [...], "label": "..."}`` | moved into ``<data>/<label>/`` |
| ``POST /label/api/delete`` ``{"files": [...]}`` | deleted, sidecars too |

A bad request gets 400 with ``{"error": "..."}`` naming what is wrong; a move or delete
of which some pictures were already gone gets 409 listing them (and what was done).
Moves and deletes are guarded against other web sites open in the operator's browser:
they must be ``application/json`` (a form on another site cannot send that without the
browser first asking this server, which never agrees), and the preview's handler
refuses what the browser marks as cross-site and, without a password, Host names of
DNS rebinding (``util.http.cross_site_refusal``).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from labelcast.sinks.overlay.label_store import (
    BadRequest,
    LabelPageError,
    Outcome,
    SnapshotStore,
)

log = logging.getLogger(__name__)

PREFIX = "/label"
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body, content type and extra headers."""

    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


def is_label_path(path: str) -> bool:
    """Whether a request path belongs to the /label page."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def _json(status: int, value: Any) -> Reply:
    return Reply(status, json.dumps(value).encode("utf-8"), "application/json")


def _error(status: int, message: str) -> Reply:
    return _json(status, {"error": message})


def refused(why: str) -> Reply:
    """Answer 403 to a move or delete refused as cross-site (``why`` says how)."""
    return _error(403, why)


_NOT_CONFIGURED = (
    "the /label page is off: set the overlay sink's preview.label "
    "{snapshots: ..., data: ...} (docs/overlay.md)"
)


@cache
def _page() -> bytes:
    # Read once, from the installed package (a wheel or a zip import alike).
    return resources.files("labelcast.sinks.overlay").joinpath("label.html").read_bytes()


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    text = values[-1]
    if not text.isdecimal() or not text.isascii() or len(text) > 9:
        raise BadRequest(f"{name}: expected a whole number >= 0, not {text!r}")
    return int(text)


def get(store: SnapshotStore | None, path: str, query: str) -> Reply:
    """Answer a GET under /label (``path`` without the query, still %-encoded)."""
    if store is None:
        return _error(404, _NOT_CONFIGURED)
    try:
        return _get(store, path, urllib.parse.parse_qs(query))
    except LabelPageError as exc:
        return _error(exc.status, str(exc))


def _get(store: SnapshotStore, path: str, query: dict[str, list[str]]) -> Reply:
    rest = path[len(PREFIX) :]
    if rest in ("", "/"):
        return Reply(200, _page(), "text/html; charset=utf-8")
    if rest == "/api/subjects":
        return _json(
            200,
            {
                "subjects": store.subjects(),
                "labels": store.training_labels(),
                "page_size": store.page_size,
            },
        )
    if rest == "/api/pictures":
        subject = (query.get("subject") or [""])[-1]
        offset = _int(query, "offset", 0)
        limit = _int(query, "limit", store.page_size)
        return _json(200, store.page(subject, offset, limit))
    for prefix, read in (("/thumb/", store.thumbnail), ("/picture/", store.picture)):
        if rest.startswith(prefix):
            try:
                file = urllib.parse.unquote(rest[len(prefix) :], errors="strict")
            except UnicodeDecodeError as exc:
                raise BadRequest(f"{path}: not UTF-8 ({exc})") from exc
            # The pictures never change under their name (a moved one is gone).
            return Reply(200, read(file), "image/jpeg", {"Cache-Control": "private, max-age=3600"})
    return _error(404, f"not found: {path}")


def post(store: SnapshotStore | None, path: str, content_type: str | None, body: bytes) -> Reply:
    """Answer a POST under /label: a move or a delete, with a JSON body."""
    if store is None:
        return _error(404, _NOT_CONFIGURED)
    rest = path[len(PREFIX) :]
    if rest not in ("/api/move", "/api/delete"):
        return _error(404, f"not found: {path}")
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        return _error(415, "send the request body as application/json")
    try:
        request = json.loads(body)
    except ValueError as exc:
        return _error(400, f"the body is not JSON ({exc})")
    try:
        if rest == "/api/move":
            files, label = _fields(request, ("files", "label"))
            assert isinstance(label, str)  # _fields checked it
            outcome = store.move(_files(files), label)
        else:
            (files,) = _fields(request, ("files",))
            outcome = store.delete(_files(files))
    except LabelPageError as exc:
        if exc.status >= 500:
            log.warning("label page: %s", exc)
        return _error(exc.status, str(exc))
    return _outcome(outcome)


def _fields(request: Any, names: tuple[str, ...]) -> list[Any]:
    """Return the request object's fields ``names`` (``label`` a string), or raise BadRequest."""
    if not isinstance(request, dict):
        raise BadRequest(f"the body must be a JSON object with {', '.join(names)}")
    unknown = sorted(set(request) - set(names))
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(map(str, unknown))}")
    missing = [name for name in names if name not in request]
    if missing:
        raise BadRequest(f"missing field(s): {', '.join(missing)}")
    if "label" in request and not isinstance(request["label"], str):
        raise BadRequest("label: expected a string")
    return [request[name] for name in names]


def _files(files: Any) -> list[str]:
    if not isinstance(files, list) or not all(isinstance(file, str) for file in files):
        raise BadRequest("files: expected a list of picture paths (strings)")
    return files


def _outcome(outcome: Outcome) -> Reply:
    if outcome.gone:
        return _json(
            409,
            {
                "error": f"{len(outcome.gone)} picture(s) were no longer there "
                "(moved or deleted already)",
                "done": outcome.done,
                "gone": outcome.gone,
            },
        )
    return _json(200, {"done": outcome.done, "gone": []})
