"""Reloads hand outbox files over within one process: who holds each file, and the window.

A reload opens its new sinks, switches events to them and closes the sinks they replace,
all inside :func:`hand_over`. An outbox opened in that window on a file this process
already holds waits for the holder to close and then takes its connection over.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from labelcast.sinks.outbox.outbox import Outbox

# The outbox that holds each file this process has open (by resolved path).
HOLDERS: dict[Path, Outbox] = {}
HOLDERS_LOCK = threading.Lock()


@dataclass
class HandOverWindow:
    """What to call when one :func:`hand_over` block ends: each waiting outbox's give-up."""

    on_end: list[Callable[[], None]] = field(default_factory=list)


_WINDOW: contextvars.ContextVar[HandOverWindow | None] = contextvars.ContextVar(
    "labelcast_outbox_hand_over", default=None
)


def current_window() -> HandOverWindow | None:
    """Return the hand-over window open on this thread, or None outside one."""
    return _WINDOW.get()


@contextlib.contextmanager
def hand_over() -> Iterator[None]:
    """Let outboxes opened in this block (on this thread) take over files this process holds.

    A reload opens its new sinks, switches events to them and closes the sinks they
    replace, all inside the block. An outbox whose holder did not close by the end
    of the block was no successor (two sinks of the pipeline share one file): from
    then on its ``put`` raises SinkError instead of waiting.
    """
    window = HandOverWindow()
    token = _WINDOW.set(window)
    try:
        yield
    finally:
        _WINDOW.reset(token)
        for give_up in window.on_end:
            give_up()
