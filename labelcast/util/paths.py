"""Folders adapters write into: whether one can be written (cheaply, for ``check``), making it.

Every place that writes files of its own (the log sink, the MQTT outbox, the overlay's
recordings) checks and creates its folder here, so that ``labelcast check`` and the
running sink agree on what "writable" means. ``safe_label_folder`` names the folder of a
label's pictures (the snapshot sink writes them, the preview's /label page sorts them).
"""

from __future__ import annotations

import os
from pathlib import Path


def existing_ancestor(folder: Path) -> Path:
    """Return ``folder`` if it exists, else its nearest ancestor that does."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def writable_folder(folder: Path) -> bool:
    """Whether files can be written in ``folder`` (or in the ancestor it would be made in).

    A folder that does not exist yet counts as writable when its nearest existing
    ancestor is a writable folder (``ensure_folder`` makes it then); a file where a
    folder should be never is (not even for root). Nothing is created.
    """
    ancestor = existing_ancestor(folder)
    return ancestor.is_dir() and os.access(ancestor, os.W_OK)


def ensure_folder(folder: Path) -> None:
    """Make ``folder`` and its missing parents; raises OSError if that is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)


def safe_label_folder(label: str) -> str:
    r"""Return the folder name that holds a label's pictures (snapshots, training data).

    ``/``, ``\\`` and NUL (which would split or end a path) and a leading ``.`` (a hidden
    folder, or ``..``) are replaced by ``_``; an empty label becomes ``_``. Any other
    label, spaces and commas included, is its own folder name, so a model trained on the
    folders reports the labels as the operator typed them.
    """
    name = label.replace("/", "_").replace("\\", "_").replace("\0", "_")
    if name.startswith("."):
        name = "_" + name[1:]
    return name or "_"
