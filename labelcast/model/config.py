"""The model's settings (``model:`` in the config file), and what a loaded model reports.

Pydantic and the standard library only: the config file is read, validated and printed
as a schema without importing torch, ONNX Runtime or tritonclient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from labelcast.model.prompts import (
    Prompts,
    Scoring,
    check_prompts,
    check_template,
    resolve_prompts,
)
from labelcast.util.backoff import ReconnectConfig

DEFAULT_MODEL_ID = "microsoft/beit-base-patch16-224"
Precision = Literal["auto", "fp16", "bf16", "fp32", "int8"]
BackendName = Literal["torch", "onnxruntime", "triton"]
# ``none``: eager PyTorch. ``torch-compile``: torch.compile, in "reduce-overhead" mode
# (CUDA graphs) on CUDA and the default mode (Inductor's C++ kernels) on the CPU.
CompileMode = Literal["none", "torch-compile"]

# torch.compile recompiles once per bucket (static shapes); Dynamo gives up on a
# function after 8 recompilations by default, so more buckets than this would run
# the rest uncompiled.
MAX_COMPILED_BUCKETS = 8


def check_buckets(sizes: Sequence[int], max_size: int) -> list[int]:
    """Return the bucket sizes sorted and de-duplicated; raise ValueError if they can't work.

    Every batch the batcher forms (at most ``max_size`` frames) must fit a bucket, so
    the largest bucket must be at least ``max_size``: this is refused at config time
    rather than split at run time, so that a daemon's batches are never cut in two.
    """
    ordered = sorted(set(sizes))
    if not ordered:
        raise ValueError("buckets must list at least one batch size (or be left out)")
    if ordered[0] < 1:
        raise ValueError("buckets must be positive batch sizes")
    if ordered[-1] < max_size:
        raise ValueError(
            f"buckets: the largest bucket ({ordered[-1]}) is smaller than max_size "
            f"({max_size}); add a bucket of {max_size} or lower max_size"
        )
    return ordered


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


class TritonServeConfig(BaseModel):
    """``labelcast serve``: where the Triton server listens and how it batches."""

    model_config = ConfigDict(extra="forbid")

    bind: Annotated[
        str,
        Field(
            pattern=r"^[^\s:/]+$",
            description="Address the server listens on (gRPC, HTTP and metrics); 0.0.0.0 for "
            "every interface, 127.0.0.1 for this host only.",
        ),
    ] = "0.0.0.0"
    grpc_port: Annotated[int, Field(ge=1, le=65535, description="gRPC port.")] = 8001
    http_port: Annotated[int, Field(ge=1, le=65535, description="HTTP port.")] = 8000
    metrics_port: Annotated[
        int, Field(ge=1, le=65535, description="Prometheus metrics port (/metrics).")
    ] = 8002
    max_batch_size: Annotated[
        int,
        Field(
            ge=1,
            le=1024,
            description="Largest batch Triton's dynamic batcher forms from the gateways' "
            "requests (a gateway's larger batches are split to fit).",
        ),
    ] = 32
    max_queue_delay_us: Annotated[
        int,
        Field(
            ge=0,
            le=10_000_000,
            description="How long (microseconds) the dynamic batcher may hold a request "
            "waiting for others to batch it with.",
        ),
    ] = 2000
    instances: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description="Model instances (each runs batches in parallel); with device auto "
            "and several GPUs they are spread over the GPUs.",
        ),
    ] = 1


class TritonConfig(BaseModel):
    """Where the Triton server is, and how a gateway waits for it and retries."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[
        str,
        Field(
            pattern=r"^(grpc|http)://[^\s/:]+:\d{1,5}$",
            description="grpc://host:port (default port 8001) or http://host:port (8000).",
        ),
    ] = "grpc://127.0.0.1:8001"
    model: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_.-]+$",
            description="The model's name on the server (labelcast serve names it so).",
        ),
    ] = "labelcast"
    timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=600,
            description="Longest wait for one request or health probe, in seconds.",
        ),
    ] = 10.0
    retries: Annotated[
        int,
        Field(
            ge=0,
            le=100,
            description="How many more times a batch is sent after a reachable server "
            "failed it (an error, or no answer within timeout_s); then its frames count "
            "as dropped. While the server is unreachable a batch waits and this is not "
            "counted.",
        ),
    ] = 3
    reconnect: Annotated[
        ReconnectConfig,
        Field(description="Jittered exponential backoff between retries and health probes."),
    ] = ReconnectConfig(min_s=0.5, max_s=10.0)
    serve: Annotated[
        TritonServeConfig,
        Field(description="Settings of labelcast serve (the server side)."),
    ] = TritonServeConfig()


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
        BackendName,
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
    prompts: Annotated[
        Prompts | None,
        Field(
            description="Zero-shot checkpoints (CLIP, SigLIP) only, and required for them: "
            "the labels, each with the texts that describe it (label: [text, ...]), or a "
            "plain list of labels that prompt_template turns into texts (docs/zero-shot.md)."
        ),
    ] = None
    prompt_template: Annotated[
        str | None,
        Field(
            description="With a plain list of model.prompts: the text of each label, {} "
            "standing for the label. Unset: 'a photo of {}.'."
        ),
    ] = None

    @field_validator("prompts", mode="before")
    @classmethod
    def _prompts_are_usable(cls, value: object) -> Prompts | None:
        return check_prompts(value)

    @field_validator("prompt_template", mode="before")
    @classmethod
    def _template_is_usable(cls, value: object) -> str | None:
        return check_template(value)

    @model_validator(mode="after")
    def _prompts_fit(self) -> ModelConfig:
        if self.prompt_template is not None:
            if self.prompts is None:
                raise ValueError("model.prompt_template needs model.prompts (a list of labels)")
            if isinstance(self.prompts, dict):
                raise ValueError(
                    "model.prompt_template applies to a plain list of labels; with "
                    "label: [texts] in model.prompts, write each text in full"
                )
        if self.prompts is not None and self.backend == "triton":
            raise ValueError(
                "model.prompts (a zero-shot model) runs on backend torch or onnxruntime, not triton"
            )
        return self

    def label_prompts(self) -> dict[str, tuple[str, ...]] | None:
        """Return each label's texts (a plain label list through the template); None if unset."""
        if self.prompts is None:
            return None
        return resolve_prompts(self.prompts, self.prompt_template)

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
    """What was actually loaded: id, resolved revision, device, precision, backend, scoring."""

    id: str
    revision: str | None
    device: str
    precision: str
    backend: str = "torch"
    scoring: Scoring = "softmax"


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
