"""The overlay sink's config: files (path template, rotation, x264), the preview, drawing.

Pydantic models only: ``labelcast.config`` builds the sinks' union from them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from labelcast.util.http import BindAddress


class RotateConfig(BaseModel):
    """When an annotated file is closed and the next one begun."""

    model_config = ConfigDict(extra="forbid")

    max_seconds: Annotated[
        float | None,
        Field(gt=0, description="Start a new file after this many seconds of stream time."),
    ] = 3600.0
    max_bytes: Annotated[
        int | None,
        Field(gt=0, description="Start a new file once this many bytes of video are written."),
    ] = None


class LabelPageConfig(BaseModel):
    """The preview's /label page: sort collected snapshots into a training folder."""

    model_config = ConfigDict(extra="forbid")

    snapshots: Annotated[
        str,
        Field(
            min_length=1,
            description="The snapshot sink's folder (`<subject>/<predicted label>/<time>.jpg`, "
            "each with a `.json` sidecar) whose pictures the page shows; pictures sorted or "
            "deleted on the page leave it.",
        ),
    ]
    data: Annotated[
        str,
        Field(
            min_length=1,
            description="The training folder the page moves pictures into, as "
            "`<data>/<label>/<time>.jpg` (what `labelcast train` reads); made when needed.",
        ),
    ]
    page_size: Annotated[
        int,
        Field(ge=1, le=500, description="Most pictures the page shows at once (it pages)."),
    ] = 60


class PreviewConfig(BaseModel):
    """The live preview: an index page and an MJPEG view per stream (and /label, if set)."""

    model_config = ConfigDict(extra="forbid")

    bind: Annotated[
        BindAddress,
        Field(
            description="host:port (or [ipv6]:port) to listen on; keep 127.0.0.1 unless a "
            "password is set and the network is trusted (the preview shows the cameras' "
            "pictures).",
        ),
    ] = "127.0.0.1:8090"
    username: Annotated[
        str, Field(min_length=1, description="User name for basic auth (with `password`).")
    ] = "labelcast"
    password: Annotated[
        SecretStr | None,
        Field(
            description="Require basic auth with this password; write it as ${ENV_VAR}, "
            "never inline. Without it the preview is open to whoever reaches `bind`."
        ),
    ] = None
    jpeg_quality: Annotated[
        int, Field(ge=1, le=95, description="JPEG quality of the preview pictures.")
    ] = 80
    max_clients: Annotated[
        int,
        Field(ge=1, le=256, description="Viewers served at once; more get 503."),
    ] = 8
    max_fps: Annotated[
        float,
        Field(
            gt=0,
            le=30,
            description="Most pictures per second and stream the preview encodes and sends "
            "(each encoded once, whatever the number of viewers).",
        ),
    ] = 5.0
    client_timeout_s: Annotated[
        float,
        Field(gt=0, description="A viewer that reads nothing for this long is disconnected."),
    ] = 10.0
    label: Annotated[
        LabelPageConfig | None,
        Field(
            description="Serve /label, a page that sorts the snapshot sink's pictures into a "
            "training folder (same address and password); omit for none."
        ),
    ] = None


class OverlaySinkConfig(BaseModel):
    """Draw labels on the classified frames; write them to files and/or a live preview."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["overlay"] = "overlay"
    output: Annotated[
        str | None,
        Field(
            description="Path template of the annotated H.264 MP4 files, with {stream} and "
            "{date} (UTC start time of the file, e.g. 20261128T060000.123Z), e.g. "
            '"out/{stream}/{date}.mp4"; omit for no files.'
        ),
    ] = None
    mode: Annotated[
        Literal["sampled", "all-frames"],
        Field(
            description="Which frames the files hold: `sampled`, each classified frame (at "
            "the sampled rate); `all-frames`, every decoded frame with the stream's latest "
            "label (each frame is then colour-converted, drawn and encoded: much more CPU). "
            "The preview shows classified frames either way."
        ),
    ] = "sampled"
    max_buffered_frames: Annotated[
        int,
        Field(
            ge=1,
            le=10_000,
            description="all-frames: most unsampled frames of a live stream held while the "
            "label before them is computed (a 720p frame takes 1.4 MB); beyond it the oldest "
            "is dropped and counted. Files feeding a lossless sink wait for it instead.",
        ),
    ] = 120
    rotate: Annotated[
        RotateConfig, Field(description="When to close a file and begin the next.")
    ] = RotateConfig()
    preset: Annotated[
        Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"],
        Field(description="x264 speed preset: faster presets cost less CPU, more bytes."),
    ] = "veryfast"
    crf: Annotated[
        int, Field(ge=0, le=51, description="x264 constant rate factor (lower is better).")
    ] = 23
    preview: Annotated[
        PreviewConfig | None,
        Field(description="Serve a live preview over HTTP; omit for none."),
    ] = None
    top_k: Annotated[
        int, Field(ge=1, le=10, description="How many of the event's labels are drawn.")
    ] = 3
    highlight_s: Annotated[
        float,
        Field(
            ge=0,
            description="How long (stream time) frames stay highlighted after a change of "
            "the stream's label.",
        ),
    ] = 2.0
    lossless: Annotated[
        bool,
        Field(
            description="Wait for this sink when it is behind instead of dropping frames "
            "(files keep every classified frame, but a slow disk then slows classification)."
        ),
    ] = False

    @model_validator(mode="after")
    def _has_an_output(self) -> OverlaySinkConfig:
        if self.output is None and self.preview is None:
            raise ValueError("set `output`, `preview` or both")
        if self.mode == "all-frames" and self.output is None:
            raise ValueError("mode all-frames is for files: set `output`")
        if self.output is not None:
            if "{stream}" not in self.output:
                raise ValueError("output: the path must contain {stream}")
            try:
                self.output.format(stream="s", date="d")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    f"output: only {{stream}} and {{date}} may be used ({exc!r})"
                ) from exc
        return self
