"""The classifier: loads a Hugging Face image classification checkpoint and classifies batches.

Preprocessing runs on the model's device (see ``preprocess.py``); the forward pass runs
in the configured precision; softmax is always computed in fp32.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelcast.errors import ModelError
from labelcast.pipeline.checkpoint import Checkpoint, resolve_checkpoint, verify_sha256
from labelcast.pipeline.onnx_backend import OnnxModel
from labelcast.pipeline.preprocess import Preprocessor

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "microsoft/beit-base-patch16-224"
Precision = Literal["auto", "fp16", "bf16", "fp32", "int8"]
Backend = Literal["torch", "onnxruntime"]
_DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "int8": torch.float32,
}


class BatchConfig(BaseModel):
    """Micro-batching across streams: flush at ``max_size`` frames or ``max_wait_ms``."""

    model_config = ConfigDict(extra="forbid")

    max_size: Annotated[int, Field(ge=1, le=1024, description="Most frames in one batch.")] = 32
    max_wait_ms: Annotated[
        float,
        Field(ge=0, le=10_000, description="Longest wait after a batch's first frame."),
    ] = 50.0


class OnnxConfig(BaseModel):
    """ONNX Runtime backend settings: which ONNX file, and whether to quantize it."""

    model_config = ConfigDict(extra="forbid")

    path: Annotated[
        str | None,
        Field(
            description="A prebuilt ONNX file from labelcast export (relative to the working "
            "dir); model.id still gives labels and preprocessing. Unset: the checkpoint is "
            "exported on first load into the cache ($LABELCAST_CACHE, else "
            "~/.cache/labelcast) and reused while the checkpoint is unchanged."
        ),
    ] = None
    quantize: Annotated[
        Literal["none", "int8"],
        Field(
            description="none | int8: ONNX Runtime dynamic quantization (int8 weights); "
            "faster on CPUs, an accuracy trade-off to check with labelcast verify."
        ),
    ] = "none"


class ModelConfig(BaseModel):
    """Which checkpoint classifies the frames, where it runs and in which precision."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[
        str,
        Field(min_length=1, description="Hugging Face hub id, or a local checkpoint directory."),
    ] = DEFAULT_MODEL_ID
    revision: Annotated[
        str | None,
        Field(
            description="Hub revision to load (pin a commit sha); ignored for local directories."
        ),
    ] = None
    device: Annotated[
        str,
        Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$", description="auto | cpu | cuda | cuda:N."),
    ] = "auto"
    precision: Annotated[
        Precision,
        Field(description="auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32 | int8 (CPU)."),
    ] = "auto"
    batch: Annotated[BatchConfig, Field(description="Micro-batching settings.")] = BatchConfig()
    sha256: Annotated[
        dict[str, str],
        Field(
            description="Expected SHA-256 per checkpoint file (e.g. model.safetensors); "
            "checked before loading, a mismatch refuses to start."
        ),
    ] = {}
    self_check: Annotated[
        Literal["auto", "on", "off"],
        Field(
            description="Classify the first frames in fp32 too and warn if the configured "
            "precision disagrees; auto = on for fp16/bf16 on CUDA."
        ),
    ] = "auto"
    self_check_max_score_diff: Annotated[
        float,
        Field(gt=0, le=1, description="Largest score difference the self-check accepts."),
    ] = 0.02
    allow_pickle: Annotated[
        bool,
        Field(
            description="Load pickle weights (pytorch_model.bin) when a checkpoint has no "
            "safetensors. Pickle can run code: only for checkpoints you trust."
        ),
    ] = False
    backend: Annotated[
        Backend,
        Field(
            description="torch | onnxruntime: which runtime runs the forward pass "
            "(preprocessing is torch either way; onnxruntime needs the onnx extra)."
        ),
    ] = "torch"
    onnx: Annotated[
        OnnxConfig,
        Field(description="ONNX Runtime settings; only with backend: onnxruntime."),
    ] = OnnxConfig()

    @model_validator(mode="after")
    def _backend_settings_fit(self) -> ModelConfig:
        if self.backend == "onnxruntime" and self.precision not in ("auto", "fp32"):
            hint = " (for int8 set model.onnx.quantize: int8)" if self.precision == "int8" else ""
            raise ValueError(
                f"precision {self.precision} is for backend torch; backend onnxruntime runs "
                f"the fp32 ONNX file, or its int8 quantization{hint}"
            )
        if self.backend == "torch" and self.onnx != OnnxConfig():
            raise ValueError("model.onnx settings need model.backend: onnxruntime")
        return self


@dataclass(frozen=True)
class LoadedModelInfo:
    """What was actually loaded: id, resolved revision, device and precision."""

    id: str
    revision: str | None
    device: str
    precision: str
    backend: str = "torch"


class Classifier:
    """An image classification checkpoint ready to classify batches of RGB ``uint8`` frames."""

    def __init__(
        self,
        model: torch.nn.Module | OnnxModel,
        preprocessor: Preprocessor,
        id2label: dict[int, str],
        info: LoadedModelInfo,
    ) -> None:
        self._model = model
        self._preprocessor = preprocessor
        # ONNX Runtime takes numpy input: its preprocessing runs on the CPU, in fp32.
        onnx = info.backend == "onnxruntime"
        self._device = torch.device("cpu" if onnx else info.device)
        self._dtype = torch.float32 if onnx else _DTYPES[info.precision]
        self.id2label = id2label
        self.info = info

    @classmethod
    def load(cls, config: ModelConfig, precision: str | None = None) -> Classifier:
        """Load the configured checkpoint (weights, labels, preprocessing) onto its device.

        ``precision`` overrides the configured one (``verify`` loads an fp32 reference).
        With ``backend: onnxruntime`` the forward pass runs in ONNX Runtime (see
        ``onnx_backend.py``); use :func:`reference_config` for a torch fp32 reference.
        """
        if config.backend == "onnxruntime":
            if precision is not None:
                raise ValueError(
                    "a precision override is for the torch backend; "
                    "load reference_config(config) for a torch fp32 reference"
                )
            return cls._load_onnx(config)
        device = resolve_device(config.device)
        precision = resolve_precision(precision or config.precision, device)
        checkpoint = resolve_checkpoint(
            config.id, config.revision, allow_pickle=config.allow_pickle
        )
        verify_sha256(checkpoint, config.sha256)
        preprocessor = _preprocessor(checkpoint)
        model = load_torch_model(checkpoint, config.allow_pickle)
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        model = _prepare(model, device, precision)
        info = LoadedModelInfo(config.id, checkpoint.revision, str(device), precision)
        log.info(
            "loaded model %s (revision %s) on %s in %s, %d labels",
            config.id,
            checkpoint.revision or "local",
            device,
            precision,
            len(id2label),
        )
        return cls(model, preprocessor, id2label, info)

    @classmethod
    def _load_onnx(cls, config: ModelConfig) -> Classifier:
        from labelcast.pipeline import onnx_backend

        device = resolve_device(config.device)
        checkpoint = resolve_checkpoint(
            config.id, config.revision, allow_pickle=config.allow_pickle
        )
        verify_sha256(checkpoint, config.sha256)
        preprocessor = _preprocessor(checkpoint)
        labels = checkpoint.read_json("config.json").get("id2label")
        if not isinstance(labels, dict) or not labels:
            raise ModelError(f"model {config.id!r}: its config.json has no id2label")
        id2label = {int(k): str(v) for k, v in labels.items()}
        size = onnx_input_size(preprocessor, config.id)
        if config.onnx.path is not None:
            path = Path(config.onnx.path)
            if not path.is_file():
                raise ModelError(f"model.onnx.path {config.onnx.path}: no such file")
        else:
            path = onnx_backend.cached_export(
                checkpoint, size, lambda: load_torch_model(checkpoint, config.allow_pickle)
            )
        if config.onnx.quantize == "int8" and not onnx_backend.is_quantized(path):
            target = onnx_backend.quantized_path(path)
            if not target.is_file():
                log.info("model %s: quantizing %s to int8 (%s)", config.id, path, target)
                onnx_backend.quantize_int8(path, target)
            path = target
        precision = "int8" if onnx_backend.is_quantized(path) else "fp32"
        model = onnx_backend.OnnxModel(path, onnx_backend.providers_for(device))
        _check_onnx_shapes(model, size, len(id2label), path)
        ran_on = str(device) if "CUDAExecutionProvider" in model.providers else "cpu"
        info = LoadedModelInfo(config.id, checkpoint.revision, ran_on, precision, "onnxruntime")
        log.info(
            "loaded model %s (revision %s) in ONNX Runtime (%s, %s) from %s, %d labels",
            config.id,
            checkpoint.revision or "local",
            model.providers[0],
            precision,
            path,
            len(id2label),
        )
        return cls(model, preprocessor, id2label, info)

    @property
    def num_labels(self) -> int:
        """Number of classes the checkpoint predicts."""
        return len(self.id2label)

    def preprocess(self, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """Turn RGB ``uint8`` frames into the model's input tensor, on its device."""
        return self._preprocessor(images, self._device, self._dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Run the model on preprocessed input and return the logits."""
        if not isinstance(self._model, torch.nn.Module):
            return self._model(pixel_values)
        with torch.inference_mode():
            logits: torch.Tensor = self._model(pixel_values=pixel_values).logits
        return logits

    def logits(self, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Return the logits as fp32 numpy, shape (len(images), num_labels)."""
        with torch.inference_mode():
            result: npt.NDArray[np.float32] = (
                self.forward(self.preprocess(images)).float().cpu().numpy()
            )
        return result

    def classify(self, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Return class probabilities (softmax in fp32), shape (len(images), num_labels)."""
        with torch.inference_mode():
            logits = self.forward(self.preprocess(images))
            probs = logits.float().softmax(dim=-1)
        result: npt.NDArray[np.float32] = probs.cpu().numpy()
        return result


def reference_config(config: ModelConfig) -> ModelConfig:
    """Return the same checkpoint on the torch backend: what fp32 references run on."""
    if config.backend == "torch":
        return config
    return config.model_copy(update={"backend": "torch", "onnx": OnnxConfig(), "precision": "auto"})


def load_torch_model(checkpoint: Checkpoint, allow_pickle: bool) -> Any:
    """Load a checkpoint's image classification model with transformers, fp32, in eval mode."""
    # Imported here: importing transformers costs seconds that `labelcast schema` needn't pay.
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    log.info("loading model %s (revision %s)", checkpoint.id, checkpoint.revision or "local")
    try:
        model = AutoModelForImageClassification.from_pretrained(
            checkpoint.directory,
            dtype=torch.float32,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"model {checkpoint.id!r} is not an image classification checkpoint "
            f"transformers can load: {exc}"
        ) from exc
    return model.eval()


def onnx_input_size(preprocessor: Preprocessor, model_id: str) -> tuple[int, int]:
    """Return the (height, width) the preprocessing always makes (ONNX needs a fixed one)."""
    if preprocessor.crops:
        return preprocessor.crops[-1]
    if preprocessor.resize_to is not None:
        return preprocessor.resize_to
    raise ModelError(
        f"model {model_id!r}: its preprocessing keeps the frame's aspect ratio (shortest edge "
        "resize, no crop), so its input size varies; backend onnxruntime needs a fixed size"
    )


def _preprocessor(checkpoint: Checkpoint) -> Preprocessor:
    return Preprocessor.from_config(
        checkpoint.read_json("preprocessor_config.json"),
        str(checkpoint.directory / "preprocessor_config.json"),
    )


def _check_onnx_shapes(
    model: OnnxModel, size: tuple[int, int], num_labels: int, path: Path
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
    if isinstance(last, int) and last != num_labels:
        raise ModelError(
            f"{path}: the model outputs {last} logits, but the checkpoint has {num_labels} labels"
        )


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a torch device, refusing CUDA where there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"model.device is {name!r} but this torch build sees no CUDA device "
                "(use device: auto or cpu)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                f"model.device is {name!r} but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto`` to fp16 on CUDA and fp32 on CPU; refuse combinations that cannot run."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise ModelError(
            "model.precision int8 (dynamic quantization) runs on the CPU only; "
            "use fp16 or bf16 on CUDA"
        )
    if precision == "fp16" and device.type == "cpu":
        raise ModelError(
            "model.precision fp16 is not supported on the CPU (it is slower than "
            "fp32 there); use fp32, bf16 or int8"
        )
    return precision


def _prepare(model: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    model.eval()
    if precision == "int8":
        from torch.ao.quantization import quantize_dynamic

        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
        return quantized
    return model.to(device=device, dtype=_DTYPES[precision])
