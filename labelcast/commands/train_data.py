"""``labelcast train``'s data folder: ``DATA_DIR/<label>/*.jpg``, checked before any model loads.

Each folder directly under DATA_DIR is a label, named by the folder; its pictures are the
image files directly in it (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, ``.webp``, any case).
Hidden files and folders (``.DS_Store``, ``._x.jpg``) and files that are not pictures (the
snapshot sink's ``.json`` sidecars, notes) are skipped; so are subfolders of a label
folder. Every problem is found at once, without torch: fewer than two labels, a label with
too few pictures, each picture FFmpeg cannot decode completely (a truncated JPEG included).

How many pictures a label needs: at least :data:`MIN_PER_LABEL`, so that the holdout gets
one or more of each label and training keeps the rest; 20-40 per label is what a strong
backbone such as BEiT needs to tell a few states of one camera apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from labelcast.commands.train_command import MAX_HOLDOUT, MIN_PER_LABEL, OUTPUT_FILES
from labelcast.commands.verify import IMAGE_SUFFIXES, read_image
from labelcast.errors import SourceError


@dataclass(frozen=True)
class TrainingData:
    """The labels (sorted: their class ids) and each picture's file and class id."""

    folder: Path
    labels: list[str]
    paths: list[Path]
    targets: list[int]
    skipped: list[Path]  # files that are not pictures, or hidden, or in subfolders

    def counts(self) -> dict[str, int]:
        """Pictures per label."""
        return {label: self.targets.count(index) for index, label in enumerate(self.labels)}

    def pictures(self, indices: Iterable[int]) -> list[npt.NDArray[np.uint8]]:
        """Decode the pictures at ``indices`` to RGB ``uint8`` (they were checked readable)."""
        return [read_image(self.paths[index], strict=True) for index in indices]


def load_training_data(folder: Path) -> tuple[TrainingData, list[str]]:
    """Find the labels and pictures of ``folder``; return them and every problem found.

    Each picture is decoded once here to find damaged files before a model is loaded
    (feature extraction decodes it again, a batch at a time, rather than hold every
    picture of a large folder in memory).
    """
    empty = TrainingData(folder, [], [], [], [])
    if not folder.exists():
        return empty, [f"{folder}: no such directory"]
    if not folder.is_dir():
        return empty, [f"{folder}: not a directory (DATA_DIR/<label>/*.jpg)"]
    problems: list[str] = []
    skipped: list[Path] = []
    found: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if entry.suffix.lower() in IMAGE_SUFFIXES:
                problems.append(
                    f"{entry}: a picture directly in {folder} has no label; move it into "
                    f"{folder}/<label>/"
                )
            else:
                skipped.append(entry)
            continue
        pictures = []
        for path in sorted(entry.iterdir()):
            if path.is_file() and not path.name.startswith(".") and _is_picture(path):
                pictures.append(path)
            else:
                skipped.append(path)
        found[entry.name] = pictures
    problems += _count_problems(folder, found)
    labels = sorted(found)
    paths = [path for label in labels for path in found[label]]
    targets = [index for index, label in enumerate(labels) for _ in found[label]]
    for path in paths:
        try:
            read_image(path, strict=True)
        except SourceError as exc:
            problems.append(f"{exc}; remove it or replace it")
    return TrainingData(folder, labels, paths, targets, skipped), problems


def holdout_problem(holdout: float) -> str | None:
    """Why ``--holdout`` can't be used, or None."""
    if not 0 <= holdout <= MAX_HOLDOUT:
        return (
            f"--holdout {holdout}: must be from 0 (train on every picture, no accuracy "
            f"measured) to {MAX_HOLDOUT}; 0.2 holds out a fifth of each label's pictures"
        )
    return None


def _is_picture(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _count_problems(folder: Path, found: dict[str, list[Path]]) -> list[str]:
    layout = f"{folder}/<label>/*.jpg, one folder per label"
    if not found:
        return [f"{folder}: no label folders; train needs at least 2 ({layout})"]
    problems = []
    if len(found) == 1:
        (only,) = found
        problems.append(
            f"{folder / only}: the only label folder; train needs at least 2 labels to tell "
            f"apart ({layout})"
        )
    for label, pictures in sorted(found.items()):
        if len(pictures) < MIN_PER_LABEL:
            problems.append(
                f"{folder / label}: {len(pictures)} picture(s); each label needs at least "
                f"{MIN_PER_LABEL} (20-40 recommended)"
            )
    return problems


def output_problem(out: Path, data_folder: Path, *, force: bool) -> str | None:
    """Why ``-o OUT`` can't be written, or None: a file, a non-empty folder, inside DATA_DIR."""
    if out.exists() and not out.is_dir():
        return f"-o {out}: exists and is not a directory"
    if out.resolve().is_relative_to(data_folder.resolve()):
        # The next run would take it for a label folder.
        return f"-o {out}: inside the data folder {data_folder}; write the checkpoint elsewhere"
    if out.is_dir() and any(out.iterdir()) and not force:
        return (
            f"-o {out}: not empty; choose a new folder, or add --force to replace the files "
            f"train writes there ({', '.join(OUTPUT_FILES)})"
        )
    return None
