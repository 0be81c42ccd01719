"""What a Triton model serves, and what a gateway needs from it.

The model on the server (``labelcast serve``, or a stock Triton with the repository
``labelcast export --triton-repo`` writes) has this signature, batch axis first:

- input ``pixels``: ``UINT8`` ``(batch, 3, H, W)``, H x W the checkpoint's input size;
- output ``logits``: ``FP32`` ``(batch, num_labels)``;
- what it serves, as JSON (:func:`served_model_info`): the model config parameter
  ``labelcast`` (stock Triton), or an output ``info``, ``BYTES`` ``(batch, 1)``
  (``labelcast serve``; PyTriton sets no config parameters).

Labels and preprocessing settings come from the same checkpoint config files on both
sides, so :func:`fingerprint` tells a gateway whether the server serves its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from labelcast.model.checkpoint import Checkpoint

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
INFO_OUTPUT = "info"
INFO_PARAMETER = "labelcast"
INFO_SCHEMA = "labelcast.served/1"


@dataclass(frozen=True)
class ServedModel:
    """What a Triton model says it serves (the JSON of :func:`served_model_info`)."""

    id: str
    revision: str | None
    fingerprint: str
    precision: str
    device: str
    backend: str

    @classmethod
    def from_json(cls, text: str | bytes) -> ServedModel:
        """Parse the JSON a server publishes; ValueError if it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schema") != INFO_SCHEMA:
            raise ValueError(f"not a {INFO_SCHEMA} description")
        return cls(
            id=str(data["id"]),
            revision=None if data.get("revision") is None else str(data["revision"]),
            fingerprint=str(data["fingerprint"]),
            precision=str(data["precision"]),
            device=str(data.get("device", "?")),
            backend=str(data.get("backend", "?")),
        )


def served_model_info(
    checkpoint: Checkpoint, precision: str, device: str, backend: str
) -> dict[str, Any]:
    """Describe a served model: checkpoint, config fingerprint, precision, device, runtime."""
    return {
        "schema": INFO_SCHEMA,
        "id": checkpoint.id,
        "revision": checkpoint.revision,
        "fingerprint": fingerprint(checkpoint),
        "precision": precision,
        "device": device,
        "backend": backend,
    }


def fingerprint(checkpoint: Checkpoint) -> str:
    """SHA-256 (16 hex digits) of the files that give labels and preprocessing.

    Gateway and server compute it from their own copy of the checkpoint: equal
    fingerprints mean equal labels, classes and preprocessing settings.
    """
    digest = hashlib.sha256()
    for name in ("config.json", "preprocessor_config.json"):
        path = checkpoint.directory / name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Expected:
    """What the gateway needs from the served model."""

    model_id: str
    fingerprint: str
    input_size: tuple[int, int]  # (height, width)
    num_labels: int
    precision: str | None  # None: any (model.precision auto)
