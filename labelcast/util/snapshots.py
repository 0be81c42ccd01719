"""The on-disk layout of snapshots: folder and file names, the sidecar's schema.

The snapshot sink writes ``<dir>/<stream>[/<region>]/<label folder>/<time>.jpg`` with a
``<time>.json`` sidecar beside each picture (docs/teach.md, "Collect snapshots"); the
labelling page reads the same folders. Both name things with these functions, so the
two agree.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

SNAPSHOT_SCHEMA = "labelcast.snapshot/1"

# The folder of pictures no label scored enough for (the event's labels were empty).
NO_LABEL_FOLDER = "_none"

# Longest label folder name, in UTF-8 bytes: file systems allow 255.
_MAX_FOLDER_BYTES = 200

# A snapshot's file name without its suffix: UTC capture time, then -N for the N+1-th
# picture of one subject captured in the same millisecond.
SNAPSHOT_STEM = re.compile(r"^(\d{8}T\d{6}\.\d{3}Z)(?:-(\d+))?$")


def label_folder(label: str | None) -> str:
    r"""Return the folder name of a predicted label.

    ``/``, ``\\`` and NUL become ``_``, and so does a leading ``.`` (no hidden folders, no
    ``..``); an empty label is ``_``; a name longer than 200 UTF-8 bytes is cut there.
    ``None`` (no label scored enough) is ``_none``.
    """
    if label is None:
        return NO_LABEL_FOLDER
    name = re.sub(r"[/\\\0]", "_", label)
    if name.startswith("."):
        name = "_" + name[1:]
    name = name.encode()[:_MAX_FOLDER_BYTES].decode(errors="ignore")
    return name or "_"


def snapshot_stem(captured_at: float, count: int = 0) -> str:
    """Return a snapshot's file name without suffix: ``YYYYmmddTHHMMSS.fffZ`` in UTC.

    ``count`` above 0 appends ``-<count>``: the second picture of one subject captured in
    the same millisecond is ``...Z-1``, the third ``...Z-2``.
    """
    moment = datetime.fromtimestamp(captured_at, tz=timezone.utc)
    stem = moment.strftime("%Y%m%dT%H%M%S.") + f"{moment.microsecond // 1000:03d}Z"
    return f"{stem}-{count}" if count else stem


def snapshot_order(stem: str) -> tuple[str, int] | None:
    """Return the sort key of a snapshot's stem (oldest first), or None if it is not one."""
    match = SNAPSHOT_STEM.match(stem)
    if match is None:
        return None
    return match.group(1), int(match.group(2) or 0)
