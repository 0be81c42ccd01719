"""Getting a batch of frames onto a CUDA device while the device computes the previous one.

On CUDA, a batch's ``uint8`` frames are copied once, into a page-locked (pinned) host
buffer; from there a copy engine moves them to the device on a side stream while the
compute stream may still be running the previous batch's forward pass, and the resize
and normalisation run on the device, on that side stream too. The forward pass waits
for the side stream's event, not for the host.

Only ``uint8`` crosses the bus: a 1280x720 frame is 2.8 MB as ``uint8`` and would be
11 MB as float32. Pinned memory is what lets the copy run asynchronously (from pageable
memory CUDA copies through a bounce buffer and blocks the host).

The pinned buffers are a ring of ``slots``: a slot is refilled only after the device
has finished reading it (its copy event), so with two slots the host fills batch k+1
while batch k's copy may still be in flight. Each slot grows to the largest batch it
has held and is then reused; nothing is allocated per batch in the steady state.

The host copy into pinned memory is the one step that scales with the frame count on
the CPU: a batch of 256 720p frames is 700 MB, more than one core copies in the time a
datacenter GPU takes to classify it. Batches of more than ``PARALLEL_COPY_BYTES`` are
therefore copied by a few threads (NumPy releases the GIL while it copies).

Elsewhere (the CPU) there is nothing to overlap: :class:`InputStager` just preprocesses.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from labelcast.model.preprocess import Preprocessor, shape_groups

# Two slots: one being filled by the host while the other's copy may still be running.
DEFAULT_SLOTS = 2
# Batches larger than this are copied into pinned memory by several threads.
PARALLEL_COPY_BYTES = 32 << 20
# At most this many copy threads (memory bandwidth, not cores, bounds a copy).
MAX_COPY_THREADS = 8


@dataclass(frozen=True)
class StagedInput:
    """A batch's model input on the device, with the event that says when it is there.

    ``ready`` is None where the input was made synchronously (off CUDA).
    """

    pixel_values: torch.Tensor
    ready: torch.cuda.Event | None

    def on(self, stream: torch.cuda.Stream | None) -> torch.Tensor:
        """Return the input for use on ``stream``: work queued there waits for it.

        ``stream`` None (off CUDA) returns the input as it is.
        """
        if self.ready is not None and stream is not None:
            stream.wait_event(self.ready)
            # Made on the side stream, used on ``stream``: the caching allocator must not
            # hand its memory out again before ``stream``'s work on it has run.
            self.pixel_values.record_stream(stream)
        return self.pixel_values


class _PinnedSlot:
    """One page-locked host buffer, and the event after the last device copy out of it."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None
        self.copied: torch.cuda.Event | None = None

    def take(self, nbytes: int) -> torch.Tensor:
        """Return a pinned ``uint8`` buffer of at least ``nbytes``, free to be overwritten."""
        if self.copied is not None:
            self.copied.synchronize()  # the device has read what the slot held
        if self.buffer is None or self.buffer.numel() < nbytes:
            self.buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return self.buffer


class InputStager:
    """Turns RGB ``uint8`` frames into model input on the device (see the module docstring)."""

    def __init__(
        self,
        preprocessor: Preprocessor,
        device: torch.device,
        dtype: torch.dtype,
        slots: int = DEFAULT_SLOTS,
    ) -> None:
        if slots < 1:
            raise ValueError("an input stager needs at least one slot")
        self._preprocessor = preprocessor
        self._device = device
        self._dtype = dtype
        self._lock = threading.Lock()  # one batch is staged at a time: the ring is shared
        self._stream: torch.cuda.Stream | None = None
        self._slots = [_PinnedSlot() for _ in range(slots)]
        self._next_slot = 0
        self._copiers: ThreadPoolExecutor | None = None
        self._copy_threads = 1
        if device.type == "cuda":
            self._stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
            self._copy_threads = min(MAX_COPY_THREADS, os.cpu_count() or 1)
            if self._copy_threads > 1:
                # Idle until a large batch comes; each batch waits for its own copies.
                self._copiers = ThreadPoolExecutor(
                    self._copy_threads, thread_name_prefix="staging-copy"
                )

    def close(self) -> None:
        """Stop the copy threads and free the pinned buffers (after the last batch staged)."""
        with self._lock:
            if self._copiers is not None:
                self._copiers.shutdown(wait=True)
                self._copiers = None
            for slot in self._slots:
                if slot.copied is not None:
                    slot.copied.synchronize()  # the device has read the slot
                slot.buffer = slot.copied = None

    @property
    def asynchronous(self) -> bool:
        """True where staging returns before the input is on the device (CUDA)."""
        return self._stream is not None

    def stage(self, images: Sequence[npt.NDArray[np.uint8]]) -> StagedInput:
        """Start moving and preprocessing ``images``; see :meth:`StagedInput.on`."""
        if self._stream is None:
            return StagedInput(self._preprocessor(images, self._device, self._dtype), None)
        with self._lock:
            return self._stage_cuda(images, self._stream)

    def _stage_cuda(
        self, images: Sequence[npt.NDArray[np.uint8]], stream: torch.cuda.Stream
    ) -> StagedInput:
        slot = self._slots[self._next_slot]
        self._next_slot = (self._next_slot + 1) % len(self._slots)
        groups = shape_groups(images)
        shapes = [images[positions[0]].shape for positions in groups]
        sizes = [len(group) * math.prod(shape) for group, shape in zip(groups, shapes, strict=True)]
        host = slot.take(sum(sizes))
        views: list[torch.Tensor] = []
        offset = 0
        copies: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]] = []
        for positions, shape, size in zip(groups, shapes, sizes, strict=True):
            view = host[offset : offset + size].view(len(positions), *shape)
            filled = view.numpy()
            copies.extend(
                (filled[index], images[position]) for index, position in enumerate(positions)
            )
            views.append(view)
            offset += size
        self._copy(copies, sum(sizes))
        # Not ordered after the compute stream: this copy runs while it computes. Memory
        # made here is the side stream's; StagedInput.on() guards its use elsewhere.
        with torch.cuda.stream(stream):
            on_device = [view.to(self._device, non_blocking=True) for view in views]
            copied = torch.cuda.Event()  # type: ignore[no-untyped-call]
            copied.record(stream)
            pixels = self._preprocessor.resize_groups(list(zip(groups, on_device, strict=True)))
            pixel_values = self._preprocessor.normalise(pixels, self._dtype)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(stream)
        slot.copied = copied
        return StagedInput(pixel_values, ready)

    def _copy(
        self, copies: Sequence[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]], nbytes: int
    ) -> None:
        """Copy each frame into its place in pinned memory: the one host copy of a batch."""
        if self._copiers is None or nbytes <= PARALLEL_COPY_BYTES:
            _copy_frames(copies)
            return
        share = math.ceil(len(copies) / self._copy_threads)
        parts = [copies[start : start + share] for start in range(0, len(copies), share)]
        for done in [self._copiers.submit(_copy_frames, part) for part in parts]:
            done.result()


def _copy_frames(copies: Sequence[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]]) -> None:
    for target, frame in copies:
        np.copyto(target, frame)
