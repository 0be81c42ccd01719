"""``labelcast serve``: host the configured classifier as a Triton model, with PyTriton.

The server loads the checkpoint as ``labelcast run`` would (pinned revision, SHA-256
checks, device, precision; ``backend: triton`` in the file means torch here, so gateways
and server can share one config file) and binds it into a Triton Inference Server that
PyTriton (the ``nvidia-pytriton`` package, the ``serve`` extra) starts. The model takes
the gateways' resized ``uint8`` pixels, normalises them on its device and returns logits
(the signature is in ``model/backends/triton_served.py``). Triton's dynamic batcher
(``model.triton.serve.max_batch_size``, ``max_queue_delay_us``) merges requests of many
gateways into one batch; ``instances`` model instances run batches in parallel.

PyTriton's Python backend stub must match the interpreter: use a Python whose build it
supports (on Debian, ``/usr/bin/python3`` in a venv of its own; see docs/scaling.md).

Of Triton's endpoints, shared memory, model repository control, tracing and logging
settings stay behind a random access token (PyTriton's default); health, metadata, model
config, inference and statistics (Triton's batch sizes) are open.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from labelcast.config import PipelineConfig
from labelcast.errors import ModelError
from labelcast.model.backends import triton_served
from labelcast.model.checkpoint import resolve_checkpoint
from labelcast.model.classifier import Classifier
from labelcast.model.config import ModelConfig, served_config
from labelcast.model.loading import onnx_input_size, resolve_device
from labelcast.model.zeroshot import refuse_zero_shot

log = logging.getLogger(__name__)

# What the inference function of one model instance is: Triton's named inputs in a batch,
# named outputs out.
InferFunction = Callable[..., dict[str, npt.NDArray[Any]]]
# PyTriton endpoints kept behind its access token (the rest are open; see above).
_RESTRICTED = ["shared-memory", "model-repository", "trace", "logging"]
_INSTALL_HINT = (
    "labelcast serve needs nvidia-pytriton: pip install 'labelcast[serve]' into a venv "
    "of a Python that PyTriton's backend stub supports (docs/scaling.md)"
)


def instance_configs(config: ModelConfig, instances: int) -> list[ModelConfig]:
    """One model config per Triton instance: spread over the GPUs with device ``auto``."""
    served = served_config(config)
    count = torch.cuda.device_count() if config.device == "auto" else 0
    if count < 2:
        return [served] * instances
    return [served.model_copy(update={"device": f"cuda:{i % count}"}) for i in range(instances)]


def make_infer(classifier: Classifier, info: bytes) -> InferFunction:
    """Return one model instance's inference function: ``pixels`` in; ``logits``, ``info`` out."""
    from pytriton.decorators import batch

    @batch  # type: ignore[untyped-decorator]
    def infer(pixels: npt.NDArray[np.uint8]) -> dict[str, npt.NDArray[Any]]:
        logits = classifier.forward_pixels(torch.from_numpy(pixels))
        return {
            triton_served.OUTPUT_NAME: logits.float().cpu().numpy(),
            triton_served.INFO_OUTPUT: np.array([[info]] * len(pixels), dtype=np.bytes_),
        }

    result: InferFunction = infer
    return result


def serve(
    config: PipelineConfig,
    *,
    workspace: Path | None = None,
    wrap: Callable[[InferFunction], InferFunction] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Serve the configured model until SIGTERM/SIGINT (or ``stop``); return the exit code.

    ``workspace`` is where PyTriton's working folder is made (the system's temporary
    folder if None); the folder is removed at exit. ``wrap`` wraps each instance's
    inference function (tests make slow or failing servers with it).
    """
    try:
        from pytriton.model_config import DynamicBatcher, Tensor
        from pytriton.model_config import ModelConfig as PyTritonModelConfig
        from pytriton.triton import Triton, TritonSecurityConfig
        from pytriton.triton import TritonConfig as ServerConfig
    except ImportError as exc:
        raise ModelError(f"{_INSTALL_HINT} ({exc})") from exc

    model_config = config.model
    settings = model_config.triton.serve
    checkpoint = resolve_checkpoint(
        model_config.id, model_config.revision, allow_pickle=model_config.allow_pickle
    )
    refuse_zero_shot(checkpoint, "labelcast serve")
    classifiers: dict[str, Classifier] = {}
    functions: list[InferFunction] = []
    for instance in instance_configs(model_config, settings.instances):
        key = str(resolve_device(instance.device))
        if key not in classifiers:
            classifiers[key] = Classifier.load(instance)
        classifier = classifiers[key]
        info = triton_served.served_model_info(
            checkpoint, classifier.info.precision, classifier.info.device, classifier.info.backend
        )
        function = make_infer(classifier, json.dumps(info).encode())
        functions.append(wrap(function) if wrap is not None else function)
    first = next(iter(classifiers.values()))
    height, width = onnx_input_size(first.preprocessor, model_config.id, backend="triton")

    server_config = ServerConfig(
        http_address=settings.bind,
        http_port=settings.http_port,
        grpc_address=settings.bind,
        grpc_port=settings.grpc_port,
        metrics_address=settings.bind,
        metrics_port=settings.metrics_port,
        exit_timeout_secs=5,
    )
    security = TritonSecurityConfig(restricted_endpoints=list(_RESTRICTED))
    done = stop or threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping the Triton server", signal.Signals(signum).name)
        done.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    _quiet_pytriton()
    folder = None
    if workspace is not None:
        workspace.mkdir(parents=True, exist_ok=True)
        folder = workspace / f"pytriton-{os.getpid()}-{secrets.token_hex(4)}"
    triton = Triton(config=server_config, workspace=folder, security_config=security)
    try:
        triton.bind(
            model_name=model_config.triton.model,
            infer_func=functions,
            inputs=[
                Tensor(name=triton_served.INPUT_NAME, dtype=np.uint8, shape=(3, height, width))
            ],
            outputs=[
                Tensor(name=triton_served.OUTPUT_NAME, dtype=np.float32, shape=(first.num_labels,)),
                Tensor(name=triton_served.INFO_OUTPUT, dtype=np.bytes_, shape=(1,)),
            ],
            config=PyTritonModelConfig(
                max_batch_size=settings.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=settings.max_queue_delay_us),
            ),
            strict=True,
        )
        triton.run()
        log.info(
            "serving %s as Triton model %r on grpc://%s:%d and http://%s:%d (metrics :%d): "
            "%s on %s, max_batch_size %d, max_queue_delay_us %d, %d instance(s)",
            model_config.id,
            model_config.triton.model,
            settings.bind,
            settings.grpc_port,
            settings.bind,
            settings.http_port,
            settings.metrics_port,
            first.info.precision,
            ", ".join(classifiers),
            settings.max_batch_size,
            settings.max_queue_delay_us,
            settings.instances,
        )
        while not done.wait(1.0):
            if not triton.is_alive():
                log.error("the Triton server stopped on its own (see its log above)")
                return 1
        return 0
    finally:
        triton.stop()


def _quiet_pytriton() -> None:
    """PyTriton logs every step at INFO; keep its warnings unless labelcast logs DEBUG."""
    if not logging.getLogger("labelcast").isEnabledFor(logging.DEBUG):
        logging.getLogger("pytriton").setLevel(logging.WARNING)
