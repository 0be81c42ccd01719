"""``labelcast model-info``: what a checkpoint is, read from its files without running it."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from labelcast.errors import ModelError
from labelcast.model.checkpoint import SAFE_WEIGHTS, resolve_checkpoint, sha256_of
from labelcast.model.prompts import FAMILIES


def model_info(model_id: str, revision: str | None = None) -> dict[str, Any]:
    """Describe a checkpoint: id, resolved revision, files, license, labels, preprocessing.

    Parameters are counted from safetensors headers, so nothing is deserialised
    (pickle-only checkpoints are listed, but their parameters are not counted). ``kind``
    is ``image-classification`` (labels of its own) or ``zero-shot`` (a CLIP or SigLIP
    checkpoint: labels from ``model.prompts``), ``scoring`` how its logits become scores.
    """
    checkpoint = resolve_checkpoint(model_id, revision, allow_pickle=True)
    config = checkpoint.read_json("config.json")
    preprocessing = checkpoint.read_json("preprocessor_config.json")
    weights = [
        checkpoint.directory / n for n in checkpoint.weight_files if n.endswith(SAFE_WEIGHTS)
    ]
    family = FAMILIES.get(str(config.get("model_type")))
    # A zero-shot checkpoint's config may carry transformers' placeholder labels: not its own.
    id2label = (config.get("id2label") or {}) if family is None else {}
    return {
        "id": model_id,
        "revision": checkpoint.revision,
        "directory": str(checkpoint.directory),
        "architecture": (config.get("architectures") or [None])[0],
        "model_type": config.get("model_type"),
        "license": checkpoint.license(),
        "kind": "image-classification" if family is None else "zero-shot",
        "family": None if family is None else family.name,
        "scoring": "softmax" if family is None else family.scoring,
        "num_labels": len(id2label),
        "parameters": sum(_safetensors_parameters(path) for path in weights) if weights else None,
        "safetensors": checkpoint.has_safetensors,
        "preprocessing": {
            key: preprocessing.get(key)
            for key in (
                "do_resize",
                "size",
                "resample",
                "do_center_crop",
                "crop_size",
                "do_rescale",
                "rescale_factor",
                "do_normalize",
                "image_mean",
                "image_std",
            )
            if key in preprocessing
        },
        "files": [
            {"name": f.name, "size": f.size, "sha256": sha256_of(checkpoint.directory / f.name)}
            for f in checkpoint.files
        ],
    }


def format_model_info(info: dict[str, Any]) -> str:
    """Render ``model_info`` output for a terminal."""
    params = info["parameters"]
    lines = [
        f"id:            {info['id']}",
        f"revision:      {info['revision'] or '(local directory)'}",
        f"architecture:  {info['architecture']} ({info['model_type']})",
        f"license:       {info['license'] or '(not stated in the model card)'}",
        f"kind:          {_kind(info)}",
        f"labels:        {_labels(info)}",
        f"parameters:    {f'{params:,}' if params is not None else '(no safetensors weights)'}",
        f"preprocessing: {json.dumps(info['preprocessing'])}",
        "files:",
    ]
    lines += [f"  {f['name']:<32} {f['size']:>12,}  sha256 {f['sha256']}" for f in info["files"]]
    return "\n".join(lines)


def _kind(info: dict[str, Any]) -> str:
    if info.get("kind") == "zero-shot":
        return f"zero-shot ({info['family']}; scores: {info['scoring']})"
    return "image classification (scores: softmax)"


def _labels(info: dict[str, Any]) -> str:
    if info.get("kind") == "zero-shot":
        return "none of its own: set by model.prompts (docs/zero-shot.md)"
    return str(info["num_labels"])


def _safetensors_parameters(path: Path) -> int:
    # The format starts with an 8-byte little-endian header length and a JSON header.
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from exc
    return sum(
        math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__"
    )
