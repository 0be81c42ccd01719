"""A sink that hands events to Python code embedding labelcast (see ``Pipeline``)."""

from __future__ import annotations

from collections.abc import Callable

from labelcast.pipeline.frames import Frame, LabelEvent, StreamStatus


class CallbackSink:
    """Calls a function with each event on the sink's thread; lossless."""

    lossless = True

    def __init__(self, callback: Callable[[LabelEvent], object], name: str = "callback") -> None:
        self.name = name
        self._callback = callback

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Call the callback with the event."""
        self._callback(event)

    def send_status(self, status: StreamStatus) -> None:
        """Stream states are not label events: this sink ignores them."""

    def close(self) -> None:
        """Nothing to release."""
