"""The classifier: loads a Hugging Face image classification checkpoint and classifies batches.

Preprocessing runs on the model's device (see ``preprocess.py``); the forward pass runs
in the configured precision; softmax is always computed in fp32.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field

from labelcast.errors import ModelError
from labelcast.pipeline.preprocess import Preprocessor

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "microsoft/beit-base-patch16-224"
Precision = Literal["auto", "fp16", "bf16", "fp32", "int8"]
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


@dataclass(frozen=True)
class LoadedModelInfo:
    """What was actually loaded: id, resolved revision, device and precision."""

    id: str
    revision: str | None
    device: str
    precision: str


class Classifier:
    """An image classification checkpoint ready to classify batches of RGB ``uint8`` frames."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessor: Preprocessor,
        id2label: dict[int, str],
        info: LoadedModelInfo,
    ) -> None:
        self._model = model
        self._preprocessor = preprocessor
        self._device = torch.device(info.device)
        self._dtype = _DTYPES[info.precision]
        self.id2label = id2label
        self.info = info

    @classmethod
    def load(cls, config: ModelConfig) -> Classifier:
        """Load the configured checkpoint (weights, labels, preprocessing) onto its device."""
        device = resolve_device(config.device)
        precision = resolve_precision(config.precision, device)
        is_local = os.path.isdir(config.id)
        revision = None if is_local else config.revision
        if is_local and not os.path.isfile(os.path.join(config.id, "config.json")):
            raise ModelError(
                f"model directory {config.id!r} has no config.json "
                "(it is not a Hugging Face checkpoint directory)"
            )
        # Imported here: importing transformers costs seconds that `labelcast schema` needn't pay.
        from transformers import AutoModelForImageClassification
        from transformers.utils import cached_file  # type: ignore[attr-defined]
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

        where = "" if is_local else f" (revision {revision or 'main'})"
        log.info("loading model %s%s", config.id, where)
        try:
            model = AutoModelForImageClassification.from_pretrained(
                config.id, revision=revision, dtype=torch.float32
            )
            processor_file = cached_file(config.id, "preprocessor_config.json", revision=revision)
        except OSError as exc:
            raise ModelError(_load_failure_message(config.id, revision, is_local, exc)) from exc
        except (ValueError, KeyError) as exc:
            raise ModelError(
                f"model {config.id!r} is not an image classification "
                f"checkpoint transformers can load: {exc}"
            ) from exc
        if processor_file is None:
            raise ModelError(f"model {config.id!r} has no preprocessor_config.json")
        try:
            with open(processor_file, encoding="utf-8") as handle:
                processor_config: dict[str, Any] = json.load(handle)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{processor_file}: not a readable JSON file ({exc})") from exc
        preprocessor = Preprocessor.from_config(processor_config, processor_file)

        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        resolved = getattr(model.config, "_commit_hash", None) or revision
        model = _prepare(model, device, precision)
        info = LoadedModelInfo(config.id, resolved, str(device), precision)
        log.info(
            "loaded model %s (revision %s) on %s in %s, %d labels",
            config.id,
            resolved or "local",
            device,
            precision,
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
        with torch.inference_mode():
            logits: torch.Tensor = self._model(pixel_values=pixel_values).logits
        return logits

    def classify(self, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Return class probabilities (softmax in fp32), shape (len(images), num_labels)."""
        with torch.inference_mode():
            logits = self.forward(self.preprocess(images))
            probs = logits.float().softmax(dim=-1)
        result: npt.NDArray[np.float32] = probs.cpu().numpy()
        return result


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


def _load_failure_message(model_id: str, revision: str | None, is_local: bool, exc: OSError) -> str:
    if is_local:
        return f"model directory {model_id!r} is not a usable checkpoint: {exc}"
    if os.path.isabs(model_id) or model_id.startswith((".", "~")):
        return f"model.id {model_id!r} is neither an existing directory nor a hub id"
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    reason = (
        "HF_HUB_OFFLINE is set and it is not in the local cache"
        if offline
        else "the Hugging Face hub could not be reached and it is not in the local cache"
    )
    if "not a valid model identifier" in str(exc) or "Repository Not Found" in str(exc):
        reason = "the hub has no such model (or it is private)"
    return (
        f"cannot load model {model_id!r} (revision {revision or 'main'}): {reason}. "
        f"To run without the hub, download it where there is network "
        f"(hf download {model_id} --revision {revision or 'main'} --local-dir models/local) "
        f"and set model.id to that directory (e.g. --set model.id=models/local)."
    )
