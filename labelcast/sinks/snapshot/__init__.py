"""The snapshot sink: pictures worth labelling, as JPEG with a JSON sidecar (docs/teach.md).

``config`` holds the model (no Pillow), ``folder`` the files on disk and their bound,
``sink`` the Sink itself. Pillow loads with the first picture saved, not on import.
"""

from __future__ import annotations

from labelcast.sinks.snapshot.config import SnapshotReason, SnapshotSinkConfig
from labelcast.sinks.snapshot.sink import SnapshotSink

__all__ = ["SnapshotReason", "SnapshotSink", "SnapshotSinkConfig"]
