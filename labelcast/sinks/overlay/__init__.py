"""The overlay sink: labels drawn on the classified frames, to H.264 files and a live preview.

``config`` holds the models, ``drawing`` the banner, ``recording`` the MP4 files (PyAV),
``preview`` and ``preview_http`` the live preview (its page is ``preview.html``),
``label_store`` and ``label_http`` its /label page (``label.html``) that sorts snapshots
into a training folder, and ``sink`` the Sink itself. PyAV, NumPy and Pillow load when
frames are drawn or written.
"""

from __future__ import annotations

from labelcast.sinks.overlay.config import (
    LabelPageConfig,
    OverlaySinkConfig,
    PreviewConfig,
    RotateConfig,
)
from labelcast.sinks.overlay.drawing import Highlight, describe_change, draw_overlay
from labelcast.sinks.overlay.sink import OverlaySink

__all__ = [
    "Highlight",
    "LabelPageConfig",
    "OverlaySink",
    "OverlaySinkConfig",
    "PreviewConfig",
    "RotateConfig",
    "describe_change",
    "draw_overlay",
]
