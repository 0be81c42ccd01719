"""The log sink: label events (and, if asked, change events) as JSON Lines, to a file or stdout."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field

from labelcast.errors import SinkError
from labelcast.frames import ChangeEvent, Frame, LabelEvent, LabelState, StreamStatus
from labelcast.sinks.base import LocalSink
from labelcast.util.paths import ensure_folder, writable_folder


class LogSinkConfig(BaseModel):
    """Write every label event as one JSON line."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["log"] = "log"
    path: Annotated[
        str, Field(description='File to append JSON Lines to; "-" writes to stdout.')
    ] = "-"
    events: Annotated[
        bool,
        Field(
            description="Also write change events (labelcast.change/1) as lines of their own, "
            "in order with the label events."
        ),
    ] = False


class LogSink(LocalSink):
    """Appends one JSON line per event; lossless (the pipeline waits for a slow writer)."""

    lossless = True
    all_frames = False

    @staticmethod
    def check(config: LogSinkConfig) -> list[str]:
        """Tell ``labelcast check`` whether the file can be written (stdout always can)."""
        if config.path != "-" and not writable_folder(Path(config.path).parent):
            return [f"log sink: {config.path} is not writable"]
        return []

    def __init__(self, config: LogSinkConfig) -> None:
        self.name = f"log:{config.path}"
        self._changes = config.events
        self._owns_stream = config.path != "-"
        self._stream: TextIO
        if self._owns_stream:
            path = Path(config.path)
            try:
                ensure_folder(path.parent)
                self._stream = path.open("a", encoding="utf-8")
            except OSError as exc:
                raise SinkError(f"log sink: cannot open {config.path} for writing ({exc})") from exc
        else:
            self._stream = sys.stdout

    def send(self, event: LabelEvent, frame: Frame) -> None:
        """Write the event as one line and flush it, so a reader sees whole lines."""
        self._write(event.to_json())

    def send_change(self, change: ChangeEvent, state: LabelState) -> None:
        """Write the change event as one line if the config says ``events: true``.

        The state is not written: it is the change's ``label``, ``score`` and ``since``.
        """
        if self._changes:
            self._write(change.to_json())

    def _write(self, line: str) -> None:
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:
            raise SinkError(f"{self.name}: write failed ({exc})") from exc

    def send_status(self, status: StreamStatus) -> None:
        """Stream states are not label events: this sink ignores them."""

    def close(self) -> None:
        """Flush, and close the file if the sink opened one."""
        try:
            self._stream.flush()
        finally:
            if self._owns_stream:
                self._stream.close()
