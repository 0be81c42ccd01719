"""A new classification head for a checkpoint: a linear probe on its backbone's features.

The base checkpoint is resolved and vetted like any model labelcast loads (pinned
revision, safetensors only) and its head is set aside: what the model computes is then
the input of the head (for BEiT, the layer-normed mean of the patch tokens). Pictures are
preprocessed on the model's device from ``uint8`` exactly as ``labelcast run`` does.

The probe is a ``torch.nn.Linear`` trained full-batch on those features (cross-entropy,
each label weighted equally, AdamW with weight decay, zero-initialised): a convex problem,
deterministic on the CPU, which is where it is trained whatever the base ran on. The
trained layer becomes the model's ``classifier``, so the written checkpoint's logits for
a picture are the probe's logits for its features.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from labelcast.errors import ModelError
from labelcast.model.checkpoint import Checkpoint, resolve_checkpoint
from labelcast.model.loading import checkpoint_preprocessor, load_torch_model, resolve_device
from labelcast.model.position_bias import cache_position_bias, uncache_position_bias
from labelcast.model.preprocess import Preprocessor

log = logging.getLogger(__name__)

LEARNING_RATE = 0.01
WEIGHT_DECAY = 0.01


@dataclass
class Base:
    """A base checkpoint loaded for feature extraction: its head replaced by the identity."""

    checkpoint: Checkpoint
    model: Any  # the transformers model, its ``classifier`` an Identity
    preprocessor: Preprocessor
    device: torch.device
    hidden_size: int


def load_base(model_id: str, revision: str | None, device: str = "auto") -> Base:
    """Resolve and load ``model_id`` in fp32 on ``device``, ready to give features."""
    checkpoint = resolve_checkpoint(model_id, revision, allow_pickle=False)
    preprocessor = checkpoint_preprocessor(checkpoint)
    model = load_torch_model(checkpoint, allow_pickle=False)
    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Linear):
        raise ModelError(
            f"model {model_id!r} ({type(model).__name__}) has no linear `classifier` head "
            "to replace; train takes image classification checkpoints such as BEiT, ViT, "
            "DeiT, ConvNeXt or Swin"
        )
    model.classifier = torch.nn.Identity()
    target = resolve_device(device)
    model = model.to(target).eval()
    cache_position_bias(model)
    return Base(checkpoint, model, preprocessor, target, head.in_features)


def extract_features(
    base: Base,
    batches: Iterable[Sequence[npt.NDArray[np.uint8]]],
    done: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Return the head's input for every picture, (N, hidden) fp32 on the CPU.

    ``batches`` yields RGB ``uint8`` pictures; ``done`` is told each batch's size.
    """
    parts = []
    with torch.no_grad():
        for pictures in batches:
            pixels = base.preprocessor(pictures, base.device, torch.float32)
            parts.append(base.model(pixel_values=pixels).logits.float().cpu())
            if done is not None:
                done(len(pictures))
    return torch.cat(parts)


def stratified_split(
    targets: Sequence[int], holdout: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split indices into (train, held out): ``holdout`` of each label, at least one, by seed.

    Each label's share is rounded, and at least one picture when ``holdout`` > 0; the
    pictures are drawn with NumPy's generator seeded with ``seed``. Both lists are sorted.
    """
    generator = np.random.default_rng(seed)
    train: list[int] = []
    held: list[int] = []
    for label in sorted(set(targets)):
        members = [index for index, target in enumerate(targets) if target == label]
        count = max(1, round(len(members) * holdout)) if holdout > 0 else 0
        order = generator.permutation(len(members))
        held += [members[i] for i in order[:count]]
        train += [members[i] for i in order[count:]]
    return sorted(train), sorted(held)


def train_linear_probe(
    features: torch.Tensor,
    targets: Sequence[int],
    num_labels: int,
    *,
    epochs: int,
    seed: int,
) -> torch.nn.Linear:
    """Train a Linear(hidden, num_labels) on ``features`` (full batch, ``epochs`` steps)."""
    labels = torch.tensor(list(targets), dtype=torch.long)
    counts = torch.bincount(labels, minlength=num_labels).clamp(min=1)
    # Each label weighs the same in the loss, however many pictures it has.
    weights = len(labels) / (num_labels * counts.float())
    with _deterministic():
        torch.manual_seed(seed)
        head = torch.nn.Linear(features.shape[1], num_labels)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
        optimizer = torch.optim.AdamW(
            head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY
        )
        for _ in range(epochs):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(head(features), labels, weight=weights)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    log.debug("linear probe: final training loss %.4f", loss.item())
    return head.eval()


def predict(head: torch.nn.Linear, features: torch.Tensor) -> list[int]:
    """Return the class the head ranks first for each row of ``features``."""
    with torch.no_grad():
        ranked: list[int] = head(features).argmax(dim=1).tolist()
    return ranked


def save_classifier(base: Base, head: torch.nn.Linear, labels: Sequence[str], out: Path) -> None:
    """Write the base model with ``head`` as its classifier: a standard checkpoint in ``out``.

    ``config.json`` (the new ``id2label``/``label2id``), ``model.safetensors`` and the base's
    ``preprocessor_config.json`` byte for byte. The base can't give features afterwards.
    """
    model = base.model
    uncache_position_bias(model)  # the wrappers would rename the saved tensors
    model.classifier = head.to(base.device)
    model.num_labels = len(labels)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: index for index, label in enumerate(labels)}
    model.cpu().save_pretrained(out)  # safetensors: transformers 5 writes no other
    source = base.checkpoint.directory / "preprocessor_config.json"
    (out / "preprocessor_config.json").write_bytes(source.read_bytes())


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic torch algorithms while training, as the caller had it afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
