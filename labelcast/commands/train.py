"""``labelcast train``: a new classification head for a base checkpoint, from labelled pictures.

The pictures of ``DATA_DIR/<label>/`` (checked by ``train_data.py`` before this runs) go
through the base checkpoint in batches, preprocessed on its device as ``labelcast run``
does, with a progress bar; a linear probe is trained on their features (``model/probe.py``)
with a stratified share of each label held out; the held-out top-1 accuracy and the
confusion between labels are reported; and the base model with the new head is written to
``-o`` as a standard Hugging Face checkpoint with a model card.

Everything is written into a temporary folder beside ``-o`` first, then moved into place:
a failed run leaves ``-o`` as it was.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from labelcast.commands.train_card import model_card
from labelcast.commands.train_command import DEFAULT_EPOCHS
from labelcast.commands.train_data import TrainingData
from labelcast.model import probe

log = logging.getLogger(__name__)

# The confusion table's top-left cell: rows are the true labels, columns the predictions.
_CORNER = "true \\ predicted"


@dataclass(frozen=True)
class TrainOptions:
    """What ``labelcast train`` was asked: the base, the split, the training, the output."""

    out: Path
    base: str
    revision: str | None
    holdout: float = 0.2
    seed: int = 0
    epochs: int = DEFAULT_EPOCHS
    device: str = "auto"
    batch_size: int = 32
    command: str = "labelcast train"


def train(data: TrainingData, options: TrainOptions) -> dict[str, Any]:
    """Train a head on ``data`` and write the checkpoint; return the report."""
    started = time.monotonic()
    train_ids, held_ids = probe.stratified_split(data.targets, options.holdout, options.seed)
    base = probe.load_base(options.base, options.revision, options.device)
    loaded = time.monotonic()
    features = _features(base, data, options.batch_size)
    extracted = time.monotonic()
    train_targets = [data.targets[i] for i in train_ids]
    head = probe.train_linear_probe(
        features[train_ids],
        train_targets,
        len(data.labels),
        epochs=options.epochs,
        seed=options.seed,
    )
    trained = time.monotonic()
    report: dict[str, Any] = {
        "output": str(options.out),
        "base": {"id": options.base, "revision": base.checkpoint.revision},
        "device": str(base.device),
        "labels": data.labels,
        "pictures": {
            label: {
                "train": sum(data.targets[i] == index for i in train_ids),
                "holdout": sum(data.targets[i] == index for i in held_ids),
            }
            for index, label in enumerate(data.labels)
        },
        "holdout": options.holdout,
        "seed": options.seed,
        "epochs": options.epochs,
        "head": "linear probe",
        "hidden_size": base.hidden_size,
        "train_top1_pct": _accuracy(probe.predict(head, features[train_ids]), train_targets),
        **_held_out(data, head, features, held_ids),
        "command": options.command,
    }
    license_name = base.checkpoint.license()
    _write(options.out, lambda folder: _save(base, head, data, report, license_name, folder))
    report["seconds"] = {
        "load_base": round(loaded - started, 2),
        "features": round(extracted - loaded, 2),
        "train": round(trained - extracted, 2),
        "total": round(time.monotonic() - started, 2),
    }
    return report


def format_report(report: dict[str, Any]) -> str:
    """Render a train report for a terminal."""
    base = report["base"]
    counts = ", ".join(
        f"{label} {c['train']}+{c['holdout']}" for label, c in report["pictures"].items()
    )
    lines = [
        f"wrote {report['output']}: {base['id']} (revision {base['revision'] or 'local'}) "
        f"with a new head for {len(report['labels'])} labels",
        f"pictures (train+held out): {counts}",
        f"training top-1: {report['train_top1_pct']:.1f}%",
    ]
    seconds = report.get("seconds")
    if seconds is not None:
        lines.append(
            f"took {seconds['total']:.1f} s: base loaded in {seconds['load_base']:.1f} s, "
            f"features {seconds['features']:.1f} s, head trained in {seconds['train']:.1f} s"
        )
    accuracy = report["holdout_top1_pct"]
    if accuracy is None:
        lines.append("held-out top-1: not measured (--holdout 0: every picture trained on)")
        return "\n".join(lines)
    held = report["held_out"]
    right = sum(1 for item in held if item["predicted"] == item["label"])
    lines.append(f"held-out top-1: {accuracy:.1f}% ({right}/{len(held)} pictures)")
    labels = report["labels"]
    width = max(len(label) for label in [*labels, _CORNER])
    columns = [max(len(label), 5) for label in labels]
    header = "  ".join(label.rjust(w) for label, w in zip(labels, columns, strict=True))
    lines.append(f"{_CORNER.ljust(width)}  {header}")
    for label, row in zip(labels, report["confusion"], strict=True):
        cells = "  ".join(str(n).rjust(w) for n, w in zip(row, columns, strict=True))
        lines.append(f"{label.ljust(width)}  {cells}")
    wrong = [item for item in held if item["predicted"] != item["label"]]
    for item in wrong[:10]:
        lines.append(f"  wrong: {item['file']} ({item['label']}) taken for {item['predicted']}")
    if len(wrong) > 10:
        lines.append(f"  ... and {len(wrong) - 10} more (--json lists every held-out picture)")
    return "\n".join(lines)


def _features(base: probe.Base, data: TrainingData, batch_size: int) -> torch.Tensor:
    """Every picture's features, a batch at a time, with a progress bar on a terminal."""
    count = len(data.paths)
    log.info(
        "extracting the features of %d pictures with %s on %s, batches of %d",
        count,
        base.checkpoint.id,
        base.device,
        batch_size,
    )

    def batches() -> Iterator[list[npt.NDArray[np.uint8]]]:
        for start in range(0, count, batch_size):
            yield data.pictures(range(start, min(start + batch_size, count)))

    started = time.monotonic()
    # disable=None: a bar only when stderr is a terminal; a log line either way at the end.
    with (
        logging_redirect_tqdm(),
        tqdm(total=count, desc="features", unit=" pictures", disable=None) as bar,
    ):
        features = probe.extract_features(base, batches(), bar.update)
    took = time.monotonic() - started
    log.info("features of %d pictures in %.1f s (%.2f pictures/s)", count, took, count / took)
    return features


def _held_out(
    data: TrainingData, head: torch.nn.Linear, features: torch.Tensor, held_ids: Sequence[int]
) -> dict[str, Any]:
    """Return the held-out accuracy, confusion matrix (rows true, columns predicted), pictures."""
    if not held_ids:
        return {"holdout_top1_pct": None, "confusion": None, "held_out": []}
    predicted = probe.predict(head, features[list(held_ids)])
    truth = [data.targets[i] for i in held_ids]
    size = len(data.labels)
    confusion = [[0] * size for _ in range(size)]
    for true, guess in zip(truth, predicted, strict=True):
        confusion[true][guess] += 1
    return {
        "holdout_top1_pct": _accuracy(predicted, truth),
        "confusion": confusion,
        "held_out": [
            {
                "file": str(data.paths[i]),
                "label": data.labels[true],
                "predicted": data.labels[guess],
            }
            for i, true, guess in zip(held_ids, truth, predicted, strict=True)
        ],
    }


def _accuracy(predicted: list[int], truth: list[int]) -> float:
    right = sum(p == t for p, t in zip(predicted, truth, strict=True))
    return round(100 * right / len(predicted), 2)


def _save(
    base: probe.Base,
    head: torch.nn.Linear,
    data: TrainingData,
    report: dict[str, Any],
    license_name: str | None,
    folder: Path,
) -> None:
    probe.save_classifier(base, head, data.labels, folder)
    card = model_card(report, license_name, local=base.checkpoint.revision is None)
    (folder / "README.md").write_text(card, encoding="utf-8")


def _write(out: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(folder)`` on a temporary folder beside ``out``, then move its files in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        write(Path(tmp))
        out.mkdir(exist_ok=True)
        written = sorted(path.name for path in Path(tmp).iterdir())
        mode = 0o666 & ~_umask()
        for name in written:
            # Some writers (safetensors) make owner-only files; a daemon running as
            # another user must read the checkpoint like any file made here.
            os.chmod(Path(tmp) / name, mode)
            os.replace(Path(tmp) / name, out / name)
    others = sorted(p.name for p in out.iterdir() if p.name not in written)
    if others:
        log.warning("%s: left as they were (not written by train): %s", out, ", ".join(others))


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask
