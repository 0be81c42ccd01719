"""USB and other V4L2 cameras (``/dev/videoN``), read with FFmpeg's v4l2 input through PyAV.

A camera that is unplugged, busy or missing at start is retried with backoff like
any live stream; the device is opened by one connection at a time.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, model_validator

from labelcast.redact import Redactor
from labelcast.sources.base import StatusCallback
from labelcast.sources.live import Connection, LiveSourceConfigBase
from labelcast.sources.stream import OptionValue, PyAVLiveSource, ffmpeg_options


class CameraSourceConfig(LiveSourceConfigBase):
    """A V4L2 camera: a device path or index, with the picture size and rate to ask for."""

    type: Literal["camera"] = "camera"
    device: Annotated[
        str | int,
        Field(description="Device path (/dev/video0) or index (0 means /dev/video0)."),
    ] = 0
    width: Annotated[
        int | None, Field(ge=1, le=16384, description="Picture width to ask for (pixels).")
    ] = None
    height: Annotated[
        int | None, Field(ge=1, le=16384, description="Picture height to ask for (pixels).")
    ] = None
    fps: Annotated[float | None, Field(gt=0, le=1000, description="Frame rate to ask for.")] = None
    input_format: Annotated[
        str | None,
        Field(description="Pixel format to ask the camera for, e.g. mjpeg or yuyv422."),
    ] = None
    open_timeout_s: Annotated[
        float, Field(gt=0, le=300, description="Longest wait for the device to open (s).")
    ] = 10.0
    read_timeout_s: Annotated[
        float, Field(gt=0, le=300, description="Longest wait for a frame once open (s).")
    ] = 5.0
    options: Annotated[
        dict[str, OptionValue],
        Field(
            default_factory=dict,
            description="More FFmpeg v4l2 input options; they override labelcast's.",
        ),
    ]

    @model_validator(mode="after")
    def _size_whole(self) -> CameraSourceConfig:
        if (self.width is None) != (self.height is None):
            raise ValueError("set width and height together")
        return self

    @property
    def device_path(self) -> str:
        """The device node: an index ``N`` means ``/dev/videoN``."""
        if isinstance(self.device, int) or self.device.isdigit():
            return f"/dev/video{int(self.device)}"
        return self.device


class CameraSource(PyAVLiveSource):
    """Frames from a V4L2 camera; reconnects when it is unplugged, stalls or is busy."""

    # A V4L2 device opens once: a new connection waits for the old one to let go.
    _exclusive = True

    def __init__(
        self,
        config: CameraSourceConfig,
        on_status: StatusCallback | None = None,
    ) -> None:
        options: dict[str, OptionValue] = {}
        if config.width is not None and config.height is not None:
            options["video_size"] = f"{config.width}x{config.height}"
        if config.fps is not None:
            options["framerate"] = f"{config.fps:g}"
        if config.input_format is not None:
            options["input_format"] = config.input_format
        options.update(config.options)
        super().__init__(
            config,
            on_status,
            location=config.device_path,
            input_format="v4l2",
            options=ffmpeg_options(options),
            decode="all",
            open_timeout_s=config.open_timeout_s,
            read_timeout_s=config.read_timeout_s,
            redactor=Redactor(),
        )
        self.device = config.device_path

    def _target(self) -> str:
        return f"camera {self.device}"

    def _connect(self, conn: Connection) -> None:
        # FFmpeg's "No such file or directory" does not say which file; this does.
        if not os.path.exists(self.device):
            conn.finish(f"camera {self.device} not found (no such device)")
            return
        super()._connect(conn)
