"""How closely two runs of a classifier agree: top-1, top-5 overlap and logit differences."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def agreement(
    logits: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32],
    scoring: str = "softmax",
) -> dict[str, float]:
    """Compare logits (N, C) with reference logits of the same frames.

    Returns top-1 agreement and mean top-5 overlap in percent, the max and mean
    absolute logit difference, and the max absolute difference of the scores
    (``scoring``: softmax, or sigmoid for SigLIP checkpoints).
    """
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    top_ref = np.argsort(-reference, axis=1)[:, :k]
    overlap = [len(set(a) & set(b)) / k for a, b in zip(top, top_ref, strict=True)]
    difference = np.abs(logits - reference)
    return {
        "top1_agreement_pct": float(np.mean(top[:, 0] == top_ref[:, 0]) * 100),
        "top5_overlap_pct": float(np.mean(overlap) * 100),
        "max_abs_logit_diff": float(difference.max()),
        "mean_abs_logit_diff": float(difference.mean()),
        "max_abs_score_diff": float(
            np.abs(scores(logits, scoring) - scores(reference, scoring)).max()
        ),
    }


def scores(logits: npt.NDArray[np.float32], scoring: str = "softmax") -> npt.NDArray[np.float64]:
    """Turn (N, C) logits into scores: softmax over each row, or a sigmoid of each logit."""
    if scoring == "sigmoid":
        sigmoid: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        return sigmoid
    return _softmax(logits)


def _softmax(logits: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: npt.NDArray[np.float64] = exp / exp.sum(axis=1, keepdims=True)
    return result
