"""The snapshot sink's config: where pictures go, which ones, and how many are kept.

A pydantic model only (no Pillow, no I/O): ``labelcast.config`` builds the sinks' union
from it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SnapshotReason = Literal["change", "low_score", "interval"]


class SnapshotSinkConfig(BaseModel):
    """Save pictures worth labelling as JPEG with a JSON sidecar (see docs/teach.md)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["snapshot"] = "snapshot"
    dir: Annotated[
        str,
        Field(
            min_length=1,
            description="Folder the snapshots go to: <dir>/<stream>[/<region>]/<predicted "
            "label>/<time>.jpg, each with a <time>.json sidecar.",
        ),
    ]
    on: Annotated[
        list[SnapshotReason],
        Field(
            min_length=1,
            description="Which pictures to save: change (the picture that confirmed a start "
            "or change of a subject's smoothed label), low_score (top score below "
            "low_score, or no label), interval (one every interval_s of video time).",
        ),
    ] = ["change", "low_score", "interval"]
    low_score: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="With on: low_score, save a picture whose top label scores below this.",
        ),
    ] = 0.6
    interval_s: Annotated[
        float,
        Field(
            gt=0,
            description="With on: interval, seconds of video time (pts) between a subject's "
            "interval snapshots; its first picture is one.",
        ),
    ] = 600.0
    max_files: Annotated[
        int,
        Field(
            ge=1,
            description="Pictures kept per subject (stream or region), counted on disk at "
            "start; beyond it the oldest go first.",
        ),
    ] = 5000
    jpeg_quality: Annotated[
        int, Field(ge=1, le=95, description="JPEG quality of the saved pictures.")
    ] = 90

    @model_validator(mode="before")
    @classmethod
    def _on_as_written(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the key `on` as the boolean true: take it as written.
        if isinstance(data, dict) and True in data and "on" not in data:
            return {("on" if key is True else key): value for key, value in data.items()}
        return data

    @field_validator("on")
    @classmethod
    def _unique_reasons(cls, value: list[SnapshotReason]) -> list[SnapshotReason]:
        if len(set(value)) != len(value):
            raise ValueError("name each reason once")
        return value

    @field_validator("dir")
    @classmethod
    def _valid_dir(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("must not contain a NUL character")
        return value
