"""Padded batch-size buckets, and torch.compile over them.

With ``model.batch.buckets`` the model only ever sees a few fixed batch sizes: a batch
of n frames is padded up to the smallest bucket that holds it, and the padding's
results are cut off again. Fixed shapes are what lets ``torch.compile`` (and, on CUDA,
its CUDA graphs) capture each shape once instead of on every new batch size.

Padding repeats the batch's last real frame rather than adding zeros, so that it can
never leak into the real frames' results: each frame's logits depend only on that
frame, and dynamic int8 quantization (torch's and ONNX Runtime's), which scales
activations by the range over the whole batch, sees the same range with copies of a
real frame added as without them. What remains is the float rounding of a different
batch size (about 1e-6 in fp32 on the CPU).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Chunk:
    """Frames ``start:stop`` of a batch, run padded to ``padded`` frames."""

    start: int
    stop: int
    padded: int


class BatchBuckets:
    """Pads batches up to fixed sizes around a forward function; a no-op without sizes.

    A batch larger than the largest bucket (possible only from the Python API: the
    batcher's ``max_size`` fits a bucket) is run in chunks of the largest bucket, the
    last one padded.
    """

    def __init__(self, sizes: Sequence[int] | None = None) -> None:
        self.sizes: tuple[int, ...] = tuple(sorted(set(sizes or ())))
        if self.sizes and self.sizes[0] < 1:
            raise ValueError("bucket sizes must be positive")

    def plan(self, count: int) -> list[Chunk]:
        """Return how a batch of ``count`` frames is run: chunks and their padded sizes."""
        if not self.sizes:
            return [Chunk(0, count, count)] if count else []
        largest = self.sizes[-1]
        chunks = []
        for start in range(0, count, largest):
            stop = min(start + largest, count)
            padded = next(size for size in self.sizes if size >= stop - start)
            chunks.append(Chunk(start, stop, padded))
        return chunks

    def run(
        self, forward: Callable[[torch.Tensor], torch.Tensor], pixel_values: torch.Tensor
    ) -> torch.Tensor:
        """Return ``forward``'s output for ``pixel_values``, running only bucket-sized batches.

        The output has exactly one row per input frame, in order; padding rows are cut.
        """
        count = pixel_values.shape[0]
        chunks = self.plan(count)
        if not chunks or (len(chunks) == 1 and chunks[0].padded == count):
            return forward(pixel_values)
        outputs = []
        for chunk in chunks:
            part = pad_batch(pixel_values[chunk.start : chunk.stop], chunk.padded)
            outputs.append(forward(part)[: chunk.stop - chunk.start])
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def pad_batch(batch: torch.Tensor, size: int) -> torch.Tensor:
    """Return ``batch`` padded to ``size`` rows with copies of its last row (see the module)."""
    missing = size - batch.shape[0]
    if missing < 0:
        raise ValueError(f"a batch of {batch.shape[0]} does not fit a bucket of {size}")
    if missing == 0:
        return batch
    filler = batch[-1:].expand(missing, *batch.shape[1:])
    return torch.cat([batch, filler])


class CompiledClassifier(torch.nn.Module):
    """A ``torch.compile``d image classifier called like the transformers model it wraps.

    ``forward(pixel_values=...)`` returns an object with ``.logits``, as the model does.
    The logits are copied out: with CUDA graphs the compiled model's outputs live in
    buffers the next call overwrites.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model = model
        self._cuda_graphs = device.type == "cuda"
        mode = "reduce-overhead" if self._cuda_graphs else None
        # Static shapes: one graph per bucket, none for shapes in between.
        self._compiled: Callable[..., Any] = torch.compile(model, mode=mode, dynamic=False)

    def forward(self, pixel_values: torch.Tensor) -> _Logits:
        """Run the compiled model; return its logits (a copy) as ``.logits``."""
        if self._cuda_graphs:
            # Each call is a new step for CUDA graph trees: earlier outputs may be reused.
            torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        logits: torch.Tensor = self._compiled(pixel_values=pixel_values).logits
        return _Logits(logits.clone())


@dataclass(frozen=True)
class _Logits:
    logits: torch.Tensor


def compile_model(
    model: torch.nn.Module,
    device: torch.device,
    dtype: torch.dtype,
    buckets: Sequence[int],
    input_size: tuple[int, int],
) -> CompiledClassifier:
    """Compile ``model`` and run every bucket once, so no live batch waits for a compile.

    Compiling takes seconds to minutes per bucket; doing it at load time keeps the
    classifier's first batches (and its liveness watchdog) free of it.
    """
    compiled = CompiledClassifier(model, device)
    height, width = input_size
    for size in sorted(set(buckets)):
        log.info("compiling the model for batches of %d (%s x %s)", size, height, width)
        pixels = torch.zeros(size, 3, height, width, device=device, dtype=dtype)
        with torch.inference_mode():
            compiled(pixel_values=pixels)
    return compiled
