"""Backend name (``model.backend``) -> the function that loads it.

Adding a runtime is one module under ``backends/`` with an engine and a ``load`` function,
one line here, and its name in :data:`~labelcast.model.config.BackendName`.
"""

from __future__ import annotations

from collections.abc import Callable

from labelcast.model.backends import onnxruntime as onnxruntime_backend
from labelcast.model.backends import torch as torch_backend
from labelcast.model.backends import triton as triton_backend
from labelcast.model.config import ModelConfig
from labelcast.model.loading import Loaded

Loader = Callable[[ModelConfig, "str | None"], Loaded]

# Each backend module imports its optional runtime (onnxruntime, tritonclient) only when
# its loader runs, so importing them all here costs no more than torch.
LOADERS: dict[str, Loader] = {
    "torch": torch_backend.load,
    "onnxruntime": onnxruntime_backend.load,
    "triton": triton_backend.load,
}


def load_engine(config: ModelConfig, precision: str | None = None) -> Loaded:
    """Load ``config``'s model with its backend (``precision`` overrides, torch only)."""
    return LOADERS[config.backend](config, precision)
