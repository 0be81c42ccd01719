"""``labelcast export``: write the configured checkpoint as an ONNX file for ONNX Runtime.

The file takes ``pixel_values`` (float32, ``(batch, 3, H, W)``, batch dynamic) as the
checkpoint's preprocessing makes them and returns ``logits``; ``--quantize int8`` writes
ONNX Runtime's dynamic int8 quantization instead. After writing, the file is run on a test
batch and its logits compared with torch fp32; the largest difference is reported.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelcast.pipeline import onnx_backend
from labelcast.pipeline.checkpoint import resolve_checkpoint, verify_sha256
from labelcast.pipeline.classifier import ModelConfig, load_torch_model, onnx_input_size
from labelcast.pipeline.preprocess import Preprocessor

log = logging.getLogger(__name__)

# How many test frames the written file is checked on, and their size before preprocessing.
_CHECK_FRAMES = 3
_CHECK_FRAME_SIZE = (240, 320)


def export(config: ModelConfig, output: Path, quantize: str = "none") -> dict[str, Any]:
    """Export ``config``'s checkpoint to ``output``; return what was written and checked."""
    checkpoint = resolve_checkpoint(config.id, config.revision, allow_pickle=config.allow_pickle)
    verify_sha256(checkpoint, config.sha256)
    preprocessor = Preprocessor.from_config(
        checkpoint.read_json("preprocessor_config.json"),
        str(checkpoint.directory / "preprocessor_config.json"),
    )
    size = onnx_input_size(preprocessor, config.id)
    model = load_torch_model(checkpoint, config.allow_pickle)
    if quantize == "int8":
        with tempfile.TemporaryDirectory(prefix="labelcast-export-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            onnx_backend.export_onnx(model, size, fp32)
            onnx_backend.quantize_int8(fp32, output)
    else:
        onnx_backend.export_onnx(model, size, output)
    # A check on random frames, preprocessed as the pipeline does.
    generator = np.random.default_rng(0)
    frames = [
        generator.integers(0, 256, (*_CHECK_FRAME_SIZE, 3), dtype=np.uint8)
        for _ in range(_CHECK_FRAMES)
    ]
    pixels = preprocessor(frames, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        expected = model(pixel_values=pixels).logits.float().numpy()
    session = onnx_backend.OnnxModel(output, ["CPUExecutionProvider"])
    actual = session(pixels).numpy()
    return {
        "model": config.id,
        "revision": checkpoint.revision,
        "path": str(output),
        "bytes": output.stat().st_size,
        "precision": "int8" if quantize == "int8" else "fp32",
        "input": {"name": onnx_backend.INPUT_NAME, "shape": ["batch", 3, *size]},
        "check": {
            "frames": _CHECK_FRAMES,
            "max_abs_logit_diff": float(np.abs(actual - expected).max()),
            "top1_agreement_pct": float(
                (actual.argmax(axis=1) == expected.argmax(axis=1)).mean() * 100
            ),
        },
    }


def format_export(result: dict[str, Any]) -> str:
    """Render an export result for a terminal."""
    check = result["check"]
    return (
        f"wrote {result['path']} ({result['precision']}, {result['bytes'] / 1e6:.1f} MB, input "
        f"{result['input']['name']} {tuple(result['input']['shape'])})\n"
        f"check on {check['frames']} frames vs torch fp32: max |Δ logit| "
        f"{check['max_abs_logit_diff']:.3g}, top-1 agreement {check['top1_agreement_pct']:.0f}%"
    )
