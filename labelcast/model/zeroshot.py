"""Zero-shot image classification: CLIP and SigLIP checkpoints, labels from ``model.prompts``.

A zero-shot checkpoint has two towers. The text tower runs once, at load (a reload with
other prompts loads the model again): each label's texts are tokenized as transformers'
zero-shot pipeline does, embedded, L2-normalised, averaged per label and normalised again
(prompt ensembling, as in the CLIP paper), giving one unit vector per label. Each batch
then runs only the image tower (:class:`ImageTower`: pixel values in, unit image
embeddings out) and :class:`PromptHead`, which turns them into one logit per label:

    logit = cos(image, label) * exp(logit_scale) (+ logit_bias, SigLIP)

The logits are the model's ``logits_per_image``; CLIP scores them with a softmax over the
labels, SigLIP with a sigmoid of each (``Family.scoring``), as the checkpoints were trained.
:class:`ZeroShotClassifier` puts the two together behind the interface of a transformers
image classifier (``model(pixel_values=...).logits``), so batching, buckets, precision and
the Classifier work unchanged; ONNX exports only the image tower (the head is applied to
its output, so other prompts need no new export).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from labelcast.errors import ConfigError, ModelError
from labelcast.model.checkpoint import Checkpoint
from labelcast.model.config import ModelConfig
from labelcast.model.prompts import FAMILIES, Family

log = logging.getLogger(__name__)


def zero_shot_family(checkpoint: Checkpoint) -> Family | None:
    """Return the checkpoint's zero-shot family (CLIP, SigLIP), or None for other models."""
    model_type = checkpoint.read_json("config.json").get("model_type")
    return FAMILIES.get(str(model_type))


def refuse_zero_shot(checkpoint: Checkpoint, what: str) -> None:
    """Raise ConfigError if the checkpoint is zero-shot: ``what`` (Triton) serves classifiers."""
    family = zero_shot_family(checkpoint)
    if family is not None:
        raise ConfigError(
            f"{what} serves image classifiers; model {checkpoint.id!r} is a zero-shot "
            f"{family.name} checkpoint: run it with model.backend torch or onnxruntime "
            "(docs/zero-shot.md)"
        )


def family_for(checkpoint: Checkpoint, config: ModelConfig) -> Family | None:
    """Return the zero-shot family, checking that ``model.prompts`` fits the checkpoint.

    Prompts are for zero-shot checkpoints only, and a zero-shot checkpoint has no labels
    but its prompts: either mismatch is a ConfigError naming ``model.prompts``. So is a
    single label under a softmax (it would always score 1).
    """
    family = zero_shot_family(checkpoint)
    prompts = config.label_prompts()
    if prompts is not None and family is None:
        model_type = checkpoint.read_json("config.json").get("model_type") or "unknown"
        raise ConfigError(
            f"model.prompts: model {config.id!r} (model_type {model_type}) is not a zero-shot "
            f"checkpoint; prompts are for {' and '.join(f.name for f in FAMILIES.values())} "
            f"checkpoints (model_type {', '.join(FAMILIES)}). An image classifier's labels "
            "are its own: leave model.prompts out"
        )
    if family is None:
        return None
    if prompts is None:
        raise ConfigError(
            f"model.prompts: model {config.id!r} is a zero-shot {family.name} checkpoint with "
            "no labels of its own; list the labels (and the texts that describe them) in "
            "model.prompts (docs/zero-shot.md)"
        )
    if family.scoring == "softmax" and len(prompts) < 2:
        raise ConfigError(
            f"model.prompts: {family.name} scores with a softmax over the labels, so one label "
            "would always score 1; add another (e.g. a label for everything else)"
        )
    return family


class ImageTower(torch.nn.Module):
    """A zero-shot model's image side: pixel values in, L2-normalised fp32 embeddings out."""

    def __init__(self, vision_model: torch.nn.Module, projection: torch.nn.Module | None) -> None:
        super().__init__()
        self.vision_model = vision_model
        self.projection = projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return (N, D) unit-length image embeddings."""
        pooled: torch.Tensor = self.vision_model(pixel_values=pixel_values).pooler_output
        if self.projection is not None:
            pooled = self.projection(pooled)
        # Normalised in fp32: an fp16 sum of squares loses digits the cosines need.
        return _unit(pooled.float())


class PromptHead(torch.nn.Module):
    """Unit image embeddings to one logit per label: cosine * scale (+ bias), in fp32."""

    text_embeds: torch.Tensor

    def __init__(self, text_embeds: torch.Tensor, scale: float, bias: float | None) -> None:
        super().__init__()
        self.register_buffer("text_embeds", text_embeds.detach().float().clone())
        self.scale = scale
        self.bias = bias

    @property
    def embedding_size(self) -> int:
        """D, the length of an embedding."""
        return int(self.text_embeds.shape[1])

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """Return (N, labels) fp32 logits for (N, D) unit image embeddings."""
        text = self.text_embeds.to(image_embeds.device)
        logits = image_embeds.float() @ text.T * self.scale
        return logits if self.bias is None else logits + self.bias


class ZeroShotOutput(NamedTuple):
    """What :class:`ZeroShotClassifier` returns: logits, as a transformers classifier's."""

    logits: torch.Tensor


class ZeroShotClassifier(torch.nn.Module):
    """Image tower and prompt head as one module, called like a transformers classifier."""

    def __init__(self, tower: torch.nn.Module, head: PromptHead) -> None:
        super().__init__()
        self.tower = tower
        self.head = head

    def forward(self, pixel_values: torch.Tensor) -> ZeroShotOutput:
        """Return the logits (``.logits``, fp32) of a batch of pixel values."""
        return ZeroShotOutput(self.head(self.tower(pixel_values)))


@dataclass(frozen=True)
class ZeroShotModel:
    """A loaded zero-shot checkpoint: its fp32 image tower, its labels' head, its family."""

    tower: ImageTower
    head: PromptHead
    family: Family
    id2label: dict[int, str]

    def classifier(self) -> ZeroShotClassifier:
        """Both as one fp32 module (what ``labelcast export`` checks an ONNX file against)."""
        return ZeroShotClassifier(self.tower, self.head).eval()


def load_zero_shot(checkpoint: Checkpoint, config: ModelConfig, family: Family) -> ZeroShotModel:
    """Load the checkpoint in fp32 on the CPU, embed the prompts, and keep the image tower.

    The text tower is dropped once the labels are embedded: only the image tower's
    weights stay in memory.
    """
    # Imported here: importing transformers costs seconds that `labelcast schema` needn't pay.
    from transformers import AutoModelForZeroShotImageClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    prompts = config.label_prompts()
    assert prompts is not None  # family_for() made sure of it
    log.info("loading model %s (revision %s)", checkpoint.id, checkpoint.revision or "local")
    try:
        model = AutoModelForZeroShotImageClassification.from_pretrained(
            checkpoint.directory,
            dtype=torch.float32,
            use_safetensors=None if config.allow_pickle else True,
        ).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"model {checkpoint.id!r} is not a zero-shot image classification checkpoint "
            f"transformers can load: {exc}"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.directory)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        raise ModelError(
            f"model {checkpoint.id!r}: its tokenizer cannot be loaded ({exc}); a zero-shot "
            "checkpoint needs its tokenizer files (tokenizer.json, or vocab.json and "
            "merges.txt for CLIP, spiece.model for SigLIP)"
        ) from exc
    started = time.monotonic()
    with torch.no_grad():
        text = text_embeddings(model, tokenizer, prompts, family)
        scale = float(model.logit_scale.exp().item())
        bias = float(model.logit_bias.item()) if family.has_bias else None
    projection = model.visual_projection if family.projects_image else None
    tower = ImageTower(model.vision_model, projection).eval()
    count = sum(len(texts) for texts in prompts.values())
    log.info(
        "model %s: %d labels from %d prompts embedded by its text tower in %.2f s "
        "(%s, scored by %s)",
        checkpoint.id,
        len(prompts),
        count,
        time.monotonic() - started,
        family.name,
        family.scoring,
    )
    return ZeroShotModel(tower, PromptHead(text, scale, bias), family, dict(enumerate(prompts)))


def text_embeddings(
    model: Any, tokenizer: Any, prompts: dict[str, tuple[str, ...]], family: Family
) -> torch.Tensor:
    """Return one unit embedding per label: its texts' unit embeddings, averaged, renormalised.

    Tokenized as transformers' zero-shot pipeline tokenizes candidate labels: padded to the
    longest text (CLIP), or to the text tower's full length (SigLIP); texts longer than the
    tower takes are cut (with a warning).
    """
    texts = [text for label_texts in prompts.values() for text in label_texts]
    longest = int(model.config.text_config.max_position_embeddings)
    for text in texts:
        if len(tokenizer(text)["input_ids"]) > longest:
            log.warning(
                "model.prompts: %r is longer than the %d tokens the text tower takes; "
                "its end is cut off",
                text,
                longest,
            )
    padding: dict[str, Any] = (
        {"padding": "max_length", "max_length": longest}
        if family.pad_to_max_length
        else {"padding": True, "max_length": longest}
    )
    inputs = tokenizer(texts, truncation=True, return_tensors="pt", **padding)
    arguments = {key: inputs[key] for key in ("input_ids", "attention_mask") if key in inputs}
    output = model.get_text_features(**arguments)
    embeds: torch.Tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    embeds = _unit(embeds.float())
    per_label = []
    start = 0
    for label_texts in prompts.values():
        per_label.append(_unit(embeds[start : start + len(label_texts)].mean(dim=0)))
        start += len(label_texts)
    return torch.stack(per_label)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Scale ``x`` to unit L2 length along its last axis."""
    unit: torch.Tensor = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return unit
