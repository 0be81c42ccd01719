"""The torch backend: the checkpoint's transformers model, run by PyTorch on the CPU or CUDA.

Preprocessing runs on the model's device (``staging.py`` gets the ``uint8`` frames there);
the forward pass runs in the configured precision (fp16 on CUDA by default, fp32, bf16, or
int8 dynamic quantization on the CPU). On CUDA a batch is queued and the engine returns at
once (:class:`DevicePending`), so the pipeline stages the next batch meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from labelcast.errors import ModelError
from labelcast.model.backends.base import Completed, Pending
from labelcast.model.buckets import compile_model
from labelcast.model.checkpoint import resolve_checkpoint, verify_sha256
from labelcast.model.config import LoadedModelInfo, ModelConfig
from labelcast.model.loading import (
    Loaded,
    checkpoint_preprocessor,
    load_torch_model,
    resolve_device,
    resolve_precision,
)
from labelcast.model.position_bias import cache_position_bias
from labelcast.model.preprocess import Preprocessor
from labelcast.model.prompts import Scoring
from labelcast.model.staging import InputStager
from labelcast.model.zeroshot import ZeroShotClassifier, family_for, load_zero_shot

log = logging.getLogger(__name__)

DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    # Dynamic quantization keeps fp32 activations: the input stays fp32.
    "int8": torch.float32,
}


class DevicePending:
    """A batch queued on a CUDA device: its probabilities, once the device is done."""

    def __init__(self, probs: torch.Tensor, done: torch.cuda.Event) -> None:
        # ``probs``: the pinned fp32 host buffer the device copies into, filled once
        # ``done`` has passed.
        self._probs = probs
        self._done = done

    def result(self) -> npt.NDArray[np.float32]:
        """Wait for the device; return the (N, num_labels) scores."""
        self._done.synchronize()
        result: npt.NDArray[np.float32] = self._probs.numpy()
        return result


class TorchEngine:
    """A transformers model run by PyTorch on its device, in its dtype."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessor: Preprocessor,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self._model: torch.nn.Module | None = model
        self._device = device
        self._dtype = dtype
        self._stager = InputStager(preprocessor, device, dtype)

    @property
    def model(self) -> torch.nn.Module | None:
        """The torch module; None once closed."""
        return self._model

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """The model's input dtype."""
        return self._dtype

    @property
    def overlaps(self) -> bool:
        """True on CUDA: staging and the forward pass are queued, not waited for."""
        return self._stager.asynchronous

    @property
    def remote(self) -> bool:
        """False: the model runs in this process."""
        return False

    def inputs(self, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """Normalised pixels of the model's dtype on its device (staged on CUDA)."""
        return self._stager.stage(images).on(self._stream())

    def run(self, inputs: torch.Tensor, stop: threading.Event | None) -> torch.Tensor:
        """Return the model's logits (``stop`` is for remote waits: none here)."""
        if self._model is None:
            raise RuntimeError("this classifier was closed (a reload replaced its model)")
        with torch.inference_mode():
            logits: torch.Tensor = self._model(pixel_values=inputs).logits
        return logits

    def fetch(self, probs: torch.Tensor) -> Pending:
        """On CUDA, queue the copy into pinned host memory and return at once."""
        stream = self._stream()
        if stream is None:
            result: npt.NDArray[np.float32] = probs.cpu().numpy()
            return Completed(result)
        host = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(probs, non_blocking=True)
        done = torch.cuda.Event()  # type: ignore[no-untyped-call]
        done.record(stream)
        return DevicePending(host, done)

    def status(self) -> str | None:
        """None: nothing remote."""
        return None

    def activity(self) -> float | None:
        """None: nothing remote."""
        return None

    def close(self) -> None:
        """Drop the model, the staging buffers and copy threads."""
        self._model = None
        self._stager.close()

    def _stream(self) -> torch.cuda.Stream | None:
        """Return the CUDA stream the forward pass runs on (None off CUDA)."""
        if self._device.type != "cuda":
            return None
        return torch.cuda.current_stream(self._device)


def load(config: ModelConfig, precision: str | None = None) -> Loaded:
    """Load the checkpoint with transformers onto its device, in its precision.

    ``precision`` overrides the configured one (``verify`` loads an fp32 reference).
    """
    device = resolve_device(config.device)
    precision = resolve_precision(precision or config.precision, device)
    checkpoint = resolve_checkpoint(config.id, config.revision, allow_pickle=config.allow_pickle)
    verify_sha256(checkpoint, config.sha256)
    preprocessor = checkpoint_preprocessor(checkpoint)
    family = family_for(checkpoint, config)
    scoring: Scoring = "softmax"
    if family is None:
        model = load_torch_model(checkpoint, config.allow_pickle)
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        model = _prepare(model, device, precision)
    else:
        # Only the image tower takes the precision: the labels' embeddings and the
        # cosines stay fp32 (PromptHead).
        zero_shot = load_zero_shot(checkpoint, config, family)
        tower = _prepare(zero_shot.tower, device, precision)
        model = ZeroShotClassifier(tower, zero_shot.head.to(device)).eval()
        id2label, scoring = zero_shot.id2label, family.scoring
    if config.compile == "none":
        cache_position_bias(model)  # compiled, CUDA graphs replay its work anyway
    else:
        model = _compile(model, config, preprocessor, device, precision)
    info = LoadedModelInfo(config.id, checkpoint.revision, str(device), precision, scoring=scoring)
    log.info(
        "loaded model %s (revision %s) on %s in %s, %d labels",
        config.id,
        checkpoint.revision or "local",
        device,
        precision,
        len(id2label),
    )
    engine = TorchEngine(model, preprocessor, device, DTYPES[precision])
    return Loaded(engine, preprocessor, id2label, info, config.batch.buckets)


def _compile(
    model: torch.nn.Module,
    config: ModelConfig,
    preprocessor: Preprocessor,
    device: torch.device,
    precision: str,
) -> torch.nn.Module:
    """torch.compile the model for each bucket (the config validator made sure of them)."""
    size = preprocessor.output_size
    if size is None:
        raise ModelError(
            f"model {config.id!r}: its preprocessing keeps the frame's aspect ratio (shortest "
            f"edge resize, no crop), so its input size varies; model.compile: {config.compile} "
            "needs a fixed size"
        )
    return compile_model(model, device, DTYPES[precision], config.batch.buckets or (), size)


def _prepare(model: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    model.eval()
    if precision == "int8":
        from torch.ao.quantization import quantize_dynamic

        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
        return quantized
    return model.to(device=device, dtype=DTYPES[precision])
