"""Start-up self-check: the configured precision against fp32 on the first real frames."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from labelcast.pipeline.agreement import agreement
from labelcast.pipeline.classifier import Classifier, ModelConfig, reference_config

log = logging.getLogger(__name__)

SELF_CHECK_FRAMES = 8


def self_check_wanted(config: ModelConfig, classifier: Classifier) -> bool:
    """Whether to self-check: as configured, or (auto) for fp16/bf16 on CUDA."""
    if config.self_check != "auto":
        return config.self_check == "on"
    info = classifier.info
    if info.backend == "triton":
        return False  # a gateway has no weights for a local reference; the server may
    return info.device.startswith("cuda") and info.precision in ("fp16", "bf16")


def run_self_check(
    config: ModelConfig, classifier: Classifier, images: Sequence[npt.NDArray[np.uint8]]
) -> dict[str, float]:
    """Classify ``images`` with an fp32 copy of the model and log how far the results differ.

    Logs a warning with the numbers when top-1 differs on any frame or a score moves
    by more than ``model.self_check_max_score_diff``; returns the numbers.
    """
    frames = list(images[:SELF_CHECK_FRAMES])
    reference = Classifier.load(reference_config(config), precision="fp32")
    result = agreement(classifier.logits(frames), reference.logits(frames))
    del reference
    summary = (
        "%s vs fp32 on %d frames: top-1 agreement %.1f%%, max |score diff| %.4f, "
        "max |logit diff| %.4f"
    )
    arguments = (
        classifier.info.precision,
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
