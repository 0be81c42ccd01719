"""``labelcast export``: write the configured checkpoint as an ONNX file for ONNX Runtime.

The file takes ``pixel_values`` (float32, ``(batch, 3, H, W)``, batch dynamic) as the
checkpoint's preprocessing makes them and returns ``logits``; ``--quantize int8`` writes
ONNX Runtime's dynamic int8 quantization instead. For a zero-shot checkpoint (CLIP, SigLIP)
the file is its image tower, returning ``image_embeds``; the configured ``model.prompts``
are embedded with torch when the file is loaded. After writing, the file is run on a test
batch and its logits (for a zero-shot checkpoint: with the prompts' head applied) compared
with torch fp32; the largest difference is reported.

``--triton-repo DIR`` writes a Triton model repository instead, for a stock Triton server
(its ONNX Runtime backend) serving ``model.backend: triton`` gateways: ``DIR/<name>/1/
model.onnx`` takes the gateways' resized ``uint8`` pixels (``pixels``, ``(batch, 3, H, W)``)
and normalises them inside the graph; ``DIR/<name>/config.pbtxt`` has dynamic batching and
the ``labelcast`` parameter that tells gateways which checkpoint it serves.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelcast.model.backends import onnx_export, triton_served
from labelcast.model.backends.onnxruntime import OnnxModel
from labelcast.model.checkpoint import resolve_checkpoint, verify_sha256
from labelcast.model.config import ModelConfig, TritonServeConfig
from labelcast.model.loading import checkpoint_preprocessor, load_torch_model, onnx_input_size
from labelcast.model.zeroshot import PromptHead, family_for, load_zero_shot, refuse_zero_shot

log = logging.getLogger(__name__)

# How many test frames the written file is checked on, and their size before preprocessing.
_CHECK_FRAMES = 3
_CHECK_FRAME_SIZE = (240, 320)


def export(config: ModelConfig, output: Path, quantize: str = "none") -> dict[str, Any]:
    """Export ``config``'s checkpoint to ``output``; return what was written and checked."""
    checkpoint = resolve_checkpoint(config.id, config.revision, allow_pickle=config.allow_pickle)
    verify_sha256(checkpoint, config.sha256)
    preprocessor = checkpoint_preprocessor(checkpoint)
    size = onnx_input_size(preprocessor, config.id)
    family = family_for(checkpoint, config)
    head: PromptHead | None = None
    if family is None:
        model = load_torch_model(checkpoint, config.allow_pickle)
        output_name, outputs = onnx_export.OUTPUT_NAME, int(model.config.num_labels)

        def write(path: Path) -> None:
            onnx_export.export_onnx(model, size, path)
    else:
        zero_shot = load_zero_shot(checkpoint, config, family)
        model, head = zero_shot.classifier(), zero_shot.head
        output_name, outputs = onnx_export.EMBEDS_NAME, head.embedding_size

        def write(path: Path) -> None:
            onnx_export.export_image_tower(zero_shot.tower, size, path)

    if quantize == "int8":
        with tempfile.TemporaryDirectory(prefix="labelcast-export-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            write(fp32)
            onnx_export.quantize_int8(fp32, output)
    else:
        write(output)
    # A check on random frames, preprocessed as the pipeline does.
    generator = np.random.default_rng(0)
    frames = [
        generator.integers(0, 256, (*_CHECK_FRAME_SIZE, 3), dtype=np.uint8)
        for _ in range(_CHECK_FRAMES)
    ]
    pixels = preprocessor(frames, torch.device("cpu"), torch.float32)
    with torch.inference_mode():
        expected = model(pixel_values=pixels).logits.float().numpy()
    session = OnnxModel(output, ["CPUExecutionProvider"])
    with torch.inference_mode():
        ran = session(pixels)  # logits, or a zero-shot image tower's embeddings
        actual = (ran if head is None else head(ran)).numpy()
    return {
        "model": config.id,
        "revision": checkpoint.revision,
        "path": str(output),
        "bytes": output.stat().st_size,
        "precision": "int8" if quantize == "int8" else "fp32",
        "input": {"name": onnx_export.INPUT_NAME, "shape": ["batch", 3, *size]},
        "output": {"name": output_name, "shape": ["batch", outputs]},
        "check": {
            "frames": _CHECK_FRAMES,
            "max_abs_logit_diff": float(np.abs(actual - expected).max()),
            "top1_agreement_pct": float(
                (actual.argmax(axis=1) == expected.argmax(axis=1)).mean() * 100
            ),
        },
    }


def export_triton_repo(config: ModelConfig, repo: Path, quantize: str = "none") -> dict[str, Any]:
    """Write a Triton model repository for ``config``'s checkpoint; return what was checked."""
    checkpoint = resolve_checkpoint(config.id, config.revision, allow_pickle=config.allow_pickle)
    verify_sha256(checkpoint, config.sha256)
    refuse_zero_shot(checkpoint, "labelcast export --triton-repo")
    preprocessor = checkpoint_preprocessor(checkpoint)
    size = onnx_input_size(preprocessor, config.id, backend="triton")
    model = load_torch_model(checkpoint, config.allow_pickle)
    name = config.triton.model
    folder = repo / name
    output = folder / "1" / "model.onnx"
    output.parent.mkdir(parents=True, exist_ok=True)
    if quantize == "int8":
        with tempfile.TemporaryDirectory(prefix="labelcast-export-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            onnx_export.export_onnx(model, size, fp32, normalise=preprocessor)
            onnx_export.quantize_int8(fp32, output)
    else:
        onnx_export.export_onnx(model, size, output, normalise=preprocessor)
    precision = "int8" if quantize == "int8" else "fp32"
    info = triton_served.served_model_info(checkpoint, precision, "triton", "onnxruntime")
    num_labels = int(model.config.num_labels)
    (folder / "config.pbtxt").write_text(
        triton_config_pbtxt(name, size, num_labels, config.triton.serve, info)
    )
    # A check on random frames: uint8 pixels through the graph vs torch fp32 on the same.
    generator = np.random.default_rng(0)
    frames = [
        generator.integers(0, 256, (*_CHECK_FRAME_SIZE, 3), dtype=np.uint8)
        for _ in range(_CHECK_FRAMES)
    ]
    pixels = preprocessor.pixels(frames, torch.device("cpu"))
    with torch.inference_mode():
        expected = model(pixel_values=preprocessor.normalise(pixels, torch.float32)).logits
    actual = _run_uint8_graph(output, pixels.contiguous().numpy())
    expected_np = expected.float().numpy()
    return {
        "model": config.id,
        "revision": checkpoint.revision,
        "path": str(folder),
        "bytes": output.stat().st_size,
        "precision": precision,
        "input": {"name": onnx_export.UINT8_INPUT_NAME, "shape": ["batch", 3, *size]},
        "triton": {"model": name, "config": str(folder / "config.pbtxt"), "info": info},
        "check": {
            "frames": _CHECK_FRAMES,
            "max_abs_logit_diff": float(np.abs(actual - expected_np).max()),
            "top1_agreement_pct": float(
                (actual.argmax(axis=1) == expected_np.argmax(axis=1)).mean() * 100
            ),
        },
    }


def triton_config_pbtxt(
    name: str,
    size: tuple[int, int],
    num_labels: int,
    serve: TritonServeConfig,
    info: dict[str, Any],
) -> str:
    """Return the ``config.pbtxt`` of an exported Triton model (ONNX Runtime backend)."""
    text = json.dumps(info, sort_keys=True).replace("\\", "\\\\").replace('"', '\\"')
    height, width = size
    return f"""# Written by labelcast export --triton-repo: a classifier for model.backend: triton
# gateways (docs/scaling.md). It takes their resized uint8 pixels and normalises them itself.
name: "{name}"
backend: "onnxruntime"
max_batch_size: {serve.max_batch_size}
input [
  {{
    name: "{onnx_export.UINT8_INPUT_NAME}"
    data_type: TYPE_UINT8
    dims: [ 3, {height}, {width} ]
  }}
]
output [
  {{
    name: "{onnx_export.OUTPUT_NAME}"
    data_type: TYPE_FP32
    dims: [ {num_labels} ]
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {serve.max_queue_delay_us}
}}
# KIND_AUTO: on each GPU if there are any, else on the CPU.
instance_group [
  {{
    count: {serve.instances}
    kind: KIND_AUTO
  }}
]
# Which checkpoint this serves: gateways compare it with their own config files.
parameters {{
  key: "{triton_served.INFO_PARAMETER}"
  value: {{ string_value: "{text}" }}
}}
"""


def _run_uint8_graph(path: Path, pixels: Any) -> Any:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([onnx_export.OUTPUT_NAME], {onnx_export.UINT8_INPUT_NAME: pixels})
    return np.asarray(logits, dtype=np.float32)


def format_export(result: dict[str, Any]) -> str:
    """Render an export result for a terminal."""
    check = result["check"]
    triton = result.get("triton")
    served = (
        f"Triton model {triton['model']!r} (ONNX Runtime backend, dynamic batching): "
        f"{triton['config']}\n"
        if triton
        else ""
    )
    return (
        f"wrote {result['path']} ({result['precision']}, {result['bytes'] / 1e6:.1f} MB, input "
        f"{result['input']['name']} {tuple(result['input']['shape'])})\n"
        + served
        + f"check on {check['frames']} frames vs torch fp32: max |Δ logit| "
        f"{check['max_abs_logit_diff']:.3g}, top-1 agreement {check['top1_agreement_pct']:.0f}%"
    )
