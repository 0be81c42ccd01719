"""The /label page's files: the snapshot sink's pictures, and moving them into a training folder.

The snapshot folder holds ``<subject>/<predicted label>/<time>.jpg`` with a ``<time>.json``
sidecar beside each picture, where the subject is ``<stream>`` or ``<stream>/<region>``:
a folder holding pictures is a label folder and its parent path names the subject. The
training folder holds ``<label>/<name>.jpg``, what ``labelcast train`` reads.

Every name a client sends is checked here before any file is touched: a relative path of
plain segments (no ``..``, no hidden names) that, resolved, stays under its root, so
neither a crafted name nor a symbolic link reaches a file outside the configured folders.
Moves are race-safe without a lock: a picture is hard-linked to its new name (never over
an existing one) and only then unlinked; whoever fails to unlink it was second and
takes its link back.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import logging
import os
import shutil
import threading
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelcast.util.paths import ensure_folder
from labelcast.util.snapshots import label_folder

log = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".jpg"
TRAINING_SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_LABEL_BYTES = 200  # file systems allow 255 bytes a name; leave room for suffixes
MAX_FILES_PER_REQUEST = 1000
_MAX_SIDECAR_BYTES = 1 << 20
_MAX_PICTURE_BYTES = 32 << 20
THUMBNAIL_SIZE = 320


class LabelPageError(Exception):
    """A request the /label page cannot do; ``status`` is the HTTP status to answer."""

    status = 500


class BadRequest(LabelPageError):
    """The request names a file or label that is not allowed (answered 400)."""

    status = 400


class NotFound(LabelPageError):
    """The subject or picture named is not there (answered 404)."""

    status = 404


@dataclass(frozen=True)
class Outcome:
    """What a move or delete did: the pictures done (with where each went) and those gone.

    A picture is *gone* when it was no longer there: moved or deleted by another request
    (or pruned by the snapshot sink) first.
    """

    done: list[dict[str, str]]
    gone: list[str]


def check_label(label: str) -> str:
    r"""Return ``label`` if it can name a training folder as it is; raise BadRequest if not.

    It must be non-empty, at most 200 bytes of UTF-8, without leading or trailing spaces
    or control characters, and be its own folder name (``label_folder``: no ``/``,
    ``\\``, NUL or leading ``.``).
    """
    if not label.strip():
        raise BadRequest("label: give a label (it is empty)")
    if label != label.strip():
        raise BadRequest(f"label {label!r}: remove the leading or trailing spaces")
    if len(label.encode("utf-8")) > MAX_LABEL_BYTES:
        raise BadRequest(f"label: at most {MAX_LABEL_BYTES} bytes (UTF-8), not {len(label)}")
    if any(unicodedata.category(c) == "Cc" for c in label):
        raise BadRequest(f"label {label!r}: no control characters")
    if label_folder(label) != label:
        raise BadRequest(
            f"label {label!r}: '/', '\\' and a leading '.' are not allowed "
            f"(e.g. {label_folder(label)!r})"
        )
    return label


def _segments(name: str, what: str) -> list[str]:
    """Split a client's relative path into plain segments; raise BadRequest for any other."""
    parts = name.split("/")
    for part in parts:
        if not part or part.startswith(".") or "\\" in part or "\0" in part:
            raise BadRequest(f"{what} {name!r}: not a path inside the snapshot folder")
    return parts


def _time_of(stem: str) -> str | None:
    """``20261128T060000.123Z[-N]`` as ``2026-11-28 06:00:00`` (UTC); None for other names."""
    text = stem.split("-", 1)[0]
    if len(text) < 15 or text[8] != "T" or not (text[:8] + text[9:15]).isdigit():
        return None
    return f"{text[:4]}-{text[4:6]}-{text[6:8]} {text[9:11]}:{text[11:13]}:{text[13:15]}"


def _sidecar(picture: Path) -> dict[str, Any]:
    """Read what the picture's sidecar says: predicted label, score, reason.

    A missing, oversized or malformed sidecar gives ``{}``: the page then shows the
    label folder's name instead.
    """
    path = picture.with_suffix(".json")
    try:
        if path.stat().st_size > _MAX_SIDECAR_BYTES:
            return {}
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    found: dict[str, Any] = {}
    label = data.get("label")
    if isinstance(label, str):
        found["label"] = label
    if isinstance(data.get("reason"), str):
        found["reason"] = data["reason"]
    event = data.get("event")
    labels = event.get("labels") if isinstance(event, dict) else None
    if isinstance(labels, list):
        scored = [
            entry
            for entry in labels
            if isinstance(entry, dict)
            and isinstance(entry.get("score"), (int, float))
            and isinstance(entry.get("label"), str)
        ]
        # The score of the predicted label; the top label's when it is not among them.
        match = [entry for entry in scored if entry["label"] == found.get("label")] or scored
        if match:
            found.setdefault("label", match[0]["label"])
            found["score"] = round(float(match[0]["score"]), 4)
    return found


def _pictures_in(folder: Path, suffixes: tuple[str, ...]) -> list[str]:
    """List the (non-hidden) pictures directly in ``folder``; [] if it cannot be read."""
    try:
        with os.scandir(folder) as entries:
            return [
                entry.name
                for entry in entries
                if not entry.name.startswith(".")
                and entry.name.lower().endswith(suffixes)
                and entry.is_file()
            ]
    except OSError:
        return []


def _folders_in(folder: Path) -> list[Path]:
    """List the (non-hidden) folders directly in ``folder``, by name; [] if unreadable."""
    try:
        with os.scandir(folder) as entries:
            found = [
                Path(entry.path)
                for entry in entries
                if not entry.name.startswith(".") and entry.is_dir()
            ]
    except OSError:
        return []
    return sorted(found)


class SnapshotStore:
    """The snapshot folder and the training folder of the /label page."""

    def __init__(self, snapshots: Path, data: Path, page_size: int = 60) -> None:
        self.snapshots = snapshots
        self.data = data
        self.page_size = page_size  # the most pictures one page() returns
        # One move or delete at a time in this process: two requests racing for one
        # picture could otherwise leave it under "-2" while its own name is free again.
        # (_move_picture stays safe against other processes on its own.)
        self._changing = threading.Lock()

    def subjects(self) -> list[dict[str, Any]]:
        """Each subject with pictures (``stream`` or ``stream/region``) and how many it has."""
        counts: dict[str, int] = {}
        for stream in _folders_in(self.snapshots):
            for child in _folders_in(stream):
                if found := len(_pictures_in(child, (SNAPSHOT_SUFFIX,))):
                    counts[stream.name] = counts.get(stream.name, 0) + found
                for grandchild in _folders_in(child):
                    if found := len(_pictures_in(grandchild, (SNAPSHOT_SUFFIX,))):
                        subject = f"{stream.name}/{child.name}"
                        counts[subject] = counts.get(subject, 0) + found
        return [{"subject": name, "pictures": n} for name, n in sorted(counts.items())]

    def training_labels(self) -> list[dict[str, Any]]:
        """Each label folder of the training folder, by name, with its number of pictures."""
        return [
            {"label": folder.name, "pictures": len(_pictures_in(folder, TRAINING_SUFFIXES))}
            for folder in _folders_in(self.data)
        ]

    def page(self, subject: str, offset: int, limit: int) -> dict[str, Any]:
        """Return a subject's pictures, newest first: ``limit`` (<= ``page_size``) from ``offset``.

        Each with its path under the snapshot folder (``file``), predicted label, score,
        reason and time as the sidecar says (the folder's name when it cannot say);
        ``predicted`` lists the subject's label folders, the most pictures first.
        """
        folder = self._inside(self.snapshots, subject, "subject", 2)
        if not folder.is_dir():
            raise NotFound(f"subject {subject!r}: no snapshots")
        entries: list[tuple[str, str]] = []  # (name, label folder)
        predicted: dict[str, int] = {}
        for predicted_folder in _folders_in(folder):
            names = _pictures_in(predicted_folder, (SNAPSHOT_SUFFIX,))
            if names:
                predicted[predicted_folder.name] = len(names)
                entries.extend((name, predicted_folder.name) for name in names)
        # Names are capture times (YYYYmmddTHHMMSS.fffZ[-N]): sorting them sorts by time.
        entries.sort(reverse=True)
        limit = min(limit, self.page_size)
        pictures = []
        for name, label_folder_name in entries[offset : offset + limit]:
            path = folder / label_folder_name / name
            info = _sidecar(path)
            pictures.append(
                {
                    "file": f"{subject}/{label_folder_name}/{name}",
                    "label": info.get("label", label_folder_name),
                    "score": info.get("score"),
                    "reason": info.get("reason"),
                    "time": _time_of(Path(name).stem),
                }
            )
        return {
            "subject": subject,
            "total": len(entries),
            "offset": offset,
            "pictures": pictures,
            "predicted": [
                {"label": label, "pictures": n}
                for label, n in sorted(predicted.items(), key=lambda item: (-item[1], item[0]))
            ],
        }

    def picture(self, file: str) -> bytes:
        """Return a snapshot picture's bytes; NotFound if it is not there (or too large)."""
        path = self._snapshot(file)
        try:
            if path.stat().st_size > _MAX_PICTURE_BYTES:
                raise NotFound(f"{file}: too large to show")
            return path.read_bytes()
        except OSError as exc:
            raise NotFound(f"{file}: not found") from exc

    def thumbnail(self, file: str) -> bytes:
        """Return a JPEG of a snapshot picture, at most 320 pixels a side (decoded small)."""
        from PIL import Image, UnidentifiedImageError

        data = self.picture(file)
        try:
            with Image.open(io.BytesIO(data)) as image:
                # JPEG decodes straight to 1/2, 1/4 or 1/8 size: a fraction of full decoding.
                image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))
                small = image.convert("RGB")
            small.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            buffer = io.BytesIO()
            small.save(buffer, format="JPEG", quality=80)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise NotFound(f"{file}: not a readable picture ({exc})") from exc
        return buffer.getvalue()

    def move(self, files: list[str], label: str) -> Outcome:
        """Move snapshot pictures into ``<data>/<label>/``; their sidecars are deleted.

        Every name is checked before anything moves (BadRequest). A picture keeps its
        name; one already taken in the label folder gets ``-2``, ``-3``... A picture no
        longer there is reported gone.
        """
        check_label(label)
        paths = [(file, self._snapshot(file)) for file in self._checked(files)]
        target = self.data / label
        try:
            ensure_folder(target)
        except OSError as exc:
            raise LabelPageError(f"cannot make the training folder {target} ({exc})") from exc
        outcome = Outcome([], [])
        with self._changing:
            self._move_all(paths, target, outcome)
        if outcome.done:
            log.info("label page: %d picture(s) moved to %s", len(outcome.done), target)
        return outcome

    @staticmethod
    def _move_all(paths: list[tuple[str, Path]], target: Path, outcome: Outcome) -> None:
        for file, path in paths:
            moved = _move_picture(path, target)
            if moved is None:
                outcome.gone.append(file)
                continue
            _drop_sidecar(path)
            outcome.done.append({"file": file, "to": f"{target.name}/{moved.name}"})

    def delete(self, files: list[str]) -> Outcome:
        """Delete snapshot pictures and their sidecars (pictures not worth training on)."""
        paths = [(file, self._snapshot(file)) for file in self._checked(files)]
        outcome = Outcome([], [])
        with self._changing:
            self._delete_all(paths, outcome)
        return outcome

    @staticmethod
    def _delete_all(paths: list[tuple[str, Path]], outcome: Outcome) -> None:
        for file, path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                outcome.gone.append(file)
                continue
            except OSError as exc:
                raise LabelPageError(f"cannot delete {file} ({exc})") from exc
            _drop_sidecar(path)
            outcome.done.append({"file": file})

    @staticmethod
    def _checked(files: list[str]) -> list[str]:
        if not files:
            raise BadRequest("files: select at least one picture")
        if len(files) > MAX_FILES_PER_REQUEST:
            raise BadRequest(f"files: at most {MAX_FILES_PER_REQUEST} pictures at a time")
        if len(set(files)) != len(files):
            raise BadRequest("files: a picture is named twice")
        return files

    def _snapshot(self, file: str) -> Path:
        """Return the path of a snapshot picture named by a client (it need not exist)."""
        path = self._inside(self.snapshots, file, "file", 4)
        if not file.endswith(SNAPSHOT_SUFFIX) or file.count("/") < 2:
            raise BadRequest(f"file {file!r}: not a snapshot picture (<subject>/<label>/*.jpg)")
        return path

    @staticmethod
    def _inside(root: Path, name: str, what: str, most: int) -> Path:
        """``root / name`` for a client's relative name of at most ``most`` segments.

        Raises BadRequest when the name is not plain segments, or when the path, its
        symbolic links followed, leads out of ``root``.
        """
        parts = _segments(name, what)
        if len(parts) > most:
            raise BadRequest(f"{what} {name!r}: not a path inside the snapshot folder")
        path = root.joinpath(*parts)
        real_root = os.path.realpath(root)
        if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
            raise BadRequest(f"{what} {name!r}: leads out of the snapshot folder")
        return path


def _move_picture(source: Path, folder: Path) -> Path | None:
    """Move ``source`` into ``folder`` without replacing a file; None if it was gone.

    Linked under a free name first, then unlinked from where it was: if another request
    unlinked it first (it moved it too), this link is taken back and the picture counts
    as gone here, so a picture moved twice at once lands exactly once.
    """
    for n in itertools.count(1):
        target = folder / (source.name if n == 1 else f"{source.stem}-{n}{source.suffix}")
        try:
            os.link(source, target)
            break
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise LabelPageError(f"cannot move {source.name} to {folder} ({exc})") from exc
            # Another file system (or one without hard links): copy, never over a file.
            try:
                copied = _copy_new(source, target)
            except OSError as copy_exc:
                raise LabelPageError(
                    f"cannot move {source.name} to {folder} ({copy_exc})"
                ) from copy_exc
            if copied is None:
                return None
            if copied:
                break
    try:
        source.unlink()
    except FileNotFoundError:
        target.unlink(missing_ok=True)  # another request moved it first
        return None
    return target


def _copy_new(source: Path, target: Path) -> bool | None:
    """Copy ``source`` to a new file ``target``: True, False if taken, None if source gone."""
    try:
        reader = source.open("rb")
    except FileNotFoundError:
        return None
    with reader:
        try:
            writer = target.open("xb")
        except FileExistsError:
            return False
        try:
            with writer:
                shutil.copyfileobj(reader, writer)
        except OSError:
            target.unlink(missing_ok=True)  # no half picture in the training folder
            raise
    return True


def _drop_sidecar(picture: Path) -> None:
    """Delete a sorted picture's sidecar: the training folder holds pictures only."""
    try:
        picture.with_suffix(".json").unlink(missing_ok=True)
    except OSError as exc:
        log.warning("label page: cannot delete %s (%s)", picture.with_suffix(".json"), exc)
