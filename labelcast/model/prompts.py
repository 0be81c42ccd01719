"""A zero-shot model's labels and the texts that describe them (``model.prompts``).

Users write either a mapping ``label: [text, ...]`` or a plain list of labels, which
``model.prompt_template`` (default :data:`DEFAULT_PROMPT_TEMPLATE`) turns into one text
each. This module checks what was written and resolves it to ``label -> texts``, and
names the zero-shot families labelcast runs (:data:`FAMILIES`); the standard library
only, so the config file is validated (and ``model-info`` answers) without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

# CLIP's authors found "a photo of a {}." better than the bare label; "a photo of {}." keeps
# the article to the user ("a parcel", "an empty street" read as written).
DEFAULT_PROMPT_TEMPLATE = "a photo of {}."
_PLACEHOLDER = "{}"

Prompts = dict[str, list[str]] | list[str]
# How a checkpoint's logits become scores: softmax over its labels (image classifiers,
# CLIP), or a sigmoid of each label's logit on its own (SigLIP).
Scoring = Literal["softmax", "sigmoid"]


@dataclass(frozen=True)
class Family:
    """What differs between zero-shot model families, as transformers runs them."""

    name: str
    scoring: Scoring
    # SigLIP's text tower takes the last position's state: its texts are padded to the
    # full length, as it was trained (and as transformers' pipeline does).
    pad_to_max_length: bool
    # CLIP projects the vision tower's pooled state into the shared space; SigLIP's vision
    # tower ends in its own pooling head, whose output is the embedding.
    projects_image: bool
    # SigLIP adds a learned bias to each logit before its sigmoid.
    has_bias: bool


# By config.json's model_type.
FAMILIES = {
    "clip": Family("CLIP", "softmax", False, True, False),
    "siglip": Family("SigLIP", "sigmoid", True, False, True),
}


def check_prompts(value: Any) -> Prompts | None:
    """Check ``model.prompts`` as written; return it, or raise ValueError saying what is wrong.

    A label may not be blank, nor repeat another (compared without case and surrounding
    blanks, as the text towers see them); a label's texts form a non-empty list of
    non-blank strings, and no text describes two labels (their scores would be equal).
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        return _check_mapping(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return _check_list(value)
    raise ValueError(
        "expected a list of labels, or a mapping of each label to the texts that describe it"
    )


def check_template(value: Any) -> str | None:
    """Check ``model.prompt_template``: a string with ``{}`` once (where the label goes)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("expected a string with {} where the label goes")
    if value.count(_PLACEHOLDER) != 1:
        raise ValueError(
            f"{value!r} must contain {{}} exactly once, where the label goes "
            '(e.g. "a photo of {}.")'
        )
    rest = value.replace(_PLACEHOLDER, "", 1)
    if "{" in rest or "}" in rest:
        raise ValueError(f"{value!r}: braces other than the one {{}} are not allowed")
    return value


def resolve_prompts(prompts: Prompts, template: str | None) -> dict[str, tuple[str, ...]]:
    """Return ``label -> texts`` in the order written; a plain label gets the template's text."""
    if isinstance(prompts, dict):
        return {label: tuple(texts) for label, texts in prompts.items()}
    template = template or DEFAULT_PROMPT_TEMPLATE
    return {label: (template.replace(_PLACEHOLDER, label, 1),) for label in prompts}


def _check_list(labels: Sequence[Any]) -> list[str]:
    if not labels:
        raise ValueError("no labels: list at least two (or one, for a sigmoid-scored model)")
    checked: list[str] = []
    seen: dict[str, str] = {}
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise ValueError(f"item {index}: a label must be a string")
        _check_label(label, seen)
        checked.append(label)
    return checked


def _check_mapping(mapping: Mapping[Any, Any]) -> dict[str, list[str]]:
    if not mapping:
        raise ValueError("no labels: give each label the texts that describe it")
    checked: dict[str, list[str]] = {}
    seen_labels: dict[str, str] = {}
    seen_texts: dict[str, str] = {}
    for label, texts in mapping.items():
        if not isinstance(label, str):
            raise ValueError(f"label {label!r}: a label must be a string")
        _check_label(label, seen_labels)
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ValueError(f"label {label!r}: expected a list of texts, e.g. [{label!r}]")
        if not texts:
            raise ValueError(f"label {label!r}: its list of texts is empty")
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"label {label!r}: a text is empty (or not a string)")
            key = " ".join(text.split()).casefold()
            if key in seen_texts and seen_texts[key] != label:
                raise ValueError(
                    f"the text {text!r} describes both {seen_texts[key]!r} and {label!r}: "
                    "the two would always score the same"
                )
            seen_texts[key] = label
        checked[label] = list(texts)
    return checked


def _check_label(label: str, seen: dict[str, str]) -> None:
    if not label.strip():
        raise ValueError("a label is empty: name each label (events carry the name)")
    key = label.strip().casefold()
    if key in seen:
        raise ValueError(
            f"duplicate label {label!r} (the same as {seen[key]!r}, ignoring case and "
            "surrounding blanks): each label once"
        )
    seen[key] = label
