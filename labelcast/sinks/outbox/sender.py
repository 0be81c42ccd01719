"""What the delivering sinks (mqtt, webhook) share around the thread that sends their outbox.

Each has an outbox and a *sender* thread (the MQTT publisher, the webhook deliverer).
:class:`OutboxSink` gives such a sink its health members (read by readiness and the
metrics), and :func:`close_outbox` closes it the same way for both: keep sending what
the outbox holds for up to ``drain_timeout_s`` (unless a reload's new sink takes the
outbox over), stop the sender, log the totals, leave what is still waiting for the
next start.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from labelcast.sinks.outbox.outbox import Outbox
from labelcast.util.paths import writable_folder

log = logging.getLogger(__name__)

# How often the drain looks whether the outbox has emptied.
_POLL_S = 0.05


class Sender(Protocol):
    """The thread that empties a sink's outbox; ``rejected`` counts what the receiver refused."""

    rejected: int

    @property
    def connected(self) -> bool:
        """Whether it can deliver now: its receiver answers and its thread runs."""
        ...

    @property
    def problem(self) -> str | None:
        """Why it cannot deliver now (a dead thread, the last failed attempt), or None."""
        ...


class OutboxSink:
    """The health members of a sink that delivers through ``outbox`` with a sender thread."""

    outbox: Outbox

    @property
    def sender(self) -> Sender:
        """The thread that sends the outbox (each sink returns its own)."""
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        """Whether the sender can deliver now: its receiver answers and its thread runs."""
        return self.sender.connected

    @property
    def problem(self) -> str | None:
        """Why nothing is delivered now: a dead sender thread, its last failed attempt."""
        return self.sender.problem

    @property
    def backlog(self) -> int:
        """Messages in the outbox that the receiver has not acknowledged."""
        return self.outbox.pending

    @property
    def rejected(self) -> int:
        """Messages the receiver took and refused for good: dropped, counted, logged."""
        return self.sender.rejected


def close_outbox(
    outbox: Outbox,
    *,
    name: str,
    receiver: str,
    timeout_s: float,
    sending: Callable[[], bool],
    stop: Callable[[], bool],
    summary: Callable[[], str],
) -> None:
    """Drain ``outbox`` for up to ``timeout_s``, ``stop()`` the sender, then close the outbox.

    ``sending()`` says whether the sender can still send (its thread alive, ...);
    ``stop()`` ends it and returns False if it did not end in time: the outbox is then
    left open, since the sender may still use it (what it holds is safe on disk).
    ``summary()`` is the totals logged once the sender has stopped; ``receiver`` names
    who acknowledges (``the broker``).
    """
    deadline = time.monotonic() + timeout_s
    waiting = outbox.pending
    # On a reload the new sink that takes the outbox over sends what it holds.
    handing_over = outbox.handing_over
    draining = sending() and not handing_over
    if waiting and draining and timeout_s > 0:
        log.info(
            "%s: waiting up to %g s for %s to take %d message(s)",
            name,
            timeout_s,
            receiver,
            waiting,
        )
    while draining and outbox.pending and time.monotonic() < deadline and sending():
        time.sleep(_POLL_S)
    if not stop():
        log.warning("%s: the sender did not stop in time", name)
        return
    log.info("%s: %s", name, summary())
    left = outbox.pending
    if left and not handing_over:
        log.warning(
            "%s: %d message(s) not acknowledged stay in the outbox %s; they are sent on the "
            "next start",
            name,
            left,
            outbox.path,
        )
    outbox.close()


def check_delivery(name: str, path: Path, probe: Callable[[], tuple[bool, str]]) -> list[str]:
    """Return what ``labelcast check`` finds of a delivering sink: outbox folder, receiver.

    ``probe()`` connects once and returns (reachable, message); a reachable receiver's
    message is logged, an unreachable one's is a problem.
    """
    problems = []
    if not writable_folder(path.parent):
        problems.append(f"{name}: the outbox {path} is not writable")
    ok, message = probe()
    if ok:
        log.info("%s", message)
    else:
        problems.append(message)
    return problems
