"""The snapshot folder on disk: writing a picture and its sidecar, keeping ``max_files``.

Each file appears whole: it is written under a hidden temporary name and renamed, the
sidecar before the picture, so a reader that lists ``*.jpg`` finds its ``.json`` too.
Every error is an OSError for the sink to report.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from labelcast.util.paths import ensure_folder
from labelcast.util.snapshots import snapshot_order, snapshot_stem


class SnapshotFolder:
    """Snapshots under ``<root>/<subject>/<label folder>/``, at most ``max_files`` a subject.

    Each picture is ``<time>.jpg`` with ``<time>.json`` beside it; beyond the bound the
    subject's oldest go first.

    A subject's pictures are counted from disk the first time it saves one (so a restart
    keeps the bound) and counted again whenever the count passes the bound (so pictures
    moved away meanwhile, by the labelling page, are not counted twice).
    """

    def __init__(self, root: Path, max_files: int) -> None:
        self.root = root
        self.max_files = max_files
        self._counts: dict[str, int] = {}  # subject path -> pictures on disk
        self._last_stem: dict[str, tuple[str, int]] = {}  # subject path -> last (time, -N)
        self.removed = 0  # pictures removed to keep the bound

    def save(
        self, subject: str, folder: str, captured_at: float, jpeg: bytes, sidecar: dict[str, Any]
    ) -> Path:
        """Write one picture and its sidecar; return the picture's path. Raises OSError."""
        subject_dir = self.root / subject
        if subject not in self._counts:
            self._counts[subject] = len(self._pictures(subject_dir))
        label_dir = subject_dir / folder
        ensure_folder(label_dir)
        picture = label_dir / f"{self._stem(subject, label_dir, captured_at)}.jpg"
        _write_whole(picture.with_suffix(".json"), _sidecar_bytes(sidecar))
        _write_whole(picture, jpeg)
        self._counts[subject] += 1
        if self._counts[subject] > self.max_files:
            self._trim(subject, subject_dir)
        return picture

    @staticmethod
    def rewrite_sidecar(picture: Path, sidecar: dict[str, Any]) -> None:
        """Replace the sidecar of ``picture`` (whole, like the first one). Raises OSError.

        A picture moved away meanwhile (sorted by the labelling page) is left alone.
        """
        if picture.exists():
            _write_whole(picture.with_suffix(".json"), _sidecar_bytes(sidecar))

    def _stem(self, subject: str, label_dir: Path, captured_at: float) -> str:
        """Return a file name unique within the subject: its capture time, with -N if taken."""
        base = snapshot_stem(captured_at)
        last = self._last_stem.get(subject)
        count = last[1] + 1 if last is not None and last[0] == base else 0
        while (label_dir / f"{snapshot_stem(captured_at, count)}.jpg").exists():
            count += 1  # a picture of an earlier run, captured in the same millisecond
        self._last_stem[subject] = (base, count)
        return snapshot_stem(captured_at, count)

    def _trim(self, subject: str, subject_dir: Path) -> None:
        """Remove the subject's oldest pictures (and sidecars) beyond ``max_files``."""
        pictures = self._pictures(subject_dir)
        excess = len(pictures) - self.max_files
        for picture in pictures[: max(0, excess)]:
            picture.unlink(missing_ok=True)
            picture.with_suffix(".json").unlink(missing_ok=True)
            self.removed += 1
        self._counts[subject] = min(len(pictures), self.max_files)

    @staticmethod
    def _pictures(subject_dir: Path) -> list[Path]:
        """Return the subject's snapshot pictures on disk, oldest first (by their names' times).

        Only ``<label folder>/<time>.jpg`` count: region folders below a stream's folder
        hold folders, not pictures, and files not named like snapshots are left alone.
        """
        found: list[tuple[tuple[str, int], Path]] = []
        try:
            folders = [entry for entry in os.scandir(subject_dir) if entry.is_dir()]
        except FileNotFoundError:
            return []
        for folder in folders:
            for entry in os.scandir(folder.path):
                name = entry.name
                key = snapshot_order(name[:-4]) if name.endswith(".jpg") else None
                if key is not None and entry.is_file():
                    found.append((key, Path(entry.path)))
        found.sort()
        return [path for _, path in found]


def _sidecar_bytes(sidecar: dict[str, Any]) -> bytes:
    return (json.dumps(sidecar, ensure_ascii=False, indent=2) + "\n").encode()


def _write_whole(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` under a hidden temporary name, then rename it into place."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_bytes(data)
        temporary.replace(path)
    except OSError:
        with contextlib.suppress(OSError):  # a read-only disk refuses this too
            temporary.unlink(missing_ok=True)
        raise
