"""A sink that hands events to Python code embedding labelcast (see ``Pipeline``)."""

from __future__ import annotations

from collections.abc import Callable

from labelcast.frames import ChangeEvent, Frame, LabelEvent, LabelState, StreamStatus
from labelcast.sinks.base import LocalSink


class CallbackSink(LocalSink):
    """Calls functions with each event and each change on the sink's thread; lossless.

    ``callback`` gets every ``LabelEvent``; ``on_change`` (optional) gets every
    ``ChangeEvent`` with the stream's new ``LabelState``. Either may be None.
    """

    lossless = True
    all_frames = False

    def __init__(
        self,
        callback: Callable[[LabelEvent], object] | None,
        name: str = "callback",
        *,
        on_change: Callable[[ChangeEvent, LabelState], object] | None = None,
    ) -> None:
        self.name = name
        self._callback = callback
        self._on_change = on_change

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Call the callback with the event."""
        if self._callback is not None:
            self._callback(event)

    def send_status(self, status: StreamStatus) -> None:
        """Stream states are not label events: this sink ignores them."""

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Call ``on_change`` with the change and the new state."""
        if self._on_change is not None:
            self._on_change(change, state)

    def close(self) -> None:
        """Nothing to release."""
