"""The ONNX Runtime backend: export a checkpoint to ONNX, quantize it, and run it.

``model.backend: onnxruntime`` runs the classifier with an ``onnxruntime.InferenceSession``
instead of torch. Preprocessing stays the torch code of ``preprocess.py`` (on the CPU); only
the forward pass moves to ONNX Runtime.

The ONNX file has one input, ``pixel_values`` (float32, ``(batch, 3, H, W)``, the batch axis
dynamic) and one output, ``logits`` (float32, ``(batch, num_labels)``). Without
``model.onnx.path`` the checkpoint is exported on load into a cache directory
(``$LABELCAST_CACHE``, else ``$XDG_CACHE_HOME/labelcast``, else ``~/.cache/labelcast``; files in
its ``onnx/`` folder), keyed by the SHA-256 of the checkpoint's weights and config, the input
size, the torch version and the exporter version: a later start reuses the file, a changed
checkpoint gets a new one. ``quantize: int8`` applies ONNX Runtime's dynamic quantization
(int8 weights of MatMul/Gemm, activations quantized per batch at run time) and caches that
file next to the fp32 one.

``onnx``, ``onnxscript`` and ``onnxruntime`` are optional dependencies (the ``onnx`` extra);
they are imported only here, and only when the backend is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from labelcast.errors import ModelError
from labelcast.pipeline.checkpoint import Checkpoint, sha256_of
from labelcast.pipeline.preprocess import Preprocessor

log = logging.getLogger(__name__)

INPUT_NAME = "pixel_values"
# The input of a graph that normalises resized uint8 pixels itself (labelcast export
# --triton-repo); the same name as the Triton backend's input.
UINT8_INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
OPSET = 18
# Bumped when the export changes in a way that makes cached files stale.
EXPORTER_VERSION = "1"
# Operators that only appear in a dynamically (or statically) quantized graph.
_QUANTIZED_OPS = frozenset(
    {"DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul", "ConvInteger", "QLinearConv"}
)
_INSTALL_HINT = "install them with: pip install 'labelcast[onnx]'"


def cache_dir() -> Path:
    """Return the folder where exported ONNX files are cached (created on first use)."""
    root = os.environ.get("LABELCAST_CACHE")
    if root:
        return Path(root) / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "labelcast" / "onnx"


def export_key(checkpoint: Checkpoint, input_size: tuple[int, int]) -> str:
    """Return the cache key of a checkpoint's export: what would change the ONNX file."""
    digest = hashlib.sha256()
    parts = [checkpoint.id, checkpoint.revision or "", f"{input_size}", torch.__version__]
    parts += [EXPORTER_VERSION, str(OPSET)]
    for name in sorted([*checkpoint.weight_files, "config.json"]):
        path = checkpoint.directory / name
        if path.is_file():
            parts += [name, sha256_of(path)]
    for part in parts:
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def cached_export(
    checkpoint: Checkpoint,
    input_size: tuple[int, int],
    load_model: Callable[[], torch.nn.Module],
) -> Path:
    """Return the cached fp32 ONNX export of ``checkpoint``, exporting it first if missing."""
    folder = cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint.id.strip("/")).strip("_")[-60:]
    path = folder / f"{name or 'model'}-{export_key(checkpoint, input_size)}.onnx"
    if path.is_file():
        log.info("model %s: using cached ONNX export %s", checkpoint.id, path)
        return path
    log.info("model %s: exporting to ONNX (%s), once per checkpoint", checkpoint.id, path)
    export_onnx(load_model(), input_size, path)
    return path


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
    _require("onnx")
    height, width = input_size
    wrapper: torch.nn.Module = _LogitsOnly(model).eval()
    input_name = INPUT_NAME
    example = torch.zeros(2, 3, height, width, dtype=torch.float32)
    if normalise is not None:
        wrapper = _NormalisedLogits(model, normalise).eval()
        input_name = UINT8_INPUT_NAME
        example = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
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
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={input_name: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                    opset_version=OPSET,
                    dynamo=False,
                )
            except Exception as legacy:  # the exporter raises many kinds of errors
                log.info("TorchScript ONNX export failed (%s); trying torch.export", legacy)
                _require("onnxscript")
                try:
                    torch.onnx.export(
                        wrapper,
                        (example,),
                        str(partial),
                        input_names=[input_name],
                        output_names=[OUTPUT_NAME],
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
    _require("onnx", "onnxruntime")
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


def quantized_path(source: Path) -> Path:
    """Return where the cached int8 quantization of the ONNX file ``source`` lives."""
    return cache_dir() / f"{source.stem}-{sha256_of(source)[:16]}-int8.onnx"


def is_quantized(path: Path) -> bool:
    """Whether an ONNX file holds a quantized graph (int8 operators)."""
    _require("onnx")
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in _QUANTIZED_OPS for node in model.graph.node)


class OnnxModel:
    """An ONNX classifier in an ``onnxruntime.InferenceSession``: fp32 pixels in, logits out."""

    def __init__(self, path: Path, providers: list[Any]) -> None:
        _require("onnxruntime")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"{path}: expected one input (pixel values) and a logits output")
        self._input: str = inputs[0].name
        self._output: str = outputs[0].name
        self.input_shape: list[Any] = list(inputs[0].shape)
        self.output_shape: list[Any] = list(outputs[0].shape)
        self.providers: list[str] = list(self._session.get_providers())
        self.path = path

    def __call__(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Run the session on a (N, 3, H, W) float32 tensor; return (N, labels) logits."""
        array: npt.NDArray[np.float32] = (
            pixel_values.detach().to("cpu", torch.float32).contiguous().numpy()
        )
        try:
            (logits,) = self._session.run([self._output], {self._input: array})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"ONNX Runtime failed on a batch of {len(array)}: {exc}") from exc
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))


def providers_for(device: torch.device) -> list[Any]:
    """ONNX Runtime execution providers for a torch device (CUDA where ORT has it)."""
    _require("onnxruntime")
    import onnxruntime

    if device.type == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return [
                ("CUDAExecutionProvider", {"device_id": device.index or 0}),
                "CPUExecutionProvider",
            ]
        log.warning(
            "model.device is %s but this onnxruntime build has no CUDAExecutionProvider "
            "(install onnxruntime-gpu); running on the CPU",
            device,
        )
    return ["CPUExecutionProvider"]


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


def _require(*modules: str) -> None:
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"model.backend onnxruntime needs {', '.join(missing)}, which is not installed; "
            + _INSTALL_HINT
        )
