"""systemd's notify protocol (``NOTIFY_SOCKET``), spoken directly: no systemd dependency.

``Notifier`` sends ``READY=1``, ``STOPPING=1`` and status lines; ``Watchdog`` pings
``WATCHDOG=1`` on a thread of its own, but only while a liveness check passes, so a
hung pipeline stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to ``$NOTIFY_SOCKET``; does nothing when it is unset."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._address: str | None = None
        self._socket: socket.socket | None = None
        if address:
            # A leading "@" names a socket in the abstract namespace.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured."""
        return self._socket is not None

    def notify(self, message: str) -> None:
        """Send one message (e.g. ``READY=1``); a failure is logged, never raised."""
        if self._socket is None or self._address is None:
            return
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            log.warning("systemd notify %r failed: %s", message, exc)

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_interval_s() -> float | None:
    """Half of systemd's ``WATCHDOG_USEC`` (the recommended ping interval), if it is for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval_s`` while ``alive()`` returns (True, reason)."""

    def __init__(
        self,
        notifier: Notifier,
        alive: Callable[[], tuple[bool, str]],
        interval_s: float,
    ) -> None:
        self._notifier = notifier
        self._alive = alive
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="systemd-watchdog", daemon=True)

    def start(self) -> None:
        """Start pinging."""
        self._thread.start()

    def stop(self) -> None:
        """Stop pinging and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        withheld = False
        while not self._stop.wait(self._interval_s):
            ok, reason = self._alive()
            if ok:
                self._notifier.notify("WATCHDOG=1")
                withheld = False
            elif not withheld:
                withheld = True
                log.error("not pinging the systemd watchdog: %s", reason)
