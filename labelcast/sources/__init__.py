"""Source adapters, one module per source kind, and the registry of kinds.

``SOURCE_CONFIGS`` lists every kind's config model (each with ``type: Literal[...]``;
config.py builds its discriminated union from it) and ``source_class(kind)`` returns the
class that makes sources of a kind. Importing this package loads no PyAV, NumPy-heavy
decoder or aiortc: each adapter imports those when a source opens.
"""

from __future__ import annotations

from labelcast.sources.base import SourceClass, SourceConfigBase
from labelcast.sources.camera import CameraSource, CameraSourceConfig
from labelcast.sources.file import FileSource, FileSourceConfig
from labelcast.sources.stream import (
    RtspSource,
    RtspSourceConfig,
    StreamSource,
    StreamSourceConfig,
)
from labelcast.sources.webrtc import WebRTCSource, WebRTCSourceConfig

# In the order config.py's union (and so ``labelcast schema``) lists them.
SOURCE_CONFIGS: tuple[type[SourceConfigBase], ...] = (
    FileSourceConfig,
    RtspSourceConfig,
    StreamSourceConfig,
    CameraSourceConfig,
    WebRTCSourceConfig,
)

_CLASSES: dict[str, SourceClass] = {
    "file": FileSource,
    "rtsp": RtspSource,
    "stream": StreamSource,
    "camera": CameraSource,
    "webrtc": WebRTCSource,
}


def source_class(kind: str) -> SourceClass:
    """Return the class of sources of type ``kind`` (a config's ``type``).

    Raises KeyError for a kind no adapter serves (config validation rules that out).
    """
    return _CLASSES[kind]


__all__ = ["SOURCE_CONFIGS", "SourceClass", "SourceConfigBase", "source_class"]
