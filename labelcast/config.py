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
_MAX_PROBLEMS = 5
# What a config file may expand to: far above any real one (an ImageNet-21k label map is
# ~45,000 values), far below what exhausts memory. Aliases count as all they repeat, so
# an alias bomb (ten levels of ten aliases: 10**10 values in 600 bytes) stops at once.
_MAX_YAML_VALUES = 100_000
# How deep a config may nest, in YAML and in --set keys; real ones nest about 5 levels.
_MAX_YAML_DEPTH = 50
_MERGE_TAG = "tag:yaml.org,2002:merge"


# The ``type`` tags of each tagged list, for error messages.
_TAGGED_LISTS: dict[str, tuple[str, ...]] = {
    "sources": tuple(model.model_fields["type"].default for model in SOURCE_CONFIGS),
    "sinks": tuple(model.model_fields["type"].default for model in SINK_CONFIGS),
}
_TAGS = {tag for tags in _TAGGED_LISTS.values() for tag in tags}


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
                raise ValueError(
                    f"sources: stream id {source.id!r} is used by more than one source"
                )
            seen.add(source.id)
        return self

    @model_validator(mode="after")
    def _label_rules_valid(self) -> PipelineConfig:
        try:
            self.labels.check()
        except ValueError as exc:
            raise ValueError(f"labels: {exc}") from None
        try:
            self.smoothing.check()
        except ValueError as exc:
            raise ValueError(f"smoothing: {exc}") from None
        for source in self.sources:
            self.stream_labels(source.id)  # each source's overrides merged with the pipeline's
        return self

    def stream_labels(self, stream: str) -> tuple[LabelsConfig, SmoothingConfig]:
        """Return a stream's label rules and smoothing: the pipeline's, with its source's keys.

        Raises ValueError naming the source's key if the combination is invalid.
        """
        index, source = next((i, s) for i, s in enumerate(self.sources) if s.id == stream)
        try:
            labels = self.labels.overridden_by(source.labels)
        except ValueError as exc:
            raise ValueError(f"sources.{index}.labels: {_first_problem(exc)}") from None
        try:
            smoothing = self.smoothing.overridden_by(source.smoothing)
        except ValueError as exc:
            raise ValueError(f"sources.{index}.smoothing: {_first_problem(exc)}") from None
        return labels, smoothing


def _first_problem(exc: ValueError) -> str:
    """Describe the first problem of a validation error, without values (they may be secrets)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read, substitute, override and validate a pipeline config file.

    ``overrides`` are ``dotted.key=value`` strings (values parsed as YAML scalars);
    list items are addressed by index or, for sources, by stream id. Raises
    ConfigError with one message naming the file and the field.
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
    for override in overrides:
        _apply_override(raw, override, origin)
    raw = _substitute_env(raw, (), origin)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None


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


def _apply_override(raw: dict[str, Any], override: str, origin: str) -> None:
    key, sep, value_text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected dotted.key=value")
    try:
        value = _load_yaml(value_text) if value_text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: the value is not valid YAML ({exc})") from exc
    parts = key.strip().split(".")
    if len(parts) > _MAX_YAML_DEPTH:
        raise ConfigError(f"--set {key[:80]}...: nested deeper than {_MAX_YAML_DEPTH} levels")
    node: Any = raw
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part)
            if index is None:
                raise ConfigError(f"--set {key}: {where} names no item of the list")
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"--set {key}: {'.'.join(parts[:depth])} is not a mapping or list")


def _list_index(items: list[Any], part: str) -> int | None:
    if part.isdigit():
        return int(part) if int(part) < len(items) else None
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("id") == part:
            return index
    return None


def _substitute_env(node: Any, where: tuple[str | int, ...], origin: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute_env(v, (*where, str(k)), origin) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute_env(v, (*where, i), origin) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            field = ".".join(str(p) for p in where)
            if not _ENV_NAME.match(name):
                raise ConfigError(f"{origin}: {field}: ${{{name}}} is not a valid variable name")
            if name not in os.environ:
                raise ConfigError(f"{origin}: {field}: environment variable {name} is not set")
            return os.environ[name]

        return _ENV_REFERENCE.sub(replace, node)
    return node


def _describe(exc: ValidationError, origin: str) -> str:
    """Name each invalid field and say what is wrong, without echoing values (secrets)."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    problems = [_describe_one(error) for error in errors[:_MAX_PROBLEMS]]
    if len(errors) > _MAX_PROBLEMS:
        problems.append(f"... and {len(errors) - _MAX_PROBLEMS} more")
    if len(problems) == 1:
        return f"{origin}: {problems[0]}"
    return f"{origin}: {len(errors)} problems:\n  " + "\n  ".join(problems)


def _describe_one(error: Any) -> str:
    loc = [str(p) for p in error["loc"]]
    # Tagged unions add the tag ("file") after the list index; users never write it.
    if len(loc) > 2 and loc[0] in _TAGGED_LISTS and loc[1].isdigit() and loc[2] in _TAGS:
        del loc[2]
    field = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{field}: unknown key"
    if kind == "missing":
        return f"{field}: required key is missing"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        expected = ", ".join(_TAGGED_LISTS.get(loc[0], ()))
        return f"{'.'.join(loc[:2])}.type: unknown or missing type (expected one of: {expected})"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{field}: {message}" if field else message
