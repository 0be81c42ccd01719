"""The preview's /label page (issue #18, part 2): sort snapshots into a training folder.

The snapshot folders are made here as the snapshot sink writes them (real JPEGs of
scikit-image's photos, each with its sidecar); the page is driven in headless Chromium
with real mouse, touch and key events (tests/browser.py), at a desktop and a phone size.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from browser import CHROMIUM, SHIFT, Browser, needs_chromium
from helpers import basic, require
from media import photo
from PIL import Image

from labelcast.sinks.overlay import OverlaySink, OverlaySinkConfig
from labelcast.util.snapshots import label_folder

# Set to a path to save the desktop test's screenshot there (docs/label-page.png was made so).
SCREENSHOT_VARIABLE = "LABELCAST_LABEL_PAGE_SCREENSHOT"
START = datetime(2026, 11, 28, 6, 0, 0, tzinfo=timezone.utc)
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


@dataclass
class Snap:
    """One snapshot to write: subject, predicted label, minutes after START, photo, score."""

    subject: str
    label: str
    minute: int
    photo: str
    score: float | None = 0.9
    sidecar: str = "ok"  # "ok", "broken" or "none"

    @property
    def file(self) -> str:
        """The picture's path under the snapshot folder, as the page names it."""
        when = START + timedelta(minutes=self.minute)
        name = when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z.jpg"
        return f"{self.subject}/{label_folder(self.label)}/{name}"


@pytest.fixture(scope="session")
def jpegs() -> dict[str, bytes]:
    """Each photo as a small JPEG, encoded once."""
    encoded = {}
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(photo(name, (240, 320))).save(buffer, format="JPEG", quality=85)
        encoded[name] = buffer.getvalue()
    return encoded


def write_snapshot(root: Path, snap: Snap, jpegs: dict[str, bytes]) -> Path:
    """Write a picture and its sidecar as the snapshot sink does."""
    path = root / snap.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpegs[snap.photo])
    stream, _, region = snap.subject.partition("/")
    labels = (
        [] if snap.score is None else [{"label": snap.label, "score": snap.score, "class_id": 3}]
    )
    sidecar = {
        "schema": "labelcast.snapshot/1",
        "reason": "change",
        "stream": stream,
        "region": region or None,
        "label": snap.label,
        "event": {
            "labels": [*labels, {"label": "cup", "score": 0.01, "class_id": 4}],
            "captured_at": (START + timedelta(minutes=snap.minute)).isoformat(),
            "model": {"id": "tiny", "revision": None, "precision": "fp32"},
        },
    }
    if snap.sidecar == "ok":
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    elif snap.sidecar == "broken":
        path.with_suffix(".json").write_text('{"schema": "labelcast.snap')
    return path


# The door's pictures: two predicted labels taking turns, one whose sidecar is broken, one
# without a sidecar; and two of the door's "gate" region.
DOOR = [
    Snap("door", "tabby, tabby cat", 1, "chelsea", 0.91),
    Snap("door", "coffee mug", 2, "coffee", 0.62),
    Snap("door", "tabby, tabby cat", 3, "chelsea", 0.88),
    Snap("door", "coffee mug", 4, "coffee", 0.7),
    Snap("door", "space shuttle", 5, "rocket", 0.55),
    Snap("door", "coffee mug", 6, "coffee", 0.8, sidecar="broken"),
    Snap("door", "mask", 7, "astronaut", 0.4, sidecar="none"),
    Snap("door", "tabby, tabby cat", 8, "chelsea", 0.95),
    Snap("door", "coffee mug", 9, "coffee", 0.77),
]
GATE = [Snap("door/gate", "cup", 1, "coffee", 0.6), Snap("door/gate", "mask", 2, "astronaut", 0.5)]


@dataclass
class LabelServer:
    url: str
    snapshots: Path
    data: Path
    sink: OverlaySink


@pytest.fixture
def label_server(tmp_path: Path, jpegs: dict[str, bytes]) -> Iterator[LabelServer]:
    """A preview serving /label over the door's snapshots; the training folder has "closed"."""
    snapshots, data = tmp_path / "snapshots", tmp_path / "training"
    for snap in DOOR + GATE:
        write_snapshot(snapshots, snap, jpegs)
    (data / "closed").mkdir(parents=True)
    (data / "closed" / "earlier.jpg").write_bytes(jpegs["rocket"])
    with serve(snapshots, data) as server:
        yield server


@contextlib.contextmanager
def serve(
    snapshots: Path, data: Path, page_size: int = 60, **preview: Any
) -> Iterator[LabelServer]:
    """Serve /label on a free port of the loopback (``preview``: more preview settings)."""
    label = {"snapshots": str(snapshots), "data": str(data), "page_size": page_size}
    config = OverlaySinkConfig(preview={"bind": "127.0.0.1:0", "label": label, **preview})
    sink = OverlaySink(config)
    assert sink.preview_address is not None
    try:
        yield LabelServer(f"http://127.0.0.1:{sink.preview_address[1]}/", snapshots, data, sink)
    finally:
        sink.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One headless Chromium for the module's tests (each opens its own tab)."""
    require("chromium", Path(CHROMIUM).exists(), f"{CHROMIUM} not found (Debian's chromium)")
    started = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield started
    started.close()


def newest_first(snaps: list[Snap]) -> list[str]:
    return [s.file for s in sorted(snaps, key=lambda s: s.minute, reverse=True)]


GRID = "[...document.querySelectorAll('#grid .pic')].map(e => e.dataset.file)"
SELECTED = "document.querySelectorAll('#grid .pic[aria-checked=true]').length"
BUTTONS = "[...document.querySelectorAll('#labels button')].map(b => b.textContent)"


def nth(index: int) -> str:
    return f"#grid .pic:nth-child({index + 1})"


def training_files(data: Path) -> dict[str, list[str]]:
    """Each label folder of the training folder with its files' names."""
    return {
        folder.name: sorted(p.name for p in folder.iterdir())
        for folder in sorted(data.iterdir())
        if folder.is_dir()
    }


@needs_chromium
def test_sort_pictures_with_clicks_a_typed_label_and_shortcuts(label_server, browser, tmp_path):
    # Given the door's snapshots and a training folder with the label "closed"
    page = browser.page(1100, 700)
    url = label_server.url + "label?subject=door"
    # When the page is opened
    assert page.goto(url) == 200
    # Then it shows the door's pictures, newest first, each with its predicted label and score
    assert page.evaluate(GRID) == newest_first(DOOR)
    captions = page.evaluate(
        "[...document.querySelectorAll('#grid figcaption')].map(c => c.textContent)"
    )
    assert captions[0] == "coffee mug 0.772026-11-28 06:09:00"
    assert captions[1] == "tabby, tabby cat 0.952026-11-28 06:08:00"
    # (a picture without a readable sidecar shows its folder's name)
    assert captions[2].startswith("mask2026") and captions[3].startswith("coffee mug2026")
    assert page.wait("[...document.images].every(i => i.complete && i.naturalWidth > 100)")
    # And the subject picker lists the door and its region; the label buttons are the
    # training folder's labels first, then the predicted ones, numbered for the keyboard
    options = page.evaluate("[...document.querySelectorAll('#subject option')].map(o => o.text)")
    assert options == ["door (9)", "door/gate (2)"]
    assert page.evaluate(BUTTONS) == [
        "1closed1",
        "2coffee mugnew",
        "3tabby, tabby catnew",
        "4masknew",
        "5space shuttlenew",
    ]

    # When the first picture is clicked and the third shift-clicked
    page.click(nth(0))
    page.click(nth(2), SHIFT)
    assert page.evaluate(SELECTED) == 3
    assert page.evaluate("document.getElementById('selected').textContent") == "3 selected"
    shot = tmp_path / "label-page.png"
    page.screenshot(shot)
    # And the label "closed" is clicked
    page.click("#labels button[data-label='closed']")
    # Then those three leave the grid, and the rest stay in order
    page.wait(f"{GRID}.length === 6")
    assert page.evaluate(GRID) == newest_first(DOOR)[3:]
    assert "Moved 3" in page.evaluate("document.getElementById('status').textContent")
    # And after a reload they are still gone, and in <data>/closed/, without sidecars
    assert page.goto(url) == 200
    assert page.evaluate(GRID) == newest_first(DOOR)[3:]
    moved = [Path(f).name for f in newest_first(DOOR)[:3]]
    assert training_files(label_server.data) == {"closed": sorted(["earlier.jpg", *moved])}
    for file in newest_first(DOOR)[:3]:
        assert not (label_server.snapshots / file).exists()
        assert not (label_server.snapshots / file).with_suffix(".json").exists()
    assert (label_server.data / "closed" / moved[0]).read_bytes().startswith(b"\xff\xd8")
    assert page.evaluate(BUTTONS)[0] == "1closed4"

    # When a picture is clicked and a new label typed (Enter)
    page.click(nth(0))
    page.click("#label-input")
    page.type("gate open")
    page.press("Enter")
    # Then it moves into <data>/gate open/, and "gate open" gets a button and a number
    page.wait(f"{GRID}.length === 5")
    fourth = Path(newest_first(DOOR)[3]).name
    assert training_files(label_server.data)["gate open"] == [fourth]
    assert page.evaluate(BUTTONS)[:2] == ["1closed4", "2gate open1"]
    assert page.evaluate("document.getElementById('label-input').value") == ""

    # When two pictures are clicked and the key 2 pressed
    page.click(nth(0))
    page.click(nth(1))
    page.press("2")
    # Then they move to the second label, "gate open"
    page.wait(f"{GRID}.length === 3")
    moved = [Path(f).name for f in newest_first(DOOR)[3:6]]
    assert training_files(label_server.data)["gate open"] == sorted(moved)

    # When all are selected (key a) and deleted (Delete)
    page.press("a")
    assert page.evaluate(SELECTED) == 3
    page.press("Delete")
    # Then the door has no pictures left, and none went into the training folder
    page.wait(f"{GRID}.length === 0")
    assert not list((label_server.snapshots / "door").glob("*/*.*"))
    assert sum(len(names) for names in training_files(label_server.data).values()) == 7

    # When the region is chosen in the subject picker
    page.evaluate(
        "(() => { const s = document.getElementById('subject'); s.value = 'door/gate';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    # Then its two pictures are shown
    page.wait(f"{GRID}.length === 2")
    assert page.evaluate(GRID) == newest_first(GATE)
    page.close()
    # And the screenshot taken with three pictures selected rendered
    assert shot.stat().st_size > 20_000
    if target := os.environ.get(SCREENSHOT_VARIABLE):
        save_small_png(shot, Path(target))


def save_small_png(source: Path, target: Path) -> None:
    """Save a screenshot as a 256-colour PNG (the docs' copy stays small)."""
    with Image.open(source) as image:
        image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(target, optimize=True)


@pytest.fixture
def paged_server(tmp_path: Path, jpegs: dict[str, bytes]) -> Iterator[LabelServer]:
    """The door's snapshots served four to a page; an empty training folder not made yet."""
    for snap in DOOR:
        write_snapshot(tmp_path / "snapshots", snap, jpegs)
    with serve(tmp_path / "snapshots", tmp_path / "training", page_size=4) as server:
        yield server


@needs_chromium
def test_on_a_phone_the_grid_fits_and_taps_sort_pictures_page_by_page(paged_server, browser):
    # Given the page on a phone-sized touch screen (390 x 844 CSS pixels), four to a page
    page = browser.page(390, 844, mobile=True, scale=2)
    assert page.goto(paged_server.url + "label") == 200
    # Then the door (the only subject) shows its newest four pictures, in a grid of three
    # columns that fits the screen's width, with buttons big enough for a finger
    assert page.evaluate(GRID) == newest_first(DOOR)[:4]
    assert page.evaluate("innerWidth") == 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    columns = page.evaluate(
        "getComputedStyle(document.getElementById('grid')).gridTemplateColumns.split(' ').length"
    )
    assert columns == 3
    heights = page.evaluate(
        "[...document.querySelectorAll('button')].filter(b => b.offsetParent)"
        ".map(b => b.getBoundingClientRect().height)"
    )
    assert heights and min(heights) >= 44, heights
    assert page.evaluate("document.getElementById('range').textContent") == (
        "1\u20134 of 9, newest first"
    )
    # When "Older" is tapped, then the next four are shown
    page.tap("#older")
    page.wait(f"{GRID}[0] === {json.dumps(newest_first(DOOR)[4])}")
    assert page.evaluate(GRID) == newest_first(DOOR)[4:8]
    # When two pictures are tapped and then a predicted label's button
    page.tap(nth(0))
    page.tap(nth(3))
    assert page.evaluate(SELECTED) == 2
    page.tap("#labels button[data-label='coffee mug']")
    # Then they move into the (new) training folder, and the page shows what is left
    page.wait(f"{GRID}.length === 3")
    chosen = [Path(newest_first(DOOR)[i]).name for i in (4, 7)]
    assert training_files(paged_server.data) == {"coffee mug": sorted(chosen)}
    assert page.evaluate(GRID) == [newest_first(DOOR)[i] for i in (5, 6, 8)]
    page.close()


def call(
    url: str, body: Any = None, *, auth: str | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """GET ``url`` (or POST ``body`` as JSON, or ``raw`` bytes); return status and JSON body."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if auth:
        request.add_header("Authorization", auth)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, text = response.status, response.read()
    except urllib.error.HTTPError as refused:
        status, text = refused.code, refused.read()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


@needs_chromium
def test_the_page_and_its_api_need_the_preview_password(tmp_path, jpegs, browser, monkeypatch):
    # Given a preview with a password and a /label page
    for snap in GATE:
        write_snapshot(tmp_path / "snapshots", snap, jpegs)
    with serve(tmp_path / "snapshots", tmp_path / "training", password="s3cret") as server:
        url = server.url + "label"
        file = GATE[0].file
        # When a client sends no or a wrong password, then the page, its API, its pictures
        # and its moves are refused with 401, and nothing moves
        for auth in (None, basic("labelcast", "wrong")):
            for path in ("", "/api/subjects", "/api/pictures?subject=door/gate", f"/thumb/{file}"):
                assert call(url + urllib.parse.quote(path), auth=auth)[0] == 401, path
            move = {"files": [file], "label": "x"}
            assert call(url + "/api/move", move, auth=auth)[0] == 401
        assert (server.snapshots / file).exists() and not server.data.exists()
        # When Chromium sends the password, then the page works: a picture clicked and a
        # label typed move it
        page = browser.page(headers={"Authorization": basic("labelcast", "s3cret")})
        assert page.goto(url) == 200
        assert page.evaluate(GRID) == newest_first(GATE)
        page.click(f"#grid .pic[data-file='{file}']")
        page.click("#label-input")
        page.type("empty")
        page.click("#new-label button")
        page.wait(f"{GRID}.length === 1")
        assert training_files(server.data) == {"empty": [Path(file).name]}
        page.close()


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side clean-up of ``..``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_names_that_lead_out_of_the_folders_are_refused(label_server, tmp_path):
    # Given a secret picture beside the snapshot folder, and a link to it inside
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8 the secret " + b"x" * 100)
    link_folder = label_server.snapshots / "door" / "linked"
    link_folder.mkdir()
    (link_folder / "20261128T070000.000Z.jpg").symlink_to(secret)
    port = label_server.sink.preview_address[1]
    # When a client asks for it by a path with .. (plain or %-encoded), or through the link
    for path in (
        "/label/picture/../secret.jpg",
        "/label/picture/door/../../secret.jpg",
        "/label/thumb/%2e%2e/secret.jpg",
        "/label/picture/door/tabby%2C%20tabby%20cat/..%2F..%2F..%2Fsecret.jpg",
        "/label/picture/%2Ftmp%2Fsecret.jpg",
        "/label/picture/door/linked/20261128T070000.000Z.jpg",
        "/label/api/pictures?subject=..",
        "/label/api/pictures?subject=door/../..",
    ):
        status, body = raw_get(port, path)
        # Then it is refused with a message, and never sent the file
        assert status in (400, 404), (path, status)
        assert b"the secret" not in body, path
        assert "error" in json.loads(body), path
    # And a move of it, or of a file out of the folder, is refused and moves nothing
    url = label_server.url + "label/api/move"
    for file in ("door/linked/20261128T070000.000Z.jpg", "../secret.jpg", "door/../../secret.jpg"):
        status, answer = call(url, {"files": [file], "label": "stolen"})
        assert status == 400, (file, answer)
        assert "snapshot folder" in answer["error"], answer
    assert secret.exists() and not (label_server.data / "stolen").exists()
    # And a picture inside is served, full size and as a thumbnail
    status, body = raw_get(port, "/label/picture/" + urllib.parse.quote(DOOR[0].file))
    assert status == 200 and body == (label_server.snapshots / DOOR[0].file).read_bytes()
    status, body = raw_get(port, "/label/thumb/" + urllib.parse.quote(DOOR[0].file))
    with Image.open(io.BytesIO(body)) as thumb:
        assert status == 200 and thumb.format == "JPEG" and max(thumb.size) <= 320


def test_bad_moves_get_400_with_a_clear_message(label_server):
    url = label_server.url + "label/api/move"
    file = DOOR[0].file
    for body, expected in (
        ({"files": [file], "label": "a/b"}, "not allowed"),
        ({"files": [file], "label": ".hidden"}, "not allowed"),
        ({"files": [file], "label": ".."}, "not allowed"),
        ({"files": [file], "label": "   "}, "empty"),
        ({"files": [file], "label": " padded"}, "spaces"),
        ({"files": [file], "label": "tab\there"}, "control"),
        ({"files": [file], "label": "x" * 201}, "200 bytes"),
        ({"files": [file], "label": 3}, "label: expected a string"),
        ({"files": [], "label": "a"}, "select at least one"),
        ({"files": file, "label": "a"}, "files: expected a list"),
        ({"files": [file, file], "label": "a"}, "twice"),
        ({"files": [file]}, "missing field(s): label"),
        ({"files": [file], "label": "a", "force": True}, "unknown field(s): force"),
        ({"files": ["door/x.jpg"], "label": "a"}, "not a snapshot picture"),
        ({"files": ["door/cup/x.png"], "label": "a"}, "not a snapshot picture"),
        ([file], "JSON object"),
    ):
        status, answer = call(url, body)
        assert status == 400, (body, answer)
        assert expected in answer["error"], (body, answer)
    status, answer = call(url, raw=b"{not json")
    assert status == 400 and "not JSON" in answer["error"]
    # A body that is not sent as JSON is refused (a form on another site cannot send JSON)
    request = urllib.request.Request(url, data=b"files=x", method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 415
    # Nothing moved, and the training folder holds only what it had
    assert (label_server.snapshots / file).exists()
    assert training_files(label_server.data) == {"closed": ["earlier.jpg"]}
    # A picture that is not there (moved already) is 409, naming it
    status, answer = call(url, {"files": ["door/cup/20990101T000000.000Z.jpg"], "label": "a"})
    assert status == 409 and answer["gone"] == ["door/cup/20990101T000000.000Z.jpg"]
    # An unknown subject is 404; a page past the end is empty; the page size is the cap
    assert call(label_server.url + "label/api/pictures?subject=garage")[0] == 404
    status, answer = call(label_server.url + "label/api/pictures?subject=door&offset=50")
    assert status == 200 and answer["pictures"] == [] and answer["total"] == 9
    status, answer = call(label_server.url + "label/api/pictures?subject=door&limit=x")
    assert status == 400 and "limit" in answer["error"]


def test_a_picture_moved_by_many_at_once_lands_once(label_server):
    # Given eight clients that move the same picture at the same moment, to two labels
    url = label_server.url + "label/api/move"
    file = DOOR[0].file
    start = threading.Barrier(8)
    statuses: list[int] = []

    def move(label: str) -> None:
        start.wait()
        statuses.append(call(url, {"files": [file], "label": label})[0])

    threads = [threading.Thread(target=move, args=("ab"[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # Then one move succeeds, the others are told it was gone (409, not a 500), and the
    # picture is in exactly one label folder
    assert sorted(statuses) == [200] + [409] * 7, statuses
    landed = [p for p in label_server.data.glob("*/*") if p.name == Path(file).name]
    assert len(landed) == 1 and not (label_server.snapshots / file).exists()
    # And a delete of a picture already gone is 409 as well
    assert call(label_server.url + "label/api/delete", {"files": [file]})[0] == 409


def test_a_picture_keeps_its_name_and_a_taken_name_gets_a_number(label_server):
    # Given a picture whose name is already in the label folder (from another subject)
    (label_server.data / "closed" / Path(DOOR[0].file).name).write_bytes(b"older")
    status, answer = call(
        label_server.url + "label/api/move", {"files": [DOOR[0].file], "label": "closed"}
    )
    # Then it is moved beside it under a numbered name; the older file is kept
    stem = Path(DOOR[0].file).stem
    assert status == 200 and answer["done"] == [
        {"file": DOOR[0].file, "to": f"closed/{stem}-2.jpg"}
    ]
    assert (label_server.data / "closed" / f"{stem}.jpg").read_bytes() == b"older"


def test_without_a_label_block_the_page_is_404(tmp_path):
    config = OverlaySinkConfig(preview={"bind": "127.0.0.1:0"})
    sink = OverlaySink(config)
    try:
        assert sink.preview_address is not None
        url = f"http://127.0.0.1:{sink.preview_address[1]}/label"
        status, answer = call(url)
        assert status == 404 and "preview.label" in answer["error"]
        assert call(url + "/api/move", {"files": ["a/b/c.jpg"], "label": "x"})[0] == 404
    finally:
        sink.close()


def test_label_block_is_checked(tmp_path):
    # The block rejects unknown keys and needs both folders
    with pytest.raises(ValueError, match="data"):
        OverlaySinkConfig(preview={"label": {"snapshots": "s"}})
    with pytest.raises(ValueError, match="extra"):
        OverlaySinkConfig(preview={"label": {"snapshots": "s", "data": "d", "dir": "x"}})
    # And `labelcast check` names a training folder that cannot be written
    blocker = tmp_path / "file"
    blocker.write_text("")
    config = OverlaySinkConfig(
        preview={"label": {"snapshots": str(tmp_path), "data": str(blocker / "training")}}
    )
    problems = OverlaySink.check(config)
    assert any("preview.label.data" in p and str(blocker) in p for p in problems), problems


def post_with(port: int, headers: dict[str, str], body: dict[str, Any]) -> int:
    """POST a move with exactly these headers (as a browser on another site would)."""
    data = json.dumps(body).encode()
    head = "".join(f"{key}: {value}\r\n" for key, value in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(
            f"POST /label/api/move HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        return int(connection.recv(65536).split()[1])


def test_other_web_sites_cannot_move_pictures(label_server):
    # Given the page's server, without a password, on the loopback
    port = label_server.sink.preview_address[1]
    host = f"127.0.0.1:{port}"
    move = {"files": [DOOR[0].file], "label": "stolen"}
    # When a page of another site (or a rebound name) posts a move through the browser
    for headers in (
        {"Host": host, "Sec-Fetch-Site": "cross-site"},
        {"Host": host, "Origin": "http://evil.example"},
        {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"},
    ):
        # Then it is refused, and nothing moves
        assert post_with(port, headers, move) == 403, headers
    assert (label_server.snapshots / DOOR[0].file).exists()
    # And the page's own origin may
    headers = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
    assert post_with(port, headers, move) == 200
