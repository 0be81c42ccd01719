"""The label rules users write (``labels:`` and ``smoothing:``, per pipeline and per source).

Pydantic only: the config file is read without NumPy. What applies these rules lives in
postprocess.py (``LabelsConfig``) and smoothing.py (``SmoothingConfig``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelcast.labels.groups import GroupMapName

UngroupedRule = Literal["keep", "other", "drop"]
SmoothingMethod = Literal["ema", "window", "none"]
ClockName = Literal["auto", "pts", "wall"]

DEFAULT_ALPHA = 0.5
DEFAULT_WINDOW = 5


class LabelsConfig(BaseModel):
    """Which labels an event carries and under which names."""

    model_config = ConfigDict(extra="forbid")

    top_k: Annotated[int, Field(ge=1, le=1000, description="Most labels per event.")] = 5
    min_score: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description="Labels scoring below this are left out of events; a stream whose top "
            "smoothed score is below it has no label (state none).",
        ),
    ] = 0.0
    include: Annotated[
        list[str],
        Field(description="Keep only labels matching one of these names or shell patterns."),
    ] = []
    exclude: Annotated[
        list[str], Field(description="Drop labels matching any of these names or shell patterns.")
    ] = []
    map: Annotated[
        dict[str, str],
        Field(
            description="Rename labels; several labels mapped to one name add their scores. "
            "Keys are the model's label names or group names (a label name wins)."
        ),
    ] = {}
    groups: Annotated[
        GroupMapName | None,
        Field(
            description="A shipped group map (by class id) that merges the model's classes into "
            "everyday groups, e.g. imagenet-coarse for ImageNet-1k checkpoints; see docs/labels.md."
        ),
    ] = None
    ungrouped: Annotated[
        UngroupedRule,
        Field(
            description="With groups: classes in no group keep their own name (keep), are merged "
            "into one label 'other' (other), or are left out (drop)."
        ),
    ] = "keep"

    def check(self) -> None:
        """Raise ValueError if ``ungrouped`` is set without ``groups``.

        Not a model validator: a source's override may set ``ungrouped`` and inherit
        ``groups``, so PipelineConfig checks the merged rules.
        """
        if self.ungrouped != "keep" and self.groups is None:
            raise ValueError("ungrouped applies only with groups")

    def overridden_by(self, override: LabelsConfig | None) -> LabelsConfig:
        """Return this config with the keys ``override`` sets replacing this one's (whole values).

        Raises ValueError if the result is invalid.
        """
        if override is None:
            return self
        data = self.model_dump(exclude_unset=True)
        data.update(override.model_dump(exclude_unset=True))
        merged = LabelsConfig.model_validate(data)
        merged.check()
        return merged


class SmoothingConfig(BaseModel):
    """How a stream's label scores are smoothed over time, and how long a new label must lead."""

    model_config = ConfigDict(extra="forbid")

    method: Annotated[
        SmoothingMethod,
        Field(
            description="ema: exponential moving average (see alpha); window: mean of the last "
            "`window` frames; none: each frame's own scores."
        ),
    ] = "ema"
    alpha: Annotated[
        float | None,
        Field(
            gt=0,
            le=1,
            description=f"ema only: weight of the newest frame (default {DEFAULT_ALPHA}); "
            "smaller is smoother and slower, 1 is no smoothing.",
        ),
    ] = None
    window: Annotated[
        int | None,
        Field(
            ge=1,
            le=1000,
            description=f"window only: how many classified frames are averaged "
            f"(default {DEFAULT_WINDOW}).",
        ),
    ] = None
    min_dwell_s: Annotated[
        float,
        Field(
            ge=0,
            description="Seconds (on the stream's clock) a new top label, or no label, must lead "
            "before it becomes the stream's state.",
        ),
    ] = 1.0
    min_frames: Annotated[
        int,
        Field(
            ge=1,
            description="Consecutive classified frames a new top label, or no label, must lead "
            "before it becomes the state (as well as min_dwell_s).",
        ),
    ] = 2
    clock: Annotated[
        ClockName,
        Field(
            description="Time base of min_dwell_s and duration_s: pts (video time), wall (capture "
            "time), or auto: pts for file sources, wall for live sources."
        ),
    ] = "auto"

    @model_validator(mode="after")
    def _parameters_fit_method(self) -> SmoothingConfig:
        # Without ``method`` (a source's override) the method is inherited, so only the
        # merged config can be judged: PipelineConfig calls check() on it.
        if "method" in self.model_fields_set:
            self.check()
        return self

    def check(self) -> None:
        """Raise ValueError if ``alpha`` or ``window`` is set for a method it does not apply to."""
        if self.alpha is not None and self.method != "ema":
            raise ValueError(f"alpha applies to method ema only (method is {self.method})")
        if self.window is not None and self.method != "window":
            raise ValueError(f"window applies to method window only (method is {self.method})")

    def overridden_by(self, override: SmoothingConfig | None) -> SmoothingConfig:
        """Return this config with the keys ``override`` sets replacing this one's.

        A source that sets ``method`` inherits neither ``alpha`` nor ``window``, since
        those belong to the pipeline's method. Raises ValueError if the result is invalid.
        """
        if override is None:
            return self
        data = self.model_dump(exclude_unset=True)
        if "method" in override.model_fields_set:
            data.pop("alpha", None)
            data.pop("window", None)
        data.update(override.model_dump(exclude_unset=True))
        merged = SmoothingConfig.model_validate(data)
        merged.check()
        return merged

    def resolved_clock(self, live: bool) -> Literal["pts", "wall"]:
        """Return the stream's clock: ``auto`` is ``wall`` for live sources, ``pts`` for files."""
        if self.clock == "auto":
            return "wall" if live else "pts"
        return self.clock
