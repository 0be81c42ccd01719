"""The Triton backend: the classifier's forward pass on an NVIDIA Triton Inference Server.

With ``model.backend: triton`` a gateway keeps its sources, sampling, batching, the
geometric half of preprocessing (resize and crop, :meth:`Preprocessor.pixels`), softmax,
postprocessing and sinks, and sends each micro-batch to a Triton server as ``uint8``
pixels: the fewest bytes on the wire. The server normalises them and returns logits.
Labels and preprocessing settings come from the same checkpoint config files on both
sides (the gateway fetches only the JSON files, not the weights), so the events are the
ones local inference makes.

The served model's signature, and how the gateway checks what it serves, are in
``triton_served.py``; the client that talks to the server is ``triton_client.py``.

On every (re)connection the gateway checks the model's signature and that it serves the
same checkpoint config (and precision, when ``model.precision`` is not ``auto``); a
mismatch keeps the gateway not ready, with the reason, until the server is fixed.

Faults (``docs/scaling.md``). Every request and health probe is bounded by
``timeout_s``. While the server cannot be reached or its model is not ready (down,
restarting, loading, mismatched), the batch in hand waits: the gateway probes with
jittered exponential backoff (``reconnect``) and reports not ready with the reason, and
the pipeline's bounded queues go on sampling (live sources drop their oldest frames,
counted; file sources wait). A batch that a reachable server answers with an error, or
does not answer within ``timeout_s``, is sent again after a backoff and a new health
probe, up to ``retries`` more times; then :class:`BatchError` drops it and the pipeline
counts its frames as dropped. A stop (``Pipeline.abort``) ends the wait at once, also
with :class:`BatchError`.

``tritonclient`` is an optional dependency (the ``triton`` extra), imported only by the
client and only when the backend is used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from labelcast.model.backends.base import Completed, Pending
from labelcast.model.backends.triton_client import TritonModel
from labelcast.model.backends.triton_served import Expected, fingerprint
from labelcast.model.checkpoint import resolve_checkpoint, verify_sha256
from labelcast.model.config import LoadedModelInfo, ModelConfig
from labelcast.model.loading import (
    Loaded,
    checkpoint_labels,
    checkpoint_preprocessor,
    onnx_input_size,
)
from labelcast.model.preprocess import Preprocessor
from labelcast.model.zeroshot import refuse_zero_shot

log = logging.getLogger(__name__)


class TritonEngine:
    """A :class:`TritonModel` behind the Classifier: resized ``uint8`` pixels to the server."""

    def __init__(self, model: TritonModel, preprocessor: Preprocessor) -> None:
        self._model: TritonModel | None = model
        self._preprocessor = preprocessor
        # The gateway resizes on the CPU and sends uint8; the server does the rest.
        self._device = torch.device("cpu")

    @property
    def model(self) -> TritonModel | None:
        """The Triton client; None once closed."""
        return self._model

    @property
    def device(self) -> torch.device:
        """The CPU: where the gateway resizes."""
        return self._device

    @property
    def dtype(self) -> torch.dtype:
        """fp32, the dtype of normalised input made here (the server normalises its own)."""
        return torch.float32

    @property
    def overlaps(self) -> bool:
        """False: a batch is classified when its answer is back."""
        return False

    @property
    def remote(self) -> bool:
        """True: a batch waits for the server, and ``stop`` ends the wait."""
        return True

    def inputs(self, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """Return the resized ``uint8`` pixels (on the CPU) that the gateway sends."""
        return self._preprocessor.pixels(images, self._device)

    def run(self, inputs: torch.Tensor, stop: threading.Event | None) -> torch.Tensor:
        """Return the server's logits, waiting through faults (BatchError: dropped)."""
        if self._model is None:
            raise RuntimeError("this classifier was closed (a reload replaced its model)")
        return self._model(inputs, stop)

    def fetch(self, probs: torch.Tensor) -> Pending:
        """Return the probabilities as numpy (they are on the CPU already)."""
        result: npt.NDArray[np.float32] = probs.cpu().numpy()
        return Completed(result)

    def status(self) -> str | None:
        """None while the server answers; else why the gateway waits for it."""
        return self._model.status if self._model is not None else None

    def activity(self) -> float | None:
        """``time.monotonic()`` of the latest request, probe or backoff step."""
        return self._model.activity if self._model is not None else None

    def close(self) -> None:
        """Drop the client (its connection closes with it)."""
        self._model = None


def load(config: ModelConfig, precision: str | None = None) -> Loaded:
    """Connect a gateway to the configured Triton server (once; it waits for a down one).

    Only the checkpoint's JSON files are fetched: labels and preprocessing. ``precision``
    must be None: the server's precision is what runs.
    """
    if precision is not None:
        raise ValueError(
            "a precision override is for the torch backend; "
            "load reference_config(config) for a torch fp32 reference"
        )
    # Labels and preprocessing come from the checkpoint's JSON files; the weights
    # stay on the server.
    checkpoint = resolve_checkpoint(
        config.id, config.revision, allow_pickle=config.allow_pickle, weights=False
    )
    # Digests of files the gateway does not fetch (weights) are checked by the server.
    fetched = {f.name for f in checkpoint.files}
    verify_sha256(checkpoint, {k: v for k, v in config.sha256.items() if k in fetched})
    preprocessor = checkpoint_preprocessor(checkpoint)
    refuse_zero_shot(checkpoint, "model.backend triton")
    id2label = checkpoint_labels(checkpoint, config.id)
    size = onnx_input_size(preprocessor, config.id, backend="triton")
    expected = Expected(
        model_id=config.id,
        fingerprint=fingerprint(checkpoint),
        input_size=size,
        num_labels=len(id2label),
        precision=None if config.precision == "auto" else config.precision,
    )
    model = TritonModel(config.triton, expected)
    served = model.probe()
    # Events name the server's precision; a gateway that starts before its server
    # names the configured one (pin model.precision: it is then also checked).
    precision = served.precision if served is not None else config.precision
    device = served.device if served is not None else "remote"
    info = LoadedModelInfo(config.id, checkpoint.revision, device, precision, "triton")
    log.info(
        "model %s (revision %s): classifying on Triton %s (model %r), %d labels",
        config.id,
        checkpoint.revision or "local",
        config.triton.url,
        config.triton.model,
        len(id2label),
    )
    # No buckets: the server's dynamic batcher forms its own batches.
    return Loaded(TritonEngine(model, preprocessor), preprocessor, id2label, info)
