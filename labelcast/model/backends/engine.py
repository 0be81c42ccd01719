"""The small protocol each runtime implements for the Classifier: an engine.

The :class:`~labelcast.model.classifier.Classifier` owns what every backend shares
(labels, batch buckets, softmax in fp32, :class:`~labelcast.model.backends.base.Backend`);
an engine owns what differs: how frames become its input, the forward pass, and whether it
waits on a server. A new runtime (say OpenVINO) is one module with an engine and a
``load(config, precision) -> Loaded`` function, plus one line in ``model/registry.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    from labelcast.model.backends.base import Pending


class Engine(Protocol):
    """One runtime's forward pass (torch, ONNX Runtime, Triton), as the Classifier calls it."""

    @property
    def model(self) -> object | None:
        """The runtime's own model (torch module, ONNX session, Triton client); None once closed."""
        ...

    @property
    def device(self) -> torch.device:
        """Where normalised input is made (the CPU for runtimes outside torch)."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of normalised input."""
        ...

    @property
    def overlaps(self) -> bool:
        """True when :meth:`fetch` returns before the device is done (torch on CUDA)."""
        ...

    @property
    def remote(self) -> bool:
        """True when a batch may wait for a server, a wait that ``stop`` ends."""
        ...

    def inputs(self, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """Turn RGB ``uint8`` frames into what :meth:`run` takes."""
        ...

    def run(self, inputs: torch.Tensor, stop: threading.Event | None) -> torch.Tensor:
        """Return the logits of one batch, one row per frame."""
        ...

    def fetch(self, probs: torch.Tensor) -> Pending:
        """Bring fp32 probabilities to the host (at once, or when the device is done)."""
        ...

    def status(self) -> str | None:
        """Why the server can't be used now; None when it can, or for a local engine."""
        ...

    def activity(self) -> float | None:
        """``time.monotonic()`` of the latest exchange with a server; None if local."""
        ...

    def close(self) -> None:
        """Drop the model and any buffers or threads; the engine is unusable after."""
        ...
