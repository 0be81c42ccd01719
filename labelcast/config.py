"""The configuration file: pydantic models, ``${ENV}`` substitution, ``--set`` overrides.

Loading never touches media, models or networks; it only reads the YAML file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from yaml.composer import ComposerError

from labelcast.config_errors import (
    FieldError,
    Override,
    describe,
    field_name,
    find_item,
    item_name,
    located,
    set_shown,
    split_key,
)
from labelcast.errors import ConfigError
from labelcast.labels.config import LabelsConfig, SmoothingConfig
from labelcast.logs import LogConfig
from labelcast.model.config import ModelConfig
from labelcast.server import ServerConfig
from labelcast.sinks import SINK_CONFIGS
from labelcast.sinks.log import LogSinkConfig
from labelcast.sources import SOURCE_CONFIGS
from labelcast.sources.base import SourceConfigBase

if TYPE_CHECKING:
    # mypy cannot read a Union built at run time from the registries; it checks code
    # against what the pipeline reads of any source (the shared fields and the tag)
    # and of any sink (the tag). Each adapter is checked against its own model.

    class SourceConfig(SourceConfigBase):
        """Any source's config (at run time: the union of the registry's models)."""

        type: str

    class SinkConfig(Protocol):
        """Any sink's config (at run time: the union of the registry's models)."""

        @property
        def type(self) -> str:
            """The sink's kind: its registry key."""
            ...

else:
    # One model per adapter, told apart by ``type``; adding a kind to a registry adds it
    # here (and to ``labelcast schema``).
    SourceConfig = Annotated[Union[SOURCE_CONFIGS], Field(discriminator="type")]  # noqa: UP007
    SinkConfig = Annotated[Union[SINK_CONFIGS], Field(discriminator="type")]  # noqa: UP007

_ENV_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What a config file may expand to: far above any real one (an ImageNet-21k label map is
# ~45,000 values), far below what exhausts memory. Aliases count as all they repeat, so
# an alias bomb (ten levels of ten aliases: 10**10 values in 600 bytes) stops at once.
_MAX_YAML_VALUES = 100_000
# How deep a config may nest, in YAML and in --set keys; real ones nest about 5 levels.
_MAX_YAML_DEPTH = 50
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what no config needs and would take labelcast down.

    Counted while the file is composed, before anything is built from it: the values
    it expands to (each alias counts as everything it repeats), how deep it nests, and
    aliases used inside the node they name (cycles). Keys written twice in one mapping
    are refused too, rather than the last one silently winning.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._values = 0
        self._depth = 0
        # id(node) -> the values it expands to, once composed; a node named by an anchor
        # but not in here is still being composed, so an alias to it is a cycle.
        self._expanded: dict[int, int] = {}

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node (see yaml.composer), counting it against the limits."""
        self.check_event()  # parses the next event into current_event (as peek_event does)
        event: yaml.Event = self.current_event
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._expanded.get(id(target))
                if size is None:
                    raise _refusal(
                        f"alias *{event.anchor} is used inside the node it names (a cycle)", event
                    )
                self._count(size, event)
            return super().compose_node(parent, index)
        if self._depth >= _MAX_YAML_DEPTH:
            raise _refusal(f"nested deeper than {_MAX_YAML_DEPTH} levels", event)
        self._count(1, event)
        before = self._values
        self._depth += 1
        node = super().compose_node(parent, index)
        self._depth -= 1
        if node is not None:
            self._expanded[id(node)] = self._values - before + 1
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node)
        return node

    def _count(self, values: int, event: yaml.Event) -> None:
        self._values += values
        if self._values > _MAX_YAML_VALUES:
            raise _refusal(
                f"the YAML expands to more than {_MAX_YAML_VALUES} values (an alias counts "
                "as everything it repeats)",
                event,
            )


def _refusal(problem: str, event: yaml.Event) -> ComposerError:
    """Make the YAML error for ``event``; parse_config reports it with its line."""
    mark = event.start_mark
    return ComposerError(None, None, problem, mark if isinstance(mark, yaml.Mark) else None)


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    """Raise ComposerError at the second of two equal keys of one mapping."""
    seen: dict[tuple[str, str], yaml.Node] = {}
    for key, _ in node.value:
        # Keys merged in with << may be overridden; only keys written here count.
        if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
            continue
        first = seen.get((key.tag, key.value))
        if first is None:
            seen[(key.tag, key.value)] = key
        else:
            name = key.value if len(key.value) <= 40 else f"{key.value[:40]}..."
            raise ComposerError(
                None,
                None,
                f"duplicate key {name!r} (first on line {first.start_mark.line + 1}); "
                "a key may appear once in a mapping",
                key.start_mark,
            )


class PipelineConfig(BaseModel):
    """One pipeline: its sources, one classifier, the label rules and its sinks."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_-]+$",
            max_length=64,
            description="Pipeline name (letters, digits, - and _; at most 64 characters), "
            "used in event ids, topics and metrics.",
        ),
    ] = "labelcast"
    model: Annotated[ModelConfig, Field(description="The image classifier.")] = ModelConfig()
    sources: Annotated[
        list[SourceConfig], Field(min_length=1, description="Video sources, each a stream.")
    ]
    labels: Annotated[LabelsConfig, Field(description="Which labels events carry.")] = (
        LabelsConfig()
    )
    smoothing: Annotated[
        SmoothingConfig,
        Field(description="How each stream's current label (its state) follows the scores."),
    ] = SmoothingConfig()
    sinks: Annotated[
        list[SinkConfig], Field(description="Where label events go (default: log to stdout).")
    ] = [LogSinkConfig()]
    server: Annotated[
        ServerConfig | None,
        Field(description="Local HTTP endpoint for /healthz, /readyz, /metrics and reload."),
    ] = None
    log: Annotated[LogConfig, Field(description="How labelcast logs.")] = LogConfig()
    shutdown_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            description="On SIGTERM, the longest wait for queued frames and sinks "
            "before exiting anyway.",
        ),
    ] = 30.0
    classifier_stall_s: Annotated[
        float,
        Field(
            gt=0,
            description="The classifier counts as hung (not alive; no systemd watchdog "
            "pings) after this long without finishing a batch or idling.",
        ),
    ] = 120.0

    @model_validator(mode="after")
    def _unique_stream_ids(self) -> PipelineConfig:
        seen: set[str] = set()
        for source in self.sources:
            if source.id in seen:
                problem = f"stream id {source.id!r} is used by more than one source"
                raise FieldError(("sources",), problem, "sources")
            seen.add(source.id)
        return self

    @model_validator(mode="after")
    def _label_rules_valid(self) -> PipelineConfig:
        try:
            self.labels.check()
        except ValueError as exc:
            raise FieldError(("labels",), str(exc), "labels") from None
        try:
            self.smoothing.check()
        except ValueError as exc:
            raise FieldError(("smoothing",), str(exc), "smoothing") from None
        for source in self.sources:
            # Each source's and region's overrides merged with the pipeline's.
            for region in [None, *(region.id for region in source.regions)]:
                self.subject_labels(source.id, region)
        return self

    @model_validator(mode="after")
    def _subjects_fit_a_batch(self) -> PipelineConfig:
        # A frame's pictures go to the classifier in one batch (buckets are sized by it).
        max_size = self.model.batch.max_size
        for index, source in enumerate(self.sources):
            if source.subject_count > max_size:
                problem = (
                    f"{source.subject_count} pictures per frame (regions and the whole "
                    f"frame) are more than model.batch.max_size ({max_size})"
                )
                raise FieldError(("sources", index, "regions"), problem, f"sources[{source.id}]")
        return self

    def stream_labels(self, stream: str) -> tuple[LabelsConfig, SmoothingConfig]:
        """Return a stream's label rules and smoothing: the pipeline's, with its source's keys.

        Raises ValueError (a FieldError) naming the source's key if the combination is
        invalid.
        """
        index, source = next((i, s) for i, s in enumerate(self.sources) if s.id == stream)
        try:
            labels = self.labels.overridden_by(source.labels)
        except ValueError as exc:
            where = ("sources", index, "labels")
            raise FieldError(where, _first_problem(exc), f"sources[{stream}].labels") from None
        try:
            smoothing = self.smoothing.overridden_by(source.smoothing)
        except ValueError as exc:
            where = ("sources", index, "smoothing")
            raise FieldError(where, _first_problem(exc), f"sources[{stream}].smoothing") from None
        return labels, smoothing

    def subject_labels(
        self, stream: str, region: str | None
    ) -> tuple[LabelsConfig, SmoothingConfig]:
        """Return a subject's label rules and smoothing: its stream's, with its region's keys.

        ``region`` None is the stream's whole frame. Raises ValueError (a FieldError)
        naming the region's key if the combination is invalid.
        """
        labels, smoothing = self.stream_labels(stream)
        if region is None:
            return labels, smoothing
        index, source = next((i, s) for i, s in enumerate(self.sources) if s.id == stream)
        at, found = next((j, r) for j, r in enumerate(source.regions) if r.id == region)
        where = ("sources", index, "regions", at)
        name = f"sources[{stream}].regions[{region}]"
        try:
            labels = labels.overridden_by(found.labels)
        except ValueError as exc:
            raise FieldError((*where, "labels"), _first_problem(exc), f"{name}.labels") from None
        try:
            smoothing = smoothing.overridden_by(found.smoothing)
        except ValueError as exc:
            problem = _first_problem(exc)
            raise FieldError((*where, "smoothing"), problem, f"{name}.smoothing") from None
        return labels, smoothing


def _first_problem(exc: ValueError) -> str:
    """Describe the first problem of a validation error, without values (they may be secrets)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    error = exc.errors()[0]
    where = field_name(tuple(error["loc"]), None)
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read, substitute, override and validate a pipeline config file.

    ``overrides`` are ``dotted.key=value`` strings (values parsed as YAML scalars);
    list items are addressed by index or by the name error messages give them (a
    stream's id, a sink's type): ``sources.door.sample.fps=5``, ``sinks[mqtt].qos=1``.
    Raises ConfigError with one message naming where the bad value came from (the
    file, or the ``--set``) and the field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: config file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from exc
    return parse_config(text, str(path), overrides)


def parse_config(
    text: str, origin: str = "<config>", overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Validate a config given as YAML text; ``origin`` names it in error messages."""
    try:
        raw = _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or "invalid YAML"
        if "could not determine a constructor" in str(exc):
            problem = f"unsupported YAML tag ({exc.problem}); only plain YAML is accepted"
        raise ConfigError(f"{origin}{where}: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: invalid YAML ({exc})") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of keys to values")
    applied = [_apply_override(raw, override) for override in overrides]
    try:
        substituted = _substitute_env(raw, ())
    except _EnvProblem as problem:
        raise ConfigError(located(origin, problem.where, str(problem), raw, applied)) from None
    try:
        return PipelineConfig.model_validate(substituted)
    except ValidationError as exc:
        raise ConfigError(describe(exc, origin, substituted, applied, PipelineConfig)) from None


def _load_yaml(text: str) -> Any:
    """Parse plain YAML as ``yaml.safe_load`` does, within the limits of _ConfigLoader."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def config_schema() -> dict[str, Any]:
    """Return the JSON Schema of the config file."""
    return PipelineConfig.model_json_schema()


def _apply_override(raw: dict[str, Any], override: str) -> Override:
    """Set one ``dotted.key=value`` in ``raw``; return where it went, for error messages."""
    key, sep, value_text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override[:80]!r}: expected dotted.key=value")
    key = key.strip()
    shown = set_shown(key, value_text)
    try:
        value = _load_yaml(value_text) if value_text.strip() else ""
    except yaml.YAMLError as exc:
        # What is wrong and where, not the YAML error's text: it quotes the value.
        problem = getattr(exc, "problem", None) or "invalid YAML"
        mark = getattr(exc, "problem_mark", None)
        at = f" at character {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{shown}: the value is not valid YAML ({problem}{at})") from None
    parts = split_key(key)
    if len(parts) > _MAX_YAML_DEPTH:
        raise ConfigError(f"--set {key[:80]}...: nested deeper than {_MAX_YAML_DEPTH} levels")
    path: list[str | int] = []
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = find_item(node, part)
            if index is None:
                names = ", ".join(item_name(node, i) for i in range(len(node)))
                raise ConfigError(
                    f"{shown}: {field_name(tuple(path), raw)} has no item {part} "
                    f"(its items: {names or 'none'})"
                )
            path.append(index)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            path.append(part)
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{shown}: {field_name(tuple(path), raw)} is not a mapping or list")
    return Override(shown, tuple(path))


class _EnvProblem(Exception):
    """A ``${VAR}`` that cannot be substituted; ``where`` is its place in the config."""

    def __init__(self, where: tuple[str | int, ...], problem: str) -> None:
        super().__init__(problem)
        self.where = where


def _substitute_env(node: Any, where: tuple[str | int, ...]) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, (*where, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, (*where, i)) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if not _ENV_NAME.match(name):
                raise _EnvProblem(where, f"${{{name}}} is not a valid variable name")
            if name not in os.environ:
                raise _EnvProblem(where, f"environment variable {name} is not set")
            return os.environ[name]

        return _ENV_REFERENCE.sub(replace, node)
    return node
