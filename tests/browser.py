"""Drive headless Chromium through the DevTools protocol: load pages, click, tap, type, screenshot.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol commands from
file descriptor 3 and writes answers and events to descriptor 4, each a JSON object
ended by a NUL byte. No WebSocket library and no network port are needed; the clicks
and key presses are real input events that go through Chromium's event handling, as a
user's would.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from helpers import needs

CHROMIUM = "/usr/bin/chromium"
# What every headless run passes: no sandbox (tests may run as root), no GPU, nothing
# fetched from the network behind the tests' back.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
needs_chromium = needs(
    "chromium", None if Path(CHROMIUM).exists() else f"{CHROMIUM} not found (Debian's chromium)"
)
SHIFT = 8  # the protocol's modifier bit for Shift

_KEYS = {
    "Escape": ("Escape", 27),
    "Delete": ("Delete", 46),
    "Enter": ("Enter", 13),
}


def _above_4(fd: int) -> int:
    """A duplicate of ``fd`` numbered 10 or more (the original is closed)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class BrowserError(Exception):
    """Chromium answered a command with an error, or did not answer in time."""


class Browser:
    """One headless Chromium process; ``page()`` opens a tab to drive."""

    def __init__(self, profile: Path) -> None:
        to_chromium_read, self._to_chromium = os.pipe()
        self._from_chromium, from_chromium_write = os.pipe()
        # Above 4, so that the redirections below never overwrite one with the other.
        to_chromium_read, from_chromium_write = (
            _above_4(to_chromium_read),
            _above_4(from_chromium_write),
        )
        # bash (dash takes no fd over 9) puts the pipes where Chromium looks for them (fds 3 and 4).
        self.process = subprocess.Popen(
            [
                "/bin/bash",
                "-c",
                f'exec "$0" "$@" 3<&{to_chromium_read} 4>&{from_chromium_write}',
                CHROMIUM,
                *HEADLESS_FLAGS,
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            pass_fds=(to_chromium_read, from_chromium_write),
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("BROWSER_DEBUG") else subprocess.DEVNULL,
        )
        os.close(to_chromium_read)
        os.close(from_chromium_write)
        self._ids = iter(range(1, 1 << 62))
        self._lock = threading.Lock()
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="test-chromium", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_chromium, 1 << 20):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        answer = self._answers.pop(message["id"], None)
                    if answer is not None:
                        answer.put(message)
                else:
                    self.events.put(message)

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout: float = 30,
    ) -> dict[str, Any]:
        """Send one protocol command and return its result."""
        answer: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            number = next(self._ids)
            self._answers[number] = answer
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_chromium, json.dumps(message).encode() + b"\0")
        try:
            reply = answer.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{method}: no answer in {timeout} s") from None
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    def page(
        self,
        width: int = 1280,
        height: int = 800,
        *,
        mobile: bool = False,
        scale: float = 1,
        headers: dict[str, str] | None = None,
    ) -> Page:
        """Open a tab with this viewport (``mobile``: a phone's, with touch)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        page = Page(self, session, target)
        page.send("Page.enable")
        page.send("Runtime.enable")
        page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile},
        )
        if mobile:
            page.send("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
        if headers:
            page.send("Network.enable")
            page.send("Network.setExtraHTTPHeaders", {"headers": headers})
        return page

    def close(self) -> None:
        """Ask Chromium to quit; kill it if it does not."""
        with contextlib.suppress(BrowserError, OSError):
            self.send("Browser.close", timeout=10)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chromium)
        self._reader.join(5)
        os.close(self._from_chromium)


class Page:
    """One tab: navigate, evaluate JavaScript, click, tap, press keys, screenshot."""

    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser, self.session, self.target = browser, session, target

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def goto(self, url: str, ready: str = "document.body.dataset.ready === '1'") -> int:
        """Load ``url``, wait until the JavaScript ``ready`` is true; return the HTTP status."""
        self.evaluate("delete document.body.dataset.ready")
        self.send("Page.navigate", {"url": url})
        self.wait(ready)
        return int(self.evaluate("performance.getEntriesByType('navigation')[0].responseStatus"))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 15) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                value = None  # e.g. the page is still loading
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"waited {timeout} s for {expression}")
            time.sleep(0.05)

    def centre(self, selector: str) -> tuple[float, float]:
        """The viewport position of an element's centre, scrolled into view."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        if box is None:
            raise BrowserError(f"no element matches {selector}")
        return float(box[0]), float(box[1])

    def click(self, selector: str, modifiers: int = 0) -> None:
        """Click an element with the mouse (``modifiers``: e.g. SHIFT)."""
        x, y = self.centre(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {
                    "type": kind,
                    "x": x,
                    "y": y,
                    "button": "none" if kind == "mouseMoved" else "left",
                    "clickCount": 0 if kind == "mouseMoved" else 1,
                    "modifiers": modifiers,
                },
            )

    def tap(self, selector: str) -> None:
        """Tap an element with a finger (touch events, as on a phone)."""
        x, y = self.centre(selector)
        self.send(
            "Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]}
        )
        self.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})

    def press(self, key: str) -> None:
        """Press and release a key: a character (``"1"``, ``"a"``) or Escape, Delete, Enter."""
        if key in _KEYS:
            code, virtual = _KEYS[key]
            text = "\r" if key == "Enter" else ""
        else:
            code = f"Digit{key}" if key.isdigit() else f"Key{key.upper()}"
            virtual, text = ord(key.upper()), key
        common = {"key": key, "code": code, "windowsVirtualKeyCode": virtual}
        self.send("Input.dispatchKeyEvent", {"type": "keyDown", "text": text, **common})
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", **common})

    def type(self, text: str) -> None:
        """Type text into the focused element."""
        self.send("Input.insertText", {"text": text})

    def screenshot(self, path: Path) -> None:
        """Save the viewport as a PNG."""
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.browser.send("Target.closeTarget", {"targetId": self.target})
