"""Config error messages: where the bad value came from, and fields named as users write them.

A problem in the file reads ``FILE: FIELD: PROBLEM``; one in a value given on the command
line reads ``--set KEY=VALUE: PROBLEM`` (the value masked where it looks secret), since
that is where the user must look. List items are named in brackets by what identifies
them: a stream (or region) by its id, ``sources[door].sample.fps``; an item without an
id by its type when no other item of the list has that type, ``sinks[mqtt].qos``;
anything else by its index, ``sinks[1].qos``, ``model.batch.buckets[0]``. ``--set``
accepts the same names (``--set sources[door].sample.fps=5`` or
``--set sources.door.sample.fps=5``). An unknown key is followed by the nearest valid
key of the model at that place (``did you mean model.device?``), when one is close.

Imports pydantic only (and labelcast.redact): config.py passes its root model in.
"""

from __future__ import annotations

import collections.abc
import difflib
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from labelcast.redact import MASK, looks_secret, redact

Loc = tuple[str | int, ...]

_MAX_PROBLEMS = 5
# An item's id or type names it only if it is a plain word that cannot pass for an index.
_ITEM_NAME = re.compile(r"^(?![0-9]+$)[A-Za-z0-9_-]{1,64}$")
# How much of a --set value a message repeats; the rest is elided.
_MAX_SHOWN_VALUE = 60
_UNION_TAG_ERRORS = ("union_tag_invalid", "union_tag_not_found")
# Words of a --set key, and keys inside its value (``{password: x}``, ``a=b``).
_KEY_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_KEY_IN_VALUE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)\s*[:=]")


@dataclass(frozen=True)
class Override:
    """One ``--set``: how a message shows it, and the place in the config it set."""

    shown: str
    path: Loc


class FieldError(ValueError):
    """A model validator's error about a field below the model that raised it.

    pydantic places a validator's error at the model; ``loc`` (relative to that model)
    lets the message name the field instead, and blame a ``--set`` that set it.
    ``str()`` is ``shown: problem`` for callers outside validation.
    """

    def __init__(self, loc: Loc, problem: str, shown: str) -> None:
        super().__init__(f"{shown}: {problem}")
        self.loc = loc
        self.problem = problem


def set_shown(key: str, value_text: str) -> str:
    """Show ``--set key=value`` as messages repeat it: secrets masked, long parts cut.

    The whole value is masked when the key (``sinks[mqtt].password``) or a key inside
    the value (``{password: x}``) looks secret; otherwise URLs in it lose their password.
    """
    shown_key = key if len(key) <= 80 else f"{key[:80]}..."
    if len(value_text) > 10 * _MAX_SHOWN_VALUE:
        # Too long to be worth masking piece by piece (and cut, a URL's "@" may be lost).
        return f"--set {shown_key}=<{len(value_text)} characters>"
    words = _KEY_WORD.findall(key) + _KEY_IN_VALUE.findall(value_text)
    value = MASK if any(looks_secret(word) for word in words) else redact(value_text)
    if len(value) > _MAX_SHOWN_VALUE:
        value = f"{value[:_MAX_SHOWN_VALUE]}..."
    return f"--set {shown_key}={value}"


def split_key(key: str) -> list[str]:
    """Split a ``--set`` key into its parts; ``a[b].c`` is the same as ``a.b.c``."""
    return re.sub(r"\[([^\[\]]*)\]", r".\1", key.strip()).split(".")


def item_name(items: Sequence[Any], index: int) -> str:
    """Name item ``index`` of a config list: its id, else its type if unique, else the index."""
    item = items[index] if 0 <= index < len(items) else None
    if isinstance(item, dict):
        for key in ("id", "type"):
            value = item.get(key)
            if key == "type" and "id" in item:
                break  # an item with an id (even a bad one) is never named by its type
            if (
                isinstance(value, str)
                and _ITEM_NAME.match(value)
                and sum(isinstance(x, dict) and x.get(key) == value for x in items) == 1
            ):
                return value
    return str(index)


def find_item(items: Sequence[Any], name: str) -> int | None:
    """Return the index of the item ``name`` names (an index, or :func:`item_name`'s name)."""
    if name.isdigit():
        return int(name) if int(name) < len(items) else None
    return next((i for i in range(len(items)) if item_name(items, i) == name), None)


def field_name(loc: Loc, raw: Any) -> str:
    """Render ``loc`` (keys and list indexes of ``raw``) as users write it."""
    text = ""
    node = raw
    for part in loc:
        if isinstance(part, int):
            if isinstance(node, list):
                text += f"[{item_name(node, part)}]"
                node = node[part] if 0 <= part < len(node) else None
            else:
                text += f"[{part}]"
                node = None
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text


def located(origin: str, loc: Loc, problem: str, raw: Any, overrides: Sequence[Override]) -> str:
    """``ORIGIN: FIELD: PROBLEM`` for a problem found at ``loc`` (a --set that set it wins)."""
    where, exact = _origin(origin, overrides, loc, key_itself=False)
    if exact:
        return f"{where}: {problem}"
    return f"{where}: {field_name(loc, raw)}: {problem}"


def describe(
    exc: ValidationError,
    origin: str,
    raw: Any,
    overrides: Sequence[Override],
    root: type[BaseModel],
) -> str:
    """Name each invalid field and say what is wrong, without echoing values (secrets).

    ``raw`` is the data that was validated (it names list items), ``root`` its model.
    """
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    problems = [_describe_one(error, origin, raw, overrides, root) for error in errors]
    shown = problems[:_MAX_PROBLEMS]
    if len(problems) > _MAX_PROBLEMS:
        shown.append(("", f"... and {len(problems) - _MAX_PROBLEMS} more"))
    if len(problems) == 1:
        return f"{problems[0][0]}: {problems[0][1]}"
    origins = {where for where, _ in shown if where}
    if origins == {origin}:
        return f"{origin}: {len(problems)} problems:\n  " + "\n  ".join(text for _, text in shown)
    lines = [f"{where}: {text}" if where else text for where, text in shown]
    return f"{len(problems)} problems in the config:\n  " + "\n  ".join(lines)


def _describe_one(
    error: Any, origin: str, raw: Any, overrides: Sequence[Override], root: type[BaseModel]
) -> tuple[str, str]:
    """Return (where the value came from, what is wrong where) for one pydantic error."""
    kind = error["type"]
    message = str(error["msg"]).removeprefix("Value error, ")
    loc: Loc = tuple(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        loc, message = loc + cause.loc, cause.problem
    loc, holder, tags = _walk(root, loc)
    if kind == "extra_forbidden":
        problem = "unknown key"
        near = _nearest(str(loc[-1]), list(holder.model_fields) if holder else [])
        if near is not None:
            problem += f"; did you mean {field_name((*loc[:-1], near), raw)}?"
    elif kind == "missing":
        problem = "required key is missing"
    elif kind in _UNION_TAG_ERRORS:
        loc = (*loc, "type")  # the key the user wrote, or should have
        problem = f"unknown or missing type (expected one of: {', '.join(tags)})"
        tag = (error.get("ctx") or {}).get("tag")
        near = _nearest(tag, list(tags)) if isinstance(tag, str) else None
        if near is not None:
            problem += f"; did you mean {near}?"
    else:
        problem = message
    where, exact = _origin(origin, overrides, loc, key_itself=kind == "extra_forbidden")
    if exact:
        return where, problem
    field = field_name(loc, raw)
    return where, f"{field}: {problem}" if field else problem


def _origin(
    origin: str, overrides: Sequence[Override], loc: Loc, *, key_itself: bool
) -> tuple[str, bool]:
    """Say where the value at ``loc`` came from, and whether that names ``loc`` exactly.

    The latest --set that set ``loc`` or a place holding it put the value there. With
    ``key_itself`` (``loc`` is an unknown key) so did one that set something below it.
    Otherwise a --set that set something below ``loc`` shares the blame with the file:
    the problem is with a whole (a sink's settings) that both wrote parts of.
    """
    for override in reversed(overrides):
        path = override.path
        if loc[: len(path)] == path or (key_itself and path[: len(loc)] == loc):
            return override.shown, path == loc
    inside = [o.shown for o in overrides if loc and o.path[: len(loc)] == loc]
    if inside:
        return f"{origin} with {', '.join(inside)}", False
    return origin, False


def _nearest(word: str, candidates: list[str]) -> str | None:
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _walk(root: type[BaseModel], loc: Loc) -> tuple[Loc, type[BaseModel] | None, list[str]]:
    """Follow ``loc`` through the models' annotations.

    Returns ``loc`` without the tags pydantic adds after a tagged union's place (users
    never write them), the model holding ``loc``'s last key (None if unknown), and the
    tags of a tagged union found at ``loc`` itself.
    """
    kept: list[str | int] = []
    node: Any = root
    holder: type[BaseModel] | None = None
    for part in loc:
        node = _unwrap(node)
        member = _union_member(node, part)
        if member is not None:
            node = member
            continue
        holder = node if _is_model(node) else None
        kept.append(part)
        node = _child(node, part)
    return tuple(kept), holder, _tags(_unwrap(node))


def _unwrap(node: Any) -> Any:
    """Strip ``Annotated`` and ``| None`` from an annotation."""
    while True:
        origin = get_origin(node)
        if origin is Annotated:
            node = get_args(node)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(node) if arg is not type(None)]
            if len(members) != 1:
                return node
            node = members[0]
        else:
            return node


def _is_model(node: Any) -> bool:
    return isinstance(node, type) and issubclass(node, BaseModel)


def _members(node: Any) -> list[Any]:
    if get_origin(node) not in (Union, types.UnionType):
        return []
    return [_unwrap(arg) for arg in get_args(node) if arg is not type(None)]


def _tag(member: Any) -> str | None:
    field = member.model_fields.get("type") if _is_model(member) else None
    default = field.default if field is not None else None
    return default if isinstance(default, str) else None


def _tags(node: Any) -> list[str]:
    return [tag for tag in (_tag(member) for member in _members(node)) if tag is not None]


def _union_member(node: Any, part: str | int) -> Any:
    """Return the member of union ``node`` that ``part`` (a tag pydantic put in a loc) names."""
    for member in _members(node):
        if part in (_tag(member), getattr(member, "__name__", None)):
            return member
    return None


def _child(node: Any, part: str | int) -> Any:
    """Return the annotation of ``node``'s key or item ``part`` (None where not known)."""
    if _is_model(node):
        field = node.model_fields.get(part) if isinstance(part, str) else None
        return field.annotation if field is not None else None
    origin = get_origin(node)
    args = get_args(node)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence) and args:
        return args[0]
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return args[1]
    return None
