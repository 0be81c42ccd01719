"""The ONNX Runtime backend: the forward pass in an ``onnxruntime.InferenceSession``.

``model.backend: onnxruntime`` runs the classifier with ONNX Runtime instead of torch.
Preprocessing stays the torch code of ``preprocess.py`` (on the CPU, in fp32); only the
forward pass moves to ONNX Runtime. Without ``model.onnx.path`` the checkpoint is exported
(``onnx_export.py``) on load into a cache directory (``$LABELCAST_CACHE``, else
``$XDG_CACHE_HOME/labelcast``, else ``~/.cache/labelcast``; files in its ``onnx/`` folder),
keyed by the SHA-256 of the checkpoint's weights and config, the input size, the torch
version and the exporter version: a later start reuses the file, a changed checkpoint gets
a new one. ``quantize: int8`` caches its int8 file next to the fp32 one. For a zero-shot
checkpoint (CLIP, SigLIP) the file is its image tower alone: the labels' text embeddings
are made with torch at load (``zeroshot.py``) and applied to the tower's output here, so
changing ``model.prompts`` reuses the same file.

``onnxruntime`` is an optional dependency (the ``onnx`` extra), imported only here and only
when the backend is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from labelcast.errors import ModelError
from labelcast.model.backends.base import Completed, Pending
from labelcast.model.backends.onnx_export import (
    EMBEDS_NAME,
    EXPORTER_VERSION,
    INPUT_NAME,
    OPSET,
    OUTPUT_NAME,
    UINT8_INPUT_NAME,
    export_image_tower,
    export_onnx,
    is_quantized,
    quantize_int8,
    require,
)
from labelcast.model.checkpoint import Checkpoint, resolve_checkpoint, sha256_of, verify_sha256
from labelcast.model.config import LoadedModelInfo, ModelConfig
from labelcast.model.loading import (
    Loaded,
    checkpoint_labels,
    checkpoint_preprocessor,
    load_torch_model,
    onnx_input_size,
    resolve_device,
)
from labelcast.model.preprocess import Preprocessor
from labelcast.model.staging import InputStager
from labelcast.model.zeroshot import PromptHead, family_for, load_zero_shot

__all__ = [
    "EMBEDS_NAME",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "UINT8_INPUT_NAME",
    "OnnxEngine",
    "OnnxModel",
    "cache_dir",
    "cached_export",
    "export_key",
    "export_onnx",
    "is_quantized",
    "load",
    "providers_for",
    "quantize_int8",
    "quantized_path",
]

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Return the folder where exported ONNX files are cached (created on first use)."""
    root = os.environ.get("LABELCAST_CACHE")
    if root:
        return Path(root) / "onnx"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "labelcast" / "onnx"


def export_key(
    checkpoint: Checkpoint, input_size: tuple[int, int], *, image_tower: bool = False
) -> str:
    """Return the cache key of a checkpoint's export: what would change the ONNX file."""
    digest = hashlib.sha256()
    parts = [checkpoint.id, checkpoint.revision or "", f"{input_size}", torch.__version__]
    parts += [EXPORTER_VERSION, str(OPSET)]
    if image_tower:
        parts.append(EMBEDS_NAME)
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
    *,
    image_tower: bool = False,
) -> Path:
    """Return the cached fp32 ONNX export of ``checkpoint``, exporting it first if missing.

    ``image_tower``: ``load_model`` gives a zero-shot checkpoint's image tower, exported
    with :func:`export_image_tower` (and cached under a key of its own).
    """
    folder = cache_dir()
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", checkpoint.id.strip("/")).strip("_")[-60:]
    key = export_key(checkpoint, input_size, image_tower=image_tower)
    path = folder / f"{name or 'model'}-{key}.onnx"
    if path.is_file():
        log.info("model %s: using cached ONNX export %s", checkpoint.id, path)
        return path
    log.info("model %s: exporting to ONNX (%s), once per checkpoint", checkpoint.id, path)
    if image_tower:
        export_image_tower(load_model(), input_size, path)
    else:
        export_onnx(load_model(), input_size, path)
    return path


def quantized_path(source: Path) -> Path:
    """Return where the cached int8 quantization of the ONNX file ``source`` lives."""
    return cache_dir() / f"{source.stem}-{sha256_of(source)[:16]}-int8.onnx"


class OnnxModel:
    """An ONNX classifier in an ``onnxruntime.InferenceSession``: fp32 pixels in, logits out."""

    def __init__(self, path: Path, providers: list[Any]) -> None:
        require("onnxruntime")
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
    require("onnxruntime")
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


class OnnxEngine:
    """An :class:`OnnxModel` behind the Classifier: fp32 input made on the CPU.

    With a ``head`` the file is a zero-shot image tower: the head turns its embeddings
    into the labels' logits.
    """

    def __init__(
        self, model: OnnxModel, preprocessor: Preprocessor, head: PromptHead | None = None
    ) -> None:
        self._model: OnnxModel | None = model
        self._head = head
        # ONNX Runtime takes numpy input: its preprocessing runs on the CPU, in fp32.
        self._device = torch.device("cpu")
        self._stager = InputStager(preprocessor, self._device, torch.float32)

    @property
    def model(self) -> OnnxModel | None:
        """The ONNX Runtime session; None once closed."""
        return self._model

    @property
    def device(self) -> torch.device:
        """The CPU: where the input is made."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """fp32: what the ONNX file takes."""
        return torch.float32

    @property
    def overlaps(self) -> bool:
        """False: a session's run returns its result."""
        return False

    @property
    def remote(self) -> bool:
        """False: the session runs in this process."""
        return False

    def inputs(self, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """Normalised fp32 pixels on the CPU."""
        return self._stager.stage(images).on(None)

    def run(self, inputs: torch.Tensor, stop: threading.Event | None) -> torch.Tensor:
        """Return the session's logits (``stop`` is for remote waits: none here)."""
        if self._model is None:
            raise RuntimeError("this classifier was closed (a reload replaced its model)")
        outputs = self._model(inputs)
        if self._head is None:
            return outputs
        with torch.inference_mode():
            logits: torch.Tensor = self._head(outputs)
        return logits

    def fetch(self, probs: torch.Tensor) -> Pending:
        """Return the probabilities as numpy (they are on the CPU already)."""
        result: npt.NDArray[np.float32] = probs.cpu().numpy()
        return Completed(result)

    def status(self) -> str | None:
        """None: nothing remote."""
        return None

    def activity(self) -> float | None:
        """None: nothing remote."""
        return None

    def close(self) -> None:
        """Drop the session and the staging buffers."""
        self._model = None
        self._stager.close()


def load(config: ModelConfig, precision: str | None = None) -> Loaded:
    """Load the configured ONNX file (or the checkpoint's cached export) into ONNX Runtime.

    ``precision`` must be None: the file's precision is what runs.
    """
    if precision is not None:
        raise ValueError(
            "a precision override is for the torch backend; "
            "load reference_config(config) for a torch fp32 reference"
        )
    device = resolve_device(config.device)
    checkpoint = resolve_checkpoint(config.id, config.revision, allow_pickle=config.allow_pickle)
    verify_sha256(checkpoint, config.sha256)
    preprocessor = checkpoint_preprocessor(checkpoint)
    size = onnx_input_size(preprocessor, config.id)
    family = family_for(checkpoint, config)
    head: PromptHead | None = None
    if family is None:
        id2label = checkpoint_labels(checkpoint, config.id)

        def load_model() -> torch.nn.Module:
            model: torch.nn.Module = load_torch_model(checkpoint, config.allow_pickle)
            return model
    else:
        # The text tower runs in torch, now; the ONNX file is the image tower alone.
        zero_shot = load_zero_shot(checkpoint, config, family)
        id2label, head = zero_shot.id2label, zero_shot.head

        def load_model() -> torch.nn.Module:
            return zero_shot.tower

    if config.onnx.path is not None:
        path = Path(config.onnx.path)
        if not path.is_file():
            raise ModelError(f"model.onnx.path {config.onnx.path}: no such file")
    else:
        path = cached_export(checkpoint, size, load_model, image_tower=family is not None)
    if config.onnx.quantize == "int8" and not is_quantized(path):
        target = quantized_path(path)
        if not target.is_file():
            log.info("model %s: quantizing %s to int8 (%s)", config.id, path, target)
            quantize_int8(path, target)
        path = target
    precision = "int8" if is_quantized(path) else "fp32"
    model = OnnxModel(path, providers_for(device))
    outputs = len(id2label) if head is None else head.embedding_size
    _check_onnx_shapes(model, size, outputs, path, zero_shot=head is not None)
    ran_on = str(device) if "CUDAExecutionProvider" in model.providers else "cpu"
    info = LoadedModelInfo(
        config.id,
        checkpoint.revision,
        ran_on,
        precision,
        "onnxruntime",
        "softmax" if family is None else family.scoring,
    )
    log.info(
        "loaded model %s (revision %s) in ONNX Runtime (%s, %s) from %s, %d labels",
        config.id,
        checkpoint.revision or "local",
        model.providers[0],
        precision,
        path,
        len(id2label),
    )
    return Loaded(
        OnnxEngine(model, preprocessor, head), preprocessor, id2label, info, config.batch.buckets
    )


def _check_onnx_shapes(
    model: OnnxModel, size: tuple[int, int], outputs: int, path: Path, *, zero_shot: bool
) -> None:
    expected_in: list[int | None] = [None, 3, *size]
    for axis, (want, got) in enumerate(zip(expected_in, model.input_shape, strict=False)):
        if want is not None and isinstance(got, int) and got != want:
            raise ModelError(
                f"{path}: input axis {axis} is {got}, but the checkpoint's preprocessing "
                f"makes {want} (shape (N, 3, {size[0]}, {size[1]}))"
            )
    if isinstance(model.input_shape[0], int):
        log.warning(
            "%s has a fixed batch size %d, not a dynamic batch axis; other batch sizes fail "
            "(re-export it with labelcast export)",
            path,
            model.input_shape[0],
        )
    last = model.output_shape[-1] if model.output_shape else None
    if isinstance(last, int) and last != outputs:
        if zero_shot:
            raise ModelError(
                f"{path}: the model outputs {last} values, but the checkpoint's image "
                f"embeddings have {outputs} (export its image tower with labelcast export)"
            )
        raise ModelError(
            f"{path}: the model outputs {last} logits, but the checkpoint has {outputs} labels"
        )
