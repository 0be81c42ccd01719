"""The classifier: loads a Hugging Face image classification checkpoint and classifies batches.

Preprocessing runs on the model's device (see ``preprocess.py``); the forward pass runs
in the configured precision; softmax is always computed in fp32.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from labelcast.errors import ModelError
from labelcast.pipeline.buckets import (
    MAX_COMPILED_BUCKETS,
    BatchBuckets,
    CompileMode,
    check_buckets,
    compile_model,
)
from labelcast.pipeline.checkpoint import Checkpoint, resolve_checkpoint, verify_sha256
from labelcast.pipeline.onnx_backend import OnnxModel
from labelcast.pipeline.position_bias import cache_position_bias
from labelcast.pipeline.preprocess import Preprocessor
from labelcast.pipeline.staging import InputStager
from labelcast.pipeline.triton_backend import TritonConfig, TritonModel

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "microsoft/beit-base-patch16-224"
Precision = Literal["auto", "fp16", "bf16", "fp32", "int8"]
Backend = Literal["torch", "onnxruntime", "triton"]
_DTYPES = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "int8": torch.float32,
}


class BatchConfig(BaseModel):
    """Micro-batching across streams: flush at ``max_size`` frames or ``max_wait_ms``."""

    model_config = ConfigDict(extra="forbid")

    max_size: Annotated[int, Field(ge=1, le=1024, description="Most frames in one batch.")] = 32
    max_wait_ms: Annotated[
        float,
        Field(ge=0, le=10_000, description="Longest wait after a batch's first frame."),
    ] = 50.0
    buckets: Annotated[
        list[Annotated[int, Field(ge=1, le=1024)]] | None,
        Field(
            description="Batch sizes the model runs at: a batch is padded up to the next "
            "bucket (padding never reaches the results). The largest must be at least "
            "max_size. Fixed shapes let model.compile capture each size once."
        ),
    ] = None

    @model_validator(mode="after")
    def _buckets_fit(self) -> BatchConfig:
        if self.buckets is not None:
            self.buckets = check_buckets(self.buckets, self.max_size)
        return self


class OnnxConfig(BaseModel):
    """ONNX Runtime backend settings: which ONNX file, and whether to quantize it."""

    model_config = ConfigDict(extra="forbid")

    path: Annotated[
        str | None,
        Field(
            description="A prebuilt ONNX file from labelcast export (relative to the working "
            "dir); model.id still gives labels and preprocessing. Unset: the checkpoint is "
            "exported on first load into the cache ($LABELCAST_CACHE, else "
            "~/.cache/labelcast) and reused while the checkpoint is unchanged."
        ),
    ] = None
    quantize: Annotated[
        Literal["none", "int8"],
        Field(
            description="none | int8: ONNX Runtime dynamic quantization (int8 weights); "
            "faster on CPUs, an accuracy trade-off to check with labelcast verify."
        ),
    ] = "none"


class ModelConfig(BaseModel):
    """Which checkpoint classifies the frames, where it runs and in which precision."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[
        str,
        Field(min_length=1, description="Hugging Face hub id, or a local checkpoint directory."),
    ] = DEFAULT_MODEL_ID
    revision: Annotated[
        str | None,
        Field(
            description="Hub revision to load (pin a commit sha); ignored for local directories."
        ),
    ] = None
    device: Annotated[
        str,
        Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$", description="auto | cpu | cuda | cuda:N."),
    ] = "auto"
    precision: Annotated[
        Precision,
        Field(description="auto (fp16 on CUDA, fp32 on CPU) | fp16 | bf16 | fp32 | int8 (CPU)."),
    ] = "auto"
    batch: Annotated[BatchConfig, Field(description="Micro-batching settings.")] = BatchConfig()
    sha256: Annotated[
        dict[str, str],
        Field(
            description="Expected SHA-256 per checkpoint file (e.g. model.safetensors); "
            "checked before loading, a mismatch refuses to start."
        ),
    ] = {}
    self_check: Annotated[
        Literal["auto", "on", "off"],
        Field(
            description="Classify the first frames in fp32 too and warn if the configured "
            "precision disagrees; auto = on for fp16/bf16 on CUDA."
        ),
    ] = "auto"
    self_check_max_score_diff: Annotated[
        float,
        Field(gt=0, le=1, description="Largest score difference the self-check accepts."),
    ] = 0.02
    allow_pickle: Annotated[
        bool,
        Field(
            description="Load pickle weights (pytorch_model.bin) when a checkpoint has no "
            "safetensors. Pickle can run code: only for checkpoints you trust."
        ),
    ] = False
    backend: Annotated[
        Backend,
        Field(
            description="torch | onnxruntime | triton: which runtime runs the forward pass "
            "(preprocessing is torch either way; onnxruntime needs the onnx extra; triton "
            "sends uint8 frames to a Triton server, see docs/scaling.md)."
        ),
    ] = "torch"
    onnx: Annotated[
        OnnxConfig,
        Field(description="ONNX Runtime settings; only with backend: onnxruntime."),
    ] = OnnxConfig()
    compile: Annotated[
        CompileMode,
        Field(
            description="none | torch-compile: torch.compile the model for each of "
            "model.batch.buckets at load time (CUDA graphs on CUDA); backend torch only."
        ),
    ] = "none"
    triton: Annotated[
        TritonConfig,
        Field(
            description="The Triton server (backend: triton), and labelcast serve's settings "
            "(docs/scaling.md). With backend triton, device and precision are the server's."
        ),
    ] = TritonConfig()

    @model_validator(mode="after")
    def _backend_settings_fit(self) -> ModelConfig:
        if self.backend == "onnxruntime" and self.precision not in ("auto", "fp32"):
            hint = " (for int8 set model.onnx.quantize: int8)" if self.precision == "int8" else ""
            raise ValueError(
                f"precision {self.precision} is for backend torch; backend onnxruntime runs "
                f"the fp32 ONNX file, or its int8 quantization{hint}"
            )
        if self.backend != "onnxruntime" and self.onnx != OnnxConfig():
            raise ValueError("model.onnx settings need model.backend: onnxruntime")
        return self

    @model_validator(mode="after")
    def _compile_settings_fit(self) -> ModelConfig:
        if self.compile == "none":
            return self
        if self.backend != "torch":
            raise ValueError(f"compile: {self.compile} needs model.backend: torch")
        buckets = self.batch.buckets
        if buckets is None:
            raise ValueError(
                f"compile: {self.compile} needs model.batch.buckets, the batch sizes to "
                "compile for (e.g. [1, 4, 16, 32])"
            )
        if len(buckets) > MAX_COMPILED_BUCKETS:
            raise ValueError(
                f"compile: {self.compile} takes at most {MAX_COMPILED_BUCKETS} "
                f"model.batch.buckets ({len(buckets)} given)"
            )
        return self


@dataclass(frozen=True)
class LoadedModelInfo:
    """What was actually loaded: id, resolved revision, device and precision."""

    id: str
    revision: str | None
    device: str
    precision: str
    backend: str = "torch"


class Classifier:
    """An image classification checkpoint ready to classify batches of RGB ``uint8`` frames."""

    def __init__(
        self,
        model: torch.nn.Module | OnnxModel | TritonModel,
        preprocessor: Preprocessor,
        id2label: dict[int, str],
        info: LoadedModelInfo,
        buckets: Sequence[int] | None = None,
    ) -> None:
        self._model: torch.nn.Module | OnnxModel | TritonModel | None = model
        self._buckets = BatchBuckets(buckets)
        self._preprocessor = preprocessor
        # ONNX Runtime takes numpy input: its preprocessing runs on the CPU, in fp32. A
        # Triton gateway resizes on the CPU and sends uint8; the server does the rest.
        local_torch = info.backend == "torch"
        self._device = torch.device(info.device if local_torch else "cpu")
        self._dtype = _DTYPES[info.precision] if local_torch else torch.float32
        self._stager = InputStager(preprocessor, self._device, self._dtype)
        self.id2label = id2label
        self.info = info

    @classmethod
    def load(cls, config: ModelConfig, precision: str | None = None) -> Classifier:
        """Load the configured checkpoint (weights, labels, preprocessing) onto its device.

        ``precision`` overrides the configured one (``verify`` loads an fp32 reference).
        With ``backend: onnxruntime`` the forward pass runs in ONNX Runtime (see
        ``onnx_backend.py``); use :func:`reference_config` for a torch fp32 reference.
        """
        if config.backend != "torch":
            if precision is not None:
                raise ValueError(
                    "a precision override is for the torch backend; "
                    "load reference_config(config) for a torch fp32 reference"
                )
            if config.backend == "triton":
                return cls._load_triton(config)
            return cls._load_onnx(config)
        device = resolve_device(config.device)
        precision = resolve_precision(precision or config.precision, device)
        checkpoint = resolve_checkpoint(
            config.id, config.revision, allow_pickle=config.allow_pickle
        )
        verify_sha256(checkpoint, config.sha256)
        preprocessor = _preprocessor(checkpoint)
        model = load_torch_model(checkpoint, config.allow_pickle)
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        model = _prepare(model, device, precision)
        if config.compile == "none":
            cache_position_bias(model)  # compiled, CUDA graphs replay its work anyway
        else:
            model = _compile(model, config, preprocessor, device, precision)
        info = LoadedModelInfo(config.id, checkpoint.revision, str(device), precision)
        log.info(
            "loaded model %s (revision %s) on %s in %s, %d labels",
            config.id,
            checkpoint.revision or "local",
            device,
            precision,
            len(id2label),
        )
        return cls(model, preprocessor, id2label, info, config.batch.buckets)

    @classmethod
    def _load_onnx(cls, config: ModelConfig) -> Classifier:
        from labelcast.pipeline import onnx_backend

        device = resolve_device(config.device)
        checkpoint = resolve_checkpoint(
            config.id, config.revision, allow_pickle=config.allow_pickle
        )
        verify_sha256(checkpoint, config.sha256)
        preprocessor = _preprocessor(checkpoint)
        labels = checkpoint.read_json("config.json").get("id2label")
        if not isinstance(labels, dict) or not labels:
            raise ModelError(f"model {config.id!r}: its config.json has no id2label")
        id2label = {int(k): str(v) for k, v in labels.items()}
        size = onnx_input_size(preprocessor, config.id)
        if config.onnx.path is not None:
            path = Path(config.onnx.path)
            if not path.is_file():
                raise ModelError(f"model.onnx.path {config.onnx.path}: no such file")
        else:
            path = onnx_backend.cached_export(
                checkpoint, size, lambda: load_torch_model(checkpoint, config.allow_pickle)
            )
        if config.onnx.quantize == "int8" and not onnx_backend.is_quantized(path):
            target = onnx_backend.quantized_path(path)
            if not target.is_file():
                log.info("model %s: quantizing %s to int8 (%s)", config.id, path, target)
                onnx_backend.quantize_int8(path, target)
            path = target
        precision = "int8" if onnx_backend.is_quantized(path) else "fp32"
        model = onnx_backend.OnnxModel(path, onnx_backend.providers_for(device))
        _check_onnx_shapes(model, size, len(id2label), path)
        ran_on = str(device) if "CUDAExecutionProvider" in model.providers else "cpu"
        info = LoadedModelInfo(config.id, checkpoint.revision, ran_on, precision, "onnxruntime")
        log.info(
            "loaded model %s (revision %s) in ONNX Runtime (%s, %s) from %s, %d labels",
            config.id,
            checkpoint.revision or "local",
            model.providers[0],
            precision,
            path,
            len(id2label),
        )
        return cls(model, preprocessor, id2label, info, config.batch.buckets)

    @classmethod
    def _load_triton(cls, config: ModelConfig) -> Classifier:
        from labelcast.pipeline import triton_backend

        # Labels and preprocessing come from the checkpoint's JSON files; the weights
        # stay on the server.
        checkpoint = resolve_checkpoint(
            config.id, config.revision, allow_pickle=config.allow_pickle, weights=False
        )
        # Digests of files the gateway does not fetch (weights) are checked by the server.
        fetched = {f.name for f in checkpoint.files}
        verify_sha256(checkpoint, {k: v for k, v in config.sha256.items() if k in fetched})
        preprocessor = _preprocessor(checkpoint)
        labels = checkpoint.read_json("config.json").get("id2label")
        if not isinstance(labels, dict) or not labels:
            raise ModelError(f"model {config.id!r}: its config.json has no id2label")
        id2label = {int(k): str(v) for k, v in labels.items()}
        size = onnx_input_size(preprocessor, config.id, backend="triton")
        expected = triton_backend.Expected(
            model_id=config.id,
            fingerprint=triton_backend.fingerprint(checkpoint),
            input_size=size,
            num_labels=len(id2label),
            precision=None if config.precision == "auto" else config.precision,
        )
        model = triton_backend.TritonModel(config.triton, expected)
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
        return cls(model, preprocessor, id2label, info)

    @property
    def num_labels(self) -> int:
        """Number of classes the checkpoint predicts."""
        return len(self.id2label)

    @property
    def preprocessor(self) -> Preprocessor:
        """The checkpoint's preprocessing."""
        return self._preprocessor

    def preprocess(self, images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
        """Turn RGB ``uint8`` frames into what the forward pass takes.

        Normalised pixels of the model's dtype on its device; for backend triton the
        resized ``uint8`` pixels (on the CPU) that the gateway sends.
        """
        if isinstance(self._model, TritonModel):
            return self._preprocessor.pixels(images, self._device)
        return self._stager.stage(images).on(self._compute_stream())

    def forward(
        self, pixel_values: torch.Tensor, stop: threading.Event | None = None
    ) -> torch.Tensor:
        """Run the model on preprocessed input and return the logits, one row per frame.

        ``stop`` ends a wait for a remote server (backend triton raises BatchError then).
        With ``model.batch.buckets`` the model runs on batches padded to a bucket size
        (see ``buckets.py``); the padding's rows are cut off again.
        """
        return self._buckets.run(lambda part: self._forward_once(part, stop), pixel_values)

    def _forward_once(
        self, pixel_values: torch.Tensor, stop: threading.Event | None
    ) -> torch.Tensor:
        if isinstance(self._model, TritonModel):
            return self._model(pixel_values, stop)
        if self._model is None:
            raise RuntimeError("this classifier was closed (a reload replaced its model)")
        if not isinstance(self._model, torch.nn.Module):
            return self._model(pixel_values)
        with torch.inference_mode():
            logits: torch.Tensor = self._model(pixel_values=pixel_values).logits
        return logits

    def forward_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise resized (N, 3, H, W) ``uint8`` pixels and run the model: the logits.

        What ``labelcast serve`` runs for a gateway's request.
        """
        with torch.inference_mode():
            inputs = self._preprocessor.normalise(pixels.to(self._device), self._dtype)
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
        return self._stager.asynchronous and isinstance(self._model, torch.nn.Module)

    def submit(
        self, images: Sequence[npt.NDArray[np.uint8]], stop: threading.Event | None = None
    ) -> PendingBatch:
        """Start classifying ``images``; the returned batch's ``result()`` is :meth:`classify`'s.

        On CUDA this queues the whole batch (copy, preprocessing, forward pass, softmax,
        copy back) and returns at once, so the caller can stage the next batch meanwhile
        (see ``staging.py``). Elsewhere it classifies before returning.
        """
        if not self.overlaps:
            return PendingBatch(torch.from_numpy(self.classify(images, stop)), None)
        with torch.inference_mode():
            stream = self._compute_stream()
            probs = self.forward(self._stager.stage(images).on(stream)).float().softmax(dim=-1)
            host = torch.empty(probs.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(probs, non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record(stream)
        return PendingBatch(host, done)

    def classify(
        self, images: Sequence[npt.NDArray[np.uint8]], stop: threading.Event | None = None
    ) -> npt.NDArray[np.float32]:
        """Return class probabilities (softmax in fp32), shape (len(images), num_labels).

        With backend triton this waits through server faults (``stop`` ends the wait)
        and raises BatchError for a batch it drops (see ``triton_backend.py``).
        """
        if self.overlaps:
            return self.submit(images).result()
        with torch.inference_mode():
            logits = self.forward(self.preprocess(images), stop)
            probs = logits.float().softmax(dim=-1)
        result: npt.NDArray[np.float32] = probs.cpu().numpy()
        return result

    def _compute_stream(self) -> torch.cuda.Stream | None:
        """Return the CUDA stream the forward pass runs on (None off CUDA)."""
        if self._device.type != "cuda":
            return None
        return torch.cuda.current_stream(self._device)

    def close(self) -> None:
        """Free the model, its staging buffers and copy threads; the classifier is unusable after.

        A reload that loads another model closes the one it replaces once the pipeline
        no longer uses it, so ten reloads hold one model, not eleven.
        """
        on_cuda = self._device.type == "cuda"
        self._model = None
        self._stager.close()
        # Modules can sit in reference cycles: collect them now, not at some later time.
        gc.collect()
        _release_freed_heap()
        if on_cuda:
            torch.cuda.empty_cache()  # give the freed blocks back to the device

    def remote_status(self) -> str | None:
        """Why a remote model server can't be used right now; None when it can (or is local)."""
        if isinstance(self._model, TritonModel):
            return self._model.status
        return None

    def remote_activity(self) -> float | None:
        """``time.monotonic()`` of the latest exchange with (or wait for) a remote server."""
        if isinstance(self._model, TritonModel):
            return self._model.activity
        return None


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


class PendingBatch:
    """A batch :meth:`Classifier.submit` started: its probabilities, once the device is done."""

    def __init__(self, probs: torch.Tensor, done: torch.cuda.Event | None) -> None:
        # ``probs``: fp32 on the host (on CUDA the pinned buffer the device copies into,
        # filled once ``done`` has passed).
        self._probs = probs
        self._done = done

    def result(self) -> npt.NDArray[np.float32]:
        """Wait for the device (if it is still working); return the (N, num_labels) scores."""
        if self._done is not None:
            self._done.synchronize()
        result: npt.NDArray[np.float32] = self._probs.numpy()
        return result


def reference_config(config: ModelConfig) -> ModelConfig:
    """Return the same checkpoint on the torch backend: what fp32 references run on.

    The plain path: not compiled, batches not padded to buckets.
    """
    if config.compile != "none" or config.batch.buckets is not None:
        batch = config.batch.model_copy(update={"buckets": None})
        config = config.model_copy(update={"compile": "none", "batch": batch})
    if config.backend == "torch":
        return config
    return config.model_copy(update={"backend": "torch", "onnx": OnnxConfig(), "precision": "auto"})


def served_config(config: ModelConfig) -> ModelConfig:
    """Return what ``labelcast serve`` loads: the same model, on torch where it says triton."""
    if config.backend != "triton":
        return config
    return config.model_copy(update={"backend": "torch"})


def load_torch_model(checkpoint: Checkpoint, allow_pickle: bool) -> Any:
    """Load a checkpoint's image classification model with transformers, fp32, in eval mode."""
    # Imported here: importing transformers costs seconds that `labelcast schema` needn't pay.
    from transformers import AutoModelForImageClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    log.info("loading model %s (revision %s)", checkpoint.id, checkpoint.revision or "local")
    try:
        model = AutoModelForImageClassification.from_pretrained(
            checkpoint.directory,
            dtype=torch.float32,
            use_safetensors=None if allow_pickle else True,
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(
            f"model {checkpoint.id!r} is not an image classification checkpoint "
            f"transformers can load: {exc}"
        ) from exc
    return model.eval()


def onnx_input_size(
    preprocessor: Preprocessor, model_id: str, backend: str = "onnxruntime"
) -> tuple[int, int]:
    """Return the (height, width) the preprocessing always makes (ONNX, Triton need one)."""
    size = preprocessor.output_size
    if size is not None:
        return size
    raise ModelError(
        f"model {model_id!r}: its preprocessing keeps the frame's aspect ratio (shortest edge "
        f"resize, no crop), so its input size varies; backend {backend} needs a fixed size"
    )


def _preprocessor(checkpoint: Checkpoint) -> Preprocessor:
    return Preprocessor.from_config(
        checkpoint.read_json("preprocessor_config.json"),
        str(checkpoint.directory / "preprocessor_config.json"),
    )


def _check_onnx_shapes(
    model: OnnxModel, size: tuple[int, int], num_labels: int, path: Path
) -> None:
    expected_in: list[int | None] = [None, 3, *size]
    for axis, (want, got) in enumerate(zip(expected_in, model.input_shape, strict=False)):
        if want is not None and isinstance(got, int) and got != want:
            raise ModelError(
                f"{path}: input axis {axis} is {got}, but the checkpoint's preprocessing "
                f"makes {want} (shape (N, 3, {size[0]}, {size[1]}))"
            )
    if isinstance(model.input_shape[0], int):
        log.warning(
            "%s has a fixed batch size %d, not a dynamic batch axis; other batch sizes fail "
            "(re-export it with labelcast export)",
            path,
            model.input_shape[0],
        )
    last = model.output_shape[-1] if model.output_shape else None
    if isinstance(last, int) and last != num_labels:
        raise ModelError(
            f"{path}: the model outputs {last} logits, but the checkpoint has {num_labels} labels"
        )


def resolve_device(name: str) -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a torch device, refusing CUDA where there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(
                f"model.device is {name!r} but this torch build sees no CUDA device "
                "(use device: auto or cpu)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ModelError(
                f"model.device is {name!r} but only "
                f"{torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto`` to fp16 on CUDA and fp32 on CPU; refuse combinations that cannot run."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "int8" and device.type != "cpu":
        raise ModelError(
            "model.precision int8 (dynamic quantization) runs on the CPU only; "
            "use fp16 or bf16 on CUDA"
        )
    if precision == "fp16" and device.type == "cpu":
        raise ModelError(
            "model.precision fp16 is not supported on the CPU (it is slower than "
            "fp32 there); use fp32, bf16 or int8"
        )
    return precision


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
    return compile_model(model, device, _DTYPES[precision], config.batch.buckets or (), size)


def _prepare(model: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    model.eval()
    if precision == "int8":
        from torch.ao.quantization import quantize_dynamic

        quantized: torch.nn.Module = quantize_dynamic(  # type: ignore[no-untyped-call]
            model, {torch.nn.Linear}, dtype=torch.qint8
        )
        return quantized
    return model.to(device=device, dtype=_DTYPES[precision])
