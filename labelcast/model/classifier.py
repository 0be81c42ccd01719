"""The classifier: a loaded checkpoint that classifies batches, on any backend.

:meth:`Classifier.load` loads the configured model with its backend (``registry.py``:
torch, ONNX Runtime or Triton, each an engine under ``backends/``). The Classifier is
the pipeline's :class:`~labelcast.model.backends.base.Backend` for all of them: it owns
what they share (labels, batch buckets, scores in fp32, freeing the model) and asks its
engine for the rest (preprocessing, the forward pass, a remote server's state). Scores are
a softmax over the labels, or for a SigLIP checkpoint a sigmoid of each label's logit
(``info.scoring``).
"""

from __future__ import annotations

import ctypes
import gc
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from labelcast.model.backends.base import Completed, Pending
from labelcast.model.backends.engine import Engine
from labelcast.model.buckets import BatchBuckets
from labelcast.model.config import (
    DEFAULT_MODEL_ID,
    LoadedModelInfo,
    ModelConfig,
    reference_config,
    served_config,
)
from labelcast.model.loading import (
    load_torch_model,
    onnx_input_size,
    resolve_device,
    resolve_precision,
)
from labelcast.model.preprocess import Preprocessor
from labelcast.model.registry import load_engine

# Names callers imported from here before the model package was split up.
__all__ = [
    "DEFAULT_MODEL_ID",
    "Classifier",
    "LoadedModelInfo",
    "ModelConfig",
    "load_torch_model",
    "onnx_input_size",
    "reference_config",
    "resolve_device",
    "resolve_precision",
    "served_config",
]


class Classifier:
    """An image classification checkpoint ready to classify batches of RGB ``uint8`` frames."""

    def __init__(
        self,
        engine: Engine,
        preprocessor: Preprocessor,
        id2label: dict[int, str],
        info: LoadedModelInfo,
        buckets: Sequence[int] | None = None,
    ) -> None:
        self._engine = engine
        self._buckets = BatchBuckets(buckets)
        self._preprocessor = preprocessor
        self.id2label = id2label
        self.info = info

    @classmethod
    def load(cls, config: ModelConfig, precision: str | None = None) -> Classifier:
        """Load the configured checkpoint (weights, labels, preprocessing) with its backend.

        ``precision`` overrides the configured one (``verify`` loads an fp32 reference);
        it is for the torch backend only: use :func:`reference_config` for a torch fp32
        reference of another backend's model.
        """
        loaded = load_engine(config, precision)
        return cls(loaded.engine, loaded.preprocessor, loaded.id2label, loaded.info, loaded.buckets)

    @property
    def num_labels(self) -> int:
        """Number of classes the checkpoint predicts."""
        return len(self.id2label)

    @property
    def preprocessor(self) -> Preprocessor:
        """The checkpoint's preprocessing."""
        return self._preprocessor

    @property
    def _model(self) -> object | None:
        # The runtime's own model (None once closed), for tests that look inside it.
        return self._engine.model

    def preprocess(self, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """Turn RGB ``uint8`` frames into what the forward pass takes.

        Normalised pixels of the model's dtype on its device; for backend triton the
        resized ``uint8`` pixels (on the CPU) that the gateway sends.
        """
        return self._engine.inputs(images)

    def forward(
        self, pixel_values: torch.Tensor, stop: threading.Event | None = None
    ) -> torch.Tensor:
        """Run the model on preprocessed input and return the logits, one row per frame.

        ``stop`` ends a wait for a remote server (backend triton raises BatchError then).
        With ``model.batch.buckets`` the model runs on batches padded to a bucket size
        (see ``buckets.py``); the padding's rows are cut off again.
        """
        return self._buckets.run(lambda part: self._engine.run(part, stop), pixel_values)

    def forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise resized (N, 3, H, W) ``uint8`` pixels and run the model: the logits.

        What ``labelcast serve`` runs for a gateway's request.
        """
        with torch.inference_mode():
            engine = self._engine
            inputs = self._preprocessor.normalise(pixels.to(engine.device), engine.dtype)
            return self.forward(inputs)

    def logits(self, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Return the logits as fp32 numpy, shape (len(images), num_labels)."""
        with torch.inference_mode():
            result: npt.NDArray[np.float32] = (
                self.forward(self.preprocess(images)).float().cpu().numpy()
            )
        return result

    @property
    def overlaps(self) -> bool:
        """True where :meth:`submit` returns while the device still works (torch on CUDA).

        The pipeline then stages the next batch while this one computes.
        """
        return self._engine.overlaps

    def submit(
        self, images: Sequence[npt.NDArray[np.uint8]], stop: threading.Event | None = None
    ) -> Pending:
        """Start classifying ``images``; the returned batch's ``result()`` is :meth:`classify`'s.

        On CUDA this queues the whole batch (copy, preprocessing, forward pass, scores,
        copy back) and returns at once, so the caller can stage the next batch meanwhile
        (see ``staging.py``). Elsewhere it calls :meth:`classify` and returns its result.
        ``stop`` ends a wait for a remote server (BatchError).
        """
        if not self.overlaps:
            # ``stop`` only matters where a batch waits for a server; subclasses that
            # override classify(images) (tests, wrappers) are called as they expect.
            if stop is not None and self._engine.remote:
                return Completed(self.classify(images, stop))
            return Completed(self.classify(images))
        with torch.inference_mode():
            probs = self.scores(self.forward(self.preprocess(images)))
            return self._engine.fetch(probs)

    def classify(
        self, images: Sequence[npt.NDArray[np.uint8]], stop: threading.Event | None = None
    ) -> npt.NDArray[np.float32]:
        """Return class scores in fp32 (see :meth:`scores`), shape (len(images), num_labels).

        With backend triton this waits through server faults (``stop`` ends the wait)
        and raises BatchError for a batch it drops (see ``backends/triton.py``).
        """
        if self.overlaps:
            return self.submit(images).result()
        with torch.inference_mode():
            probs = self.scores(self.forward(self.preprocess(images), stop))
        result: npt.NDArray[np.float32] = probs.cpu().numpy()
        return result

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Turn logits into scores in fp32: softmax over the labels, or a sigmoid of each."""
        if self.info.scoring == "sigmoid":
            return logits.float().sigmoid()
        return logits.float().softmax(dim=-1)

    def close(self) -> None:
        """Free the model, its staging buffers and copy threads; the classifier is unusable after.

        A reload that loads another model closes the one it replaces once the pipeline
        no longer uses it, so ten reloads hold one model, not eleven.
        """
        on_cuda = self._engine.device.type == "cuda"
        self._engine.close()
        # Modules can sit in reference cycles: collect them now, not at some later time.
        gc.collect()
        _release_freed_heap()
        if on_cuda:
            torch.cuda.empty_cache()  # give the freed blocks back to the device

    def remote_status(self) -> str | None:
        """Why a remote model server can't be used right now; None when it can (or is local)."""
        return self._engine.status()

    def remote_activity(self) -> float | None:
        """``time.monotonic()`` of the latest exchange with (or wait for) a remote server."""
        return self._engine.activity()


def _release_freed_heap() -> None:
    """Ask glibc to return freed heap pages to the system, so RSS shows the model is gone.

    Without it the freed weights stay in malloc's arenas: no leak, but RSS (what an
    operator watches) stays high until the memory is reused. Elsewhere this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)  # glibc only, not musl
    if trim is not None:
        trim(0)
