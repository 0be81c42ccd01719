"""``labelcast verify``: confirm a configured model on the user's own images and hardware.

It compares the configured precision with an fp32 reference on the same device
(agreement), and, for a labelled folder (``DIR/<label>/*.jpg``), measures top-1 and
top-5 accuracy against a stated reference.

A model that already runs as the reference does (fp32 on torch, not compiled) has
nothing to compare with: verify then loads it once, says so, and skips the agreement
(a ``--min-agreement`` check is reported as skipped, not passed on a comparison of the
model with itself). Problems with the images are found before any model is loaded,
all of them at once (:func:`load_images`); torch is imported only to load the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from labelcast.config import PipelineConfig
from labelcast.errors import ConfigError, SourceError
from labelcast.labels.postprocess import Postprocess
from labelcast.model.agreement import agreement, scores
from labelcast.model.config import reference_config

if TYPE_CHECKING:
    from labelcast.model.classifier import Classifier

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# Which lower precision to suggest when the configured model is the fp32 reference.
_FASTER = {"cpu": "int8 (or bf16)", "cuda": "fp16 (or bf16)"}
_NEEDS_LABELS = "--expect-top1 needs a labelled folder ({folder}/<label>/*.jpg)"


@dataclass(frozen=True)
class VerifyThresholds:
    """What counts as a pass: accuracy near a reference, and a minimum agreement."""

    expect_top1: float | None = None
    tolerance: float = 2.0
    min_agreement: float | None = None


@dataclass(frozen=True)
class ImageSet:
    """The images verify classifies: their files, folder labels and decoded pictures."""

    folder: Path
    paths: list[Path]
    labels: list[str | None]
    pictures: list[npt.NDArray[np.uint8]]


def load_images(folder: Path, thresholds: VerifyThresholds) -> tuple[ImageSet, list[str]]:
    """Find and decode the images; return them with every problem found without a model.

    All of them at once (a missing folder, each unreadable image, ``--expect-top1``
    without labelled subfolders), so that a user fixes them in one go before waiting
    for a model to load.
    """
    empty = ImageSet(folder, [], [], [])
    try:
        found = find_images(folder)
    except ConfigError as exc:
        return empty, [str(exc)]
    problems = []
    readable: list[tuple[Path, str | None, npt.NDArray[np.uint8]]] = []
    for path, label in found:
        try:
            readable.append((path, label, read_image(path)))
        except SourceError as exc:
            problems.append(str(exc))
    if thresholds.expect_top1 is not None and all(label is None for _, label in found):
        problems.append(_NEEDS_LABELS.format(folder=folder))
    images = ImageSet(
        folder,
        [path for path, _, _ in readable],
        [label for _, label, _ in readable],
        [picture for _, _, picture in readable],
    )
    return images, problems


def find_images(folder: Path) -> list[tuple[Path, str | None]]:
    """List image files under ``folder``; images in a subfolder are labelled by its name."""
    if not folder.exists():
        raise ConfigError(f"--images {folder}: no such directory")
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


def read_image(path: Path, *, strict: bool = False) -> npt.NDArray[np.uint8]:
    """Decode one image file to an RGB ``uint8`` array with FFmpeg.

    ``strict``: refuse a damaged file that FFmpeg would decode anyway (a truncated JPEG
    comes out with its missing part grey).
    """
    import av
    import av.error

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if strict:
                stream.codec_context.options = {"err_detect": "explode"}
            frame = next(container.decode(stream))
            image: npt.NDArray[np.uint8] = frame.to_ndarray(format="rgb24")
            return image
    except (av.error.FFmpegError, StopIteration, IndexError) as exc:
        raise SourceError(f"{path}: not a readable image ({exc})") from exc


def verify(
    config: PipelineConfig, images: ImageSet, thresholds: VerifyThresholds
) -> dict[str, Any]:
    """Run the checks on ``images`` and return the report (``report["passed"]``: pass or fail).

    The reference is fp32 torch on the configured device, whatever the configured
    precision and backend (``model.backend: onnxruntime`` is compared with torch). If
    the configured model is that reference already, it is loaded once and the report's
    ``agreement`` is None, with ``nothing_to_compare`` saying why.
    """
    from labelcast.model.classifier import Classifier

    configured = Classifier.load(config.model)
    labelled = [(index, label) for index, label in enumerate(images.labels) if label is not None]
    if labelled:
        # Before any image is classified: a misnamed folder is found in seconds.
        _check_folder_names(config, configured, {label for _, label in labelled})
    batch = config.model.batch.max_size
    logits = _logits(configured, images.pictures, batch)
    report: dict[str, Any] = {
        "model": {
            "id": configured.info.id,
            "revision": configured.info.revision,
            "device": configured.info.device,
            "precision": configured.info.precision,
            "backend": configured.info.backend,
            "scoring": configured.info.scoring,
        },
        "images": len(images.pictures),
    }
    same = _nothing_to_compare(config, configured)
    if same is None:
        # The reference is always fp32 torch, also when the configured backend is onnxruntime.
        reference = Classifier.load(reference_config(config.model), precision="fp32")
        report["reference"] = {
            "device": reference.info.device,
            "precision": "fp32",
            "backend": "torch",
        }
        report["agreement"] = agreement(
            logits, _logits(reference, images.pictures, batch), configured.info.scoring
        )
    else:
        report["reference"] = None
        report["agreement"] = None
        report["nothing_to_compare"] = same
    checks: list[dict[str, Any]] = []
    if thresholds.min_agreement is not None:
        checks.append(_agreement_check(report, thresholds.min_agreement))
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
        raise ConfigError(_NEEDS_LABELS.format(folder=images.folder))
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
    ]
    if agreement is None:
        lines.append(f"agreement with fp32: {report['nothing_to_compare']}")
    else:
        lines.append(
            f"agreement with fp32: top-1 {agreement['top1_agreement_pct']:.2f}%, top-5 overlap "
            f"{agreement['top5_overlap_pct']:.2f}%, |Δ logit| max "
            f"{agreement['max_abs_logit_diff']:.4g} mean {agreement['mean_abs_logit_diff']:.4g}"
        )
    if "accuracy" in report:
        accuracy = report["accuracy"]
        lines.append(
            f"accuracy on {accuracy['images']} labelled images: top-1 "
            f"{accuracy['top1_pct']:.2f}%, top-5 {accuracy['top5_pct']:.2f}%"
        )
    for check in report["checks"]:
        verdict = "PASS" if check["passed"] else "FAIL"
        if "skipped" in check:
            lines.append(
                f"SKIP: top-1 agreement (minimum {check['minimum']:.2f}%): {check['skipped']}"
            )
        elif check["check"] == "top1_pct":
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


def _nothing_to_compare(config: PipelineConfig, configured: Classifier) -> str | None:
    """Why the configured model needs no fp32 reference (it is one), or None if it does.

    fp32 on torch, not compiled, is exactly what the reference loads: comparing the two
    would load the model twice to report 100 %. Another backend (ONNX Runtime, Triton)
    or a compiled model at fp32 still differs from the reference, so it is compared.
    """
    info = configured.info
    if info.backend != "torch" or info.precision != "fp32" or config.model.compile != "none":
        return None
    faster = _FASTER.get(info.device.split(":")[0], "PRECISION")
    return (
        f"nothing to compare: the model runs in fp32 on torch ({info.device}), the reference "
        f"itself; to measure a faster precision, run verify with --set model.precision={faster}"
    )


def _agreement_check(report: dict[str, Any], minimum: float) -> dict[str, Any]:
    """Make the ``--min-agreement`` check: skipped when there is nothing to compare."""
    check: dict[str, Any] = {"check": "top1_agreement_pct", "minimum": minimum}
    if report["agreement"] is None:
        # Not passed on the strength of the model agreeing with itself, and not failed:
        # fp32 is what the check guards against drifting from.
        skipped = "nothing to compare (the model is the fp32 reference)"
        return {**check, "value": None, "passed": True, "skipped": skipped}
    top1 = report["agreement"]["top1_agreement_pct"]
    return {**check, "value": top1, "passed": top1 >= minimum}


def _logits(
    classifier: Classifier, pictures: list[npt.NDArray[np.uint8]], batch: int
) -> npt.NDArray[np.float32]:
    import torch

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
    probs = scores(logits[[i for i, _ in labelled]], classifier.info.scoring).astype(np.float32)
    predictions = postprocess.labels(probs)
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


def _check_folder_names(config: PipelineConfig, classifier: Classifier, names: set[str]) -> None:
    """Raise ConfigError naming the folders whose names are not labels of the model."""
    known = set(config.labels.map.values()) | set(classifier.id2label.values())
    unknown = sorted(names - known)
    if unknown:
        raise ConfigError(
            f"--images: folder names {unknown} are not labels of this model "
            "(use names from its id2label or model.prompts, or from labels.map)"
        )
