"""The one Backend protocol the pipeline classifies with, whatever runs the model.

A backend takes a batch of RGB ``uint8`` frames with :meth:`Backend.submit` and returns a
:class:`Pending`; ``result()`` gives the probabilities. A backend that computes while the
caller goes on (torch on CUDA) says so with ``overlaps``: the pipeline then keeps one batch
in flight. Synchronous backends return a :class:`Completed` batch.

Imports no torch, ONNX Runtime or tritonclient: the pipeline and tests type against it
without loading a model runtime.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from labelcast.model.config import LoadedModelInfo


class Pending(Protocol):
    """A batch a backend was given: its probabilities, once they are there."""

    def result(self) -> npt.NDArray[np.float32]:
        """Wait for the batch; return its probabilities, shape (N, num_labels), fp32."""
        ...


@runtime_checkable
class Backend(Protocol):
    """What classifies batches of frames: torch, ONNX Runtime or a Triton server."""

    @property
    def info(self) -> LoadedModelInfo:
        """What was loaded: id, resolved revision, device, precision, backend."""
        ...

    @property
    def id2label(self) -> dict[int, str]:
        """Class index to label name."""
        ...

    @property
    def overlaps(self) -> bool:
        """True when :meth:`submit` returns before the result is ready.

        The pipeline then prepares the next batch while this one computes.
        """
        ...

    def submit(
        self, images: Sequence[npt.NDArray[np.uint8]], stop: threading.Event | None = None
    ) -> Pending:
        """Start classifying RGB ``uint8`` frames.

        May raise :class:`~labelcast.errors.BatchError` when a remote server dropped the
        batch; ``stop`` ends a wait for a remote server (with BatchError).
        """
        ...

    def remote_status(self) -> str | None:
        """Why a remote model server can't be used right now; None when it can (or is local)."""
        ...

    def remote_activity(self) -> float | None:
        """``time.monotonic()`` of the latest exchange with a remote server; None if local."""
        ...

    def close(self) -> None:
        """Free the model; the backend is unusable after."""
        ...


class Completed:
    """A :class:`Pending` whose result is already there (a synchronous backend's batch)."""

    def __init__(self, probs: npt.NDArray[np.float32]) -> None:
        self._probs = probs

    def result(self) -> npt.NDArray[np.float32]:
        """Return the probabilities (nothing to wait for)."""
        return self._probs


@runtime_checkable
class Classifies(Protocol):
    """The least an application may lend as a classifier: ``classify`` plus info and labels."""

    @property
    def info(self) -> LoadedModelInfo:
        """What was loaded (see :attr:`Backend.info`)."""
        ...

    @property
    def id2label(self) -> dict[int, str]:
        """Class index to label name."""
        ...

    def classify(self, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
        """Return probabilities, shape (len(images), num_labels)."""
        ...


class SerialBackend:
    """A :class:`Backend` over an object that only classifies: each batch before returning."""

    def __init__(self, inner: Classifies) -> None:
        self._inner = inner

    @property
    def info(self) -> LoadedModelInfo:
        """The wrapped classifier's info."""
        return self._inner.info

    @property
    def id2label(self) -> dict[int, str]:
        """The wrapped classifier's labels."""
        return self._inner.id2label

    @property
    def overlaps(self) -> bool:
        """False: ``classify`` returns the result."""
        return False

    def submit(
        self, images: Sequence[npt.NDArray[np.uint8]], stop: threading.Event | None = None
    ) -> Pending:
        """Classify ``images`` now (``stop`` is for remote waits, which a wrapper has none of)."""
        return Completed(self._inner.classify(images))

    def remote_status(self) -> str | None:
        """None: nothing remote to wait for."""
        return None

    def remote_activity(self) -> float | None:
        """None: nothing remote to wait for."""
        return None

    def close(self) -> None:
        """Nothing: the application that lent the classifier owns it."""


def as_backend(classifier: object) -> Backend:
    """Return ``classifier`` as a :class:`Backend` (what ``Pipeline(classifier=...)`` takes).

    A Backend is returned as it is; an object with only ``classify``, ``info`` and
    ``id2label`` is wrapped in a :class:`SerialBackend`.
    """
    if isinstance(classifier, Backend):
        return classifier
    if isinstance(classifier, Classifies):
        return SerialBackend(classifier)
    raise TypeError(
        f"{type(classifier).__name__} is not a classifier: it needs submit() (a Backend) "
        "or classify(), and info and id2label"
    )
