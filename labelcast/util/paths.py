"""Folders adapters write into: whether one can be written (cheaply, for ``check``), making it.

Every place that writes files of its own (the log sink, the MQTT outbox, the overlay's
recordings) checks and creates its folder here, so that ``labelcast check`` and the
running sink agree on what "writable" means.
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
