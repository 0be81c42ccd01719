"""Start-up self-check: the configured precision against fp32 on the first real frames."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from labelcast.model.agreement import agreement
from labelcast.model.backends.base import Backend
from labelcast.model.classifier import Classifier
from labelcast.model.config import ModelConfig, reference_config

log = logging.getLogger(__name__)

SELF_CHECK_FRAMES = 8


@runtime_checkable
class GivesLogits(Protocol):
    """A backend whose logits can be compared with an fp32 reference (a :class:`Classifier`)."""

    def logits(self, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Return the logits as fp32 numpy, shape (len(images), num_labels)."""
        ...


def self_check_wanted(config: ModelConfig, backend: Backend) -> bool:
    """Whether to self-check: as configured, or (auto) for fp16/bf16 on CUDA.

    Never for a backend that gives no logits (an application's own classifier).
    """
    if not isinstance(backend, GivesLogits):
        return False
    if config.self_check != "auto":
        return config.self_check == "on"
    info = backend.info
    if info.backend == "triton":
        return False  # a gateway has no weights for a local reference; the server may
    return info.device.startswith("cuda") and info.precision in ("fp16", "bf16")


def run_self_check(
    config: ModelConfig, backend: Backend, images: Sequence[npt.NDArray[np.uint8]]
) -> dict[str, float]:
    """Classify ``images`` with an fp32 copy of the model and log how far the results differ.

    Logs a warning with the numbers when top-1 differs on any frame or a score moves
    by more than ``model.self_check_max_score_diff``; returns the numbers.
    """
    if not isinstance(backend, GivesLogits):
        raise TypeError(f"{type(backend).__name__} gives no logits to self-check")
    frames = list(images[:SELF_CHECK_FRAMES])
    reference = Classifier.load(reference_config(config), precision="fp32")
    result = agreement(backend.logits(frames), reference.logits(frames), reference.info.scoring)
    del reference
    summary = (
        "%s vs fp32 on %d frames: top-1 agreement %.1f%%, max |score diff| %.4f, "
        "max |logit diff| %.4f"
    )
    arguments = (
        backend.info.precision,
        len(frames),
        result["top1_agreement_pct"],
        result["max_abs_score_diff"],
        result["max_abs_logit_diff"],
    )
    if (
        result["top1_agreement_pct"] < 100.0
        or result["max_abs_score_diff"] > config.self_check_max_score_diff
    ):
        log.warning(
            "self-check: " + summary + " (beyond model.self_check_max_score_diff %.4f; "
            "consider precision: fp32, or run labelcast verify)",
            *arguments,
            config.self_check_max_score_diff,
        )
    else:
        log.info("self-check passed: " + summary, *arguments)
    return result
