"""The ``outbox`` config block every delivering sink shares, and where outbox files live.

Pydantic models only (no I/O): a sink's config model embeds :class:`OutboxConfig`, and the
sink picks a default file with :func:`default_outbox_path` when ``outbox.path`` is unset.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3}


def parse_size(value: object) -> object:
    """Accept byte counts as integers or as strings like ``64MiB``, ``500kB``, ``1GB``."""
    if not isinstance(value, str):
        return value
    match = _SIZE.match(value)
    if match is None:
        raise ValueError("expected a size in bytes, like 67108864, '64MiB' or '500kB'")
    unit = (match.group(2) or "").lower()
    factor = _SIZE_UNITS[unit[:1]] if "i" not in unit else 1024 ** "kmg".index(unit[0]) * 1024
    return int(float(match.group(1)) * factor)


class OutboxConfig(BaseModel):
    """The on-disk outbox that holds events until the receiver acknowledges them."""

    model_config = ConfigDict(extra="forbid")

    path: Annotated[
        str | None,
        Field(
            description="SQLite file of the outbox (default: a file under "
            "$XDG_STATE_HOME/labelcast/ named after the sink's destination, e.g. "
            "mqtt-outbox-<host>_<port>_<prefix>_<client_id>.sqlite). Keep it across restarts; "
            "give each running pipeline its own."
        ),
    ] = None
    max_bytes: Annotated[
        int,
        Field(
            ge=4096,
            description="Bound on the messages waiting (topics + payloads), in bytes or as "
            "'64MiB'; when exceeded the oldest label events are dropped and counted.",
        ),
    ] = 64 * 1024 * 1024
    max_age_s: Annotated[
        float,
        Field(
            ge=0,
            description="Label events older than this many seconds are dropped and counted "
            "instead of published (0: no age bound).",
        ),
    ] = 7 * 24 * 3600.0
    sync: Annotated[
        Literal["normal", "full"],
        Field(
            description="SQLite synchronous mode: normal survives a crash of labelcast; "
            "full also survives power loss, at one fsync per event."
        ),
    ] = "normal"

    _size = field_validator("max_bytes", mode="before")(parse_size)


def default_outbox_path(kind: str, key: str) -> Path:
    """``$XDG_STATE_HOME/labelcast/<kind>-outbox-<key>.sqlite``, ``key`` made file-name safe.

    ``kind`` is the sink's type (``mqtt``); ``key`` names its destination, so that sinks
    sending to different places get different files.
    """
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-_")
    return Path(state) / "labelcast" / f"{kind}-outbox-{safe}.sqlite"
