"""BEiT's relative position bias, computed once per input size instead of on every forward.

transformers' ``BeitRelativePositionBias`` rebuilds each layer's (heads, tokens, tokens)
bias from its small table on every forward pass: a bilinear resize of the table, a
gather of tokens² entries and a transposing copy. None of it depends on the pictures,
only on the input size and the weights, yet on a 2-core CPU it costs ~2.5 ms per layer,
~30 ms per forward pass of beit-base whatever the batch size (about 12 % of a forward
pass of one frame); on CUDA, several kernel launches per layer. ``cache_position_bias``
wraps each such module so that, while no gradient is being recorded, the bias is
computed once per input size and reused.

The cache can never serve a stale bias: its key holds the table's version counter
(bumped by every in-place change, ``load_state_dict`` included), device and dtype;
moving or casting the model clears it; and with gradients on or in training mode the
wrapped module runs as it is, so nothing is cached for autograd.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

# Input sizes remembered per layer: a pipeline uses one; a few more cost little.
_ENTRIES = 4
# The transformers classes computing the bias this way (Data2VecVision copies BEiT's).
_BIAS_CLASSES = (
    ("transformers.models.beit.modeling_beit", "BeitRelativePositionBias"),
    ("transformers.models.data2vec.modeling_data2vec_vision", "Data2VecVisionRelativePositionBias"),
)


class CachedPositionBias(torch.nn.Module):
    """Wraps a relative position bias module; reuses its output per input size in inference."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.train(inner.training)  # a new module would start in training mode: never caching
        self._cache: dict[tuple[Any, ...], torch.Tensor] = {}

    def forward(
        self,
        window_size: tuple[int, int],
        interpolate_pos_encoding: bool = False,
        dim_size: int | None = None,
    ) -> torch.Tensor:
        """Return the bias ``inner`` computes for these arguments, from the cache if it can."""
        key = self._key(window_size, interpolate_pos_encoding, dim_size)
        if key is None:
            result: torch.Tensor = self.inner(window_size, interpolate_pos_encoding, dim_size)
            return result
        cached = self._cache.get(key)
        if cached is None:
            if len(self._cache) >= _ENTRIES:
                self._cache.clear()
            cached = self._cache[key] = self.inner(window_size, interpolate_pos_encoding, dim_size)
        return cached

    def _key(
        self, window_size: tuple[int, int], interpolate: bool, dim_size: int | None
    ) -> tuple[Any, ...] | None:
        """Return the cache key, or None where caching is not safe (autograd, training)."""
        if self.training or torch.is_grad_enabled():
            return None
        table = getattr(self.inner, "relative_position_bias_table", None)
        if not isinstance(table, torch.Tensor):
            return None
        try:
            version = table._version
        except RuntimeError:  # an inference tensor has no version counter: never cache it
            return None
        size = tuple(int(side) for side in window_size)
        return (size, bool(interpolate), dim_size, table.device, table.dtype, version)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        # .to(), .half(), .cuda() and friends: the cached biases are of the old kind.
        self._cache.clear()
        return super()._apply(fn, recurse)  # type: ignore[no-untyped-call]


def cache_position_bias(model: torch.nn.Module) -> int:
    """Wrap every relative position bias module of ``model`` in place; return how many.

    Models without such modules are left as they are (returns 0).
    """
    classes = _bias_classes()
    if not classes:
        return 0
    wrapped = 0
    for parent in list(model.modules()):
        if isinstance(parent, CachedPositionBias):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, classes):
                setattr(parent, name, CachedPositionBias(child))
                wrapped += 1
    if wrapped:
        log.debug("caching the relative position bias of %d modules", wrapped)
    return wrapped


def _bias_classes() -> tuple[type[torch.nn.Module], ...]:
    # Only modules already imported: a model of one of these classes has imported its own.
    found = []
    for module_name, class_name in _BIAS_CLASSES:
        bias_class = getattr(sys.modules.get(module_name), class_name, None)
        if isinstance(bias_class, type) and issubclass(bias_class, torch.nn.Module):
            found.append(bias_class)
    return tuple(found)


def uncache_position_bias(model: torch.nn.Module) -> int:
    """Undo :func:`cache_position_bias`: put each wrapped module back; return how many.

    For a model about to be saved: the wrappers would add ``inner.`` to its tensors' names.
    """
    unwrapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, CachedPositionBias):
                setattr(parent, name, child.inner)
                unwrapped += 1
    return unwrapped
