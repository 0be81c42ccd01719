"""Converting a checkpoint for ONNX Runtime: export to ONNX, and int8 quantization.

What ``labelcast export`` writes and what the ONNX Runtime backend (``onnxruntime.py``)
exports on first load. The ONNX file has one input, ``pixel_values`` (float32,
``(batch, 3, H, W)``, the batch axis dynamic) and one output, ``logits`` (float32,
``(batch, num_labels)``); a zero-shot checkpoint's export is its image tower alone, whose one
output is ``image_embeds`` (float32, ``(batch, D)``, unit length: ``zeroshot.py`` turns them
into the labels' logits); a Triton model (``labelcast export --triton-repo``) takes resized
``uint8`` ``pixels`` and normalises them itself. ``quantize: int8`` applies ONNX Runtime's
dynamic quantization (int8 weights of MatMul/Gemm, activations quantized per batch at run
time).

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional dependencies (the ``onnx`` extra);
they are imported only inside the functions that need them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from labelcast.errors import ModelError
from labelcast.model.preprocess import Preprocessor

log = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
# The input of a graph that normalises resized uint8 pixels itself (labelcast export
# --triton-repo); the same name as the Triton backend's input.
UINT8_INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
# The output of a zero-shot checkpoint's image tower (zeroshot.ImageTower).
EMBEDS_NAME = "image_embeds"
OPSET = 18
# Bumped when the export changes in a way that makes cached files stale.
EXPORTER_VERSION = "1"
# Operators that only appear in a dynamically (or statically) quantized graph.
_QUANTIZED_OPS = frozenset(
    {"DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv"}
)
INSTALL_HINT = "install them with: pip install 'labelcast[onnx]'"


def export_onnx(
    model: torch.nn.Module,
    input_size: tuple[int, int],
    path: Path,
    *,
    normalise: Preprocessor | None = None,
) -> None:
    """Export an fp32 image classifier to ``path`` with a dynamic batch axis.

    With ``normalise`` the graph takes resized ``uint8`` pixels (input ``pixels``) and
    rescales and normalises them itself, as that preprocessor does (a Triton model).

    Uses torch's TorchScript-based exporter (``dynamo=False``): in torch 2.13 it exports
    BEiT-base with a dynamic batch axis, where the ``torch.export``-based one fails to
    decompose its attention reshapes. Where the TorchScript exporter fails (or is gone from
    a later torch), the ``torch.export``-based one (it needs ``onnxscript``) is tried.
    Weights are embedded in the one file, which appears atomically (written, then renamed).
    """
    height, width = input_size
    if normalise is not None:
        example = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
        wrapper = _NormalisedLogits(model, normalise).eval()
        _export(wrapper, example, UINT8_INPUT_NAME, OUTPUT_NAME, path)
    else:
        example = torch.zeros(2, 3, height, width, dtype=torch.float32)
        _export(_LogitsOnly(model).eval(), example, INPUT_NAME, OUTPUT_NAME, path)


def export_image_tower(tower: torch.nn.Module, input_size: tuple[int, int], path: Path) -> None:
    """Export a zero-shot checkpoint's fp32 image tower: ``pixel_values`` to ``image_embeds``.

    ``tower`` takes pixel values and returns (N, D) embeddings (``zeroshot.ImageTower``);
    exported as :func:`export_onnx` exports a classifier.
    """
    height, width = input_size
    example = torch.zeros(2, 3, height, width, dtype=torch.float32)
    _export(tower.eval(), example, INPUT_NAME, EMBEDS_NAME, path)


def _export(
    wrapper: torch.nn.Module, example: torch.Tensor, input_name: str, output_name: str, path: Path
) -> None:
    """Export ``wrapper`` (one tensor in, one out) to ``path``, batch axis dynamic, atomically."""
    require("onnx")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        partial = Path(tmp) / path.name
        with _quiet(), torch.inference_mode(False), torch.no_grad():
            try:
                torch.onnx.export(
                    wrapper,
                    (example,),
                    str(partial),
                    input_names=[input_name],
                    output_names=[output_name],
                    dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            except Exception as legacy:  # the exporter raises many kinds of errors
                log.info("TorchScript ONNX export failed (%s); trying torch.export", legacy)
                require("onnxscript")
                try:
                    torch.onnx.export(
                        wrapper,
                        (example,),
                        str(partial),
                        input_names=[input_name],
                        output_names=[output_name],
                        dynamic_shapes={input_name: {0: torch.export.Dim("batch", max=4096)}},
                        opset_version=OPSET,
                        dynamo=True,
                        external_data=False,
                        verbose=False,
                    )
                except Exception as exc:
                    raise ModelError(
                        f"exporting the model to ONNX failed: {exc} "
                        f"(TorchScript exporter: {legacy})"
                    ) from exc
        os.replace(partial, path)


def quantize_int8(source: Path, target: Path) -> None:
    """Write ONNX Runtime's dynamic int8 quantization of ``source`` to ``target``.

    Weights of MatMul/Gemm become int8 (QInt8, per tensor); activations are quantized per
    batch at run time. Written atomically.
    """
    require("onnx", "onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".quantize-") as tmp:
        partial = Path(tmp) / target.name
        with _quiet():
            try:
                quantize_dynamic(source, partial, weight_type=QuantType.QInt8)
            except Exception as exc:  # the quantizer raises many kinds of errors
                raise ModelError(f"int8 quantization of {source} failed: {exc}") from exc
        os.replace(partial, target)


def is_quantized(path: Path) -> bool:
    """Whether an ONNX file holds a quantized graph (int8 operators)."""
    require("onnx")
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in _QUANTIZED_OPS for node in model.graph.node)


class _NormalisedLogits(torch.nn.Module):
    """A classifier that takes resized ``uint8`` pixels, normalises them, returns logits."""

    def __init__(self, model: torch.nn.Module, preprocessor: Preprocessor) -> None:
        super().__init__()
        self.model = model
        self.preprocessor = preprocessor

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pixel_values = self.preprocessor.normalise(pixels, torch.float32)
        logits: torch.Tensor = self.model(pixel_values=pixel_values).logits
        return logits


class _LogitsOnly(torch.nn.Module):
    """A transformers classifier as a module that takes pixel values and returns logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values=pixel_values).logits
        return logits


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's chatter (the quantizer logs to root)."""
    names = ["", "onnx_ir", "onnxscript", "torch.onnx"]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    own = logging.getLogger("labelcast")
    own_level = own.level
    own.setLevel(own.getEffectiveLevel())  # labelcast's own messages keep their level
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tracer_warning = getattr(torch.jit, "TracerWarning", None)
            if isinstance(tracer_warning, type) and issubclass(tracer_warning, Warning):
                warnings.simplefilter("ignore", tracer_warning)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
        own.setLevel(own_level)


def require(*modules: str) -> None:
    """Raise ModelError naming the optional modules that are not installed."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"model.backend onnxruntime needs {', '.join(missing)}, which is not installed; "
            + INSTALL_HINT
        )
