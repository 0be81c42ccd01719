"""What every backend's loader shares: devices, precisions, a checkpoint's labels and preprocessing.

Each backend module (``backends/torch.py``, ``onnxruntime.py``, ``triton.py``) loads its
model with these and hands :class:`Loaded` to the :class:`~labelcast.model.classifier.Classifier`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from labelcast.errors import ModelError
from labelcast.model.checkpoint import Checkpoint
from labelcast.model.config import LoadedModelInfo
from labelcast.model.preprocess import Preprocessor

if TYPE_CHECKING:
    from labelcast.model.backends.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Loaded:
    """A loaded model, ready for the Classifier: its engine and what the events name."""

    engine: Engine
    preprocessor: Preprocessor
    id2label: dict[int, str]
    info: LoadedModelInfo
    buckets: Sequence[int] | None = None  # batch sizes the engine runs at (None: any)


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


def checkpoint_preprocessor(checkpoint: Checkpoint) -> Preprocessor:
    """Return the checkpoint's preprocessing (its ``preprocessor_config.json``)."""
    return Preprocessor.from_config(
        checkpoint.read_json("preprocessor_config.json"),
        str(checkpoint.directory / "preprocessor_config.json"),
    )


def checkpoint_labels(checkpoint: Checkpoint, model_id: str) -> dict[int, str]:
    """Return class index -> label from the checkpoint's ``config.json`` (no weights needed)."""
    labels = checkpoint.read_json("config.json").get("id2label")
    if not isinstance(labels, dict) or not labels:
        raise ModelError(f"model {model_id!r}: its config.json has no id2label")
    return {int(k): str(v) for k, v in labels.items()}


def onnx_input_size(
    preprocessor: Preprocessor, model_id: str, backend: str = "onnxruntime"
) -> tuple[int, int]:
    """Return the (height, width) the preprocessing always makes (ONNX, Triton need one)."""
    size = preprocessor.output_size
    if size is not None:
        return size
    raise ModelError(
        f"model {model_id!r}: its preprocessing keeps the frame's aspect ratio (shortest edge "
        f"resize, no crop), so its input size varies; backend {backend} needs a fixed size"
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
