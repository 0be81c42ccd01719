"""``labelcast verify``: confirm a configured model on the user's own images and hardware.

It compares the configured precision with an fp32 reference on the same device
(agreement), and, for a labelled folder (``DIR/<label>/*.jpg``), measures top-1 and
top-5 accuracy against a stated reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
import numpy.typing as npt
import torch

from labelcast.config import PipelineConfig
from labelcast.errors import ConfigError, SourceError
from labelcast.labels.postprocess import Postprocess
from labelcast.model.agreement import agreement
from labelcast.model.classifier import Classifier
from labelcast.model.config import reference_config

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass(frozen=True)
class VerifyThresholds:
    """What counts as a pass: accuracy near a reference, and a minimum agreement."""

    expect_top1: float | None = None
    tolerance: float = 2.0
    min_agreement: float | None = None


def find_images(folder: Path) -> list[tuple[Path, str | None]]:
    """List image files under ``folder``; images in a subfolder are labelled by its name."""
    if not folder.is_dir():
        raise ConfigError(f"--images {folder}: not a directory")
    found = [
        (path, path.parent.name if path.parent != folder else None)
        for path in sorted(folder.rglob("*"))
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not found:
        raise ConfigError(f"--images {folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def read_image(path: Path) -> npt.NDArray[np.uint8]:
    """Decode one image file to an RGB ``uint8`` array with FFmpeg."""
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            image: npt.NDArray[np.uint8] = frame.to_ndarray(format="rgb24")
            return image
    except (av.error.FFmpegError, StopIteration) as exc:
        raise SourceError(f"{path}: not a readable image ({exc})") from exc


def verify(config: PipelineConfig, folder: Path, thresholds: VerifyThresholds) -> dict[str, Any]:
    """Run the checks and return the report (``report["passed"]`` says pass or fail).

    The reference is fp32 torch on the configured device, whatever the configured
    precision and backend (``model.backend: onnxruntime`` is compared with torch).
    """
    images = find_images(folder)
    pictures = [read_image(path) for path, _ in images]
    configured = Classifier.load(config.model)
    # The reference is always fp32 torch, also when the configured backend is onnxruntime.
    reference = Classifier.load(reference_config(config.model), precision="fp32")
    batch = config.model.batch.max_size
    logits = _logits(configured, pictures, batch)
    reference_logits = _logits(reference, pictures, batch)
    report: dict[str, Any] = {
        "model": {
            "id": configured.info.id,
            "revision": configured.info.revision,
            "device": configured.info.device,
            "precision": configured.info.precision,
            "backend": configured.info.backend,
        },
        "reference": {"device": reference.info.device, "precision": "fp32", "backend": "torch"},
        "images": len(images),
        "agreement": agreement(logits, reference_logits),
    }
    checks: list[dict[str, Any]] = []
    if thresholds.min_agreement is not None:
        top1 = report["agreement"]["top1_agreement_pct"]
        checks.append(
            {
                "check": "top1_agreement_pct",
                "value": top1,
                "minimum": thresholds.min_agreement,
                "passed": top1 >= thresholds.min_agreement,
            }
        )
    labelled = [(index, label) for index, (_, label) in enumerate(images) if label is not None]
    if labelled:
        report["accuracy"] = _accuracy(config, configured, logits, labelled)
        if thresholds.expect_top1 is not None:
            top1 = report["accuracy"]["top1_pct"]
            difference = top1 - thresholds.expect_top1
            checks.append(
                {
                    "check": "top1_pct",
                    "value": top1,
                    "expected": thresholds.expect_top1,
                    "difference": round(difference, 3),
                    "tolerance": thresholds.tolerance,
                    "passed": abs(difference) <= thresholds.tolerance,
                }
            )
    elif thresholds.expect_top1 is not None:
        raise ConfigError(f"--expect-top1 needs a labelled folder ({folder}/<label>/*.jpg)")
    report["checks"] = checks
    report["passed"] = all(check["passed"] for check in checks)
    return report


def format_report(report: dict[str, Any]) -> str:
    """Render a verify report for a terminal."""
    model, agreement = report["model"], report["agreement"]
    lines = [
        f"model {model['id']} (revision {model['revision'] or 'local'}) on {model['device']} "
        f"in {model['precision']}"
        + (f" ({model['backend']})" if model.get("backend", "torch") != "torch" else "")
        + f", {report['images']} images",
        f"agreement with fp32: top-1 {agreement['top1_agreement_pct']:.2f}%, top-5 overlap "
        f"{agreement['top5_overlap_pct']:.2f}%, |Δ logit| max {agreement['max_abs_logit_diff']:.4g}"
        f" mean {agreement['mean_abs_logit_diff']:.4g}",
    ]
    if "accuracy" in report:
        accuracy = report["accuracy"]
        lines.append(
            f"accuracy on {accuracy['images']} labelled images: top-1 "
            f"{accuracy['top1_pct']:.2f}%, top-5 {accuracy['top5_pct']:.2f}%"
        )
    for check in report["checks"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        if check["check"] == "top1_pct":
            lines.append(
                f"{verdict}: top-1 {check['value']:.2f}% vs expected "
                f"{check['expected']:.2f}% (difference {check['difference']:+.2f}, "
                f"tolerance ±{check['tolerance']:.2f} points)"
            )
        else:
            lines.append(
                f"{verdict}: top-1 agreement {check['value']:.2f}% "
                f"(minimum {check['minimum']:.2f}%)"
            )
    return "\n".join(lines)


def _logits(
    classifier: Classifier, pictures: list[npt.NDArray[np.uint8]], batch: int
) -> npt.NDArray[np.float32]:
    parts = []
    for start in range(0, len(pictures), batch):
        with torch.inference_mode():
            tensor = classifier.forward(classifier.preprocess(pictures[start : start + batch]))
            parts.append(tensor.float().cpu().numpy())
    result: npt.NDArray[np.float32] = np.concatenate(parts)
    return result


def _accuracy(
    config: PipelineConfig,
    classifier: Classifier,
    logits: npt.NDArray[np.float32],
    labelled: list[tuple[int, str]],
) -> dict[str, Any]:
    # Folder names are compared with labels as events name them (after labels.map), but
    # without the event filters, which would hide a wrong answer rather than score it.
    rules = config.labels.model_copy(
        update={"top_k": 5, "min_score": 0.0, "include": [], "exclude": []}
    )
    postprocess = Postprocess(rules, classifier.id2label)
    probs = torch.from_numpy(logits[[i for i, _ in labelled]]).softmax(dim=-1).numpy()
    predictions = postprocess.labels(probs)
    names = set(config.labels.map.values()) | set(classifier.id2label.values())
    unknown = sorted({label for _, label in labelled} - names)
    if unknown:
        raise ConfigError(
            f"--images: folder names {unknown} are not labels of this model "
            "(use names from its id2label, or from labels.map)"
        )
    top1 = [
        labels[0].label == truth for labels, (_, truth) in zip(predictions, labelled, strict=True)
    ]
    top5 = [
        truth in {lb.label for lb in labels}
        for labels, (_, truth) in zip(predictions, labelled, strict=True)
    ]
    return {
        "images": len(labelled),
        "top1_pct": float(np.mean(top1) * 100),
        "top5_pct": float(np.mean(top5) * 100),
    }
