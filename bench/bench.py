#!/usr/bin/env python
"""Throughput benchmark: the bare model, labelcast end to end, and a naive OpenCV loop.

One run measures three things on the same machine, with the same clips and model:

(a) ``bare``: the model's forward pass on preprocessed tensors already on the device, at
    the configured batch size and precision (warm-up first, then timed iterations);
(b) ``e2e``: labelcast itself, N file streams of 720p H.264 through ``labelcast.Pipeline``
    with a callback sink that records each event (frames/s, latency p50/p99, peak RSS),
    ``--repeats`` times with the same loaded model;
(c) ``naive``: what a user would write: an OpenCV read loop, sampling by frame index,
    transformers' ``BeitImageProcessorPil`` per frame and the model one frame at a time,
    at labelcast's precision (``naive``: torch dynamic int8 for int8, ``.to(bfloat16)``
    for bf16, the same ONNX file in an ``onnxruntime.InferenceSession`` for the
    onnxruntime backend) and in fp32 (``naive_fp32``; one run when the two are the same),
    so that e2e/naive shows what the pipeline adds and naive/naive-fp32 what the
    precision adds.

Each phase runs in a child process of its own, so peak RSS is that phase's alone and no
phase's threads or allocator state leak into another. Clips (made with
``tests/media.make_clip``) and the model are cached in ``--workdir`` (default
``bench/.work``).

Every rate comes with its run-to-run spread (``rate_spread``: min, median and max of the
bare model's per-batch rates, of e2e's repeats, of the naive loop's per-stream rates), and
every ratio with the interval those spreads allow (``ratio_intervals``): a ratio whose
interval holds 1.0 or its target is within noise (``bench/render.py`` says so).

Without ``--model`` the model is a randomly initialised ``BeitForImageClassification`` of
the microsoft/beit-base-patch16-224 architecture with the hub's preprocessing config:
random weights, the same compute as the real checkpoint. Every figure comes from real
forward passes; nothing is simulated.

Modes, added to the same run:

``--decode keyframes``
    e2e reads its files with ``decode: keyframes`` (only key frames are decoded). The
    clips are then encoded with a key frame at least every ``1/fps`` seconds of video
    (a GOP of ``floor(30 / fps)`` frames; cached per GOP in ``--workdir``) and every
    phase uses them. The naive baseline still decodes every frame: that is the loop a
    user writes.
``--load FRACTION``
    After the three phases, a ``load`` phase: the clips replayed as live cameras
    (file sources with ``realtime: true, loop: true``) for ``--load-seconds``,
    together offering FRACTION x the capacity measured in this run (``--capacity-from
    bare``, the default, or ``e2e``; frames/s; ``--capacity`` gives one instead),
    shared evenly by the streams' sampling rates. It reports latency p50/p99
    (capture -> sink hand-off) against the target ``max_wait_ms + 2 x one batch's
    model time``, where one batch's model time is the median time ``classify()`` took
    per batch in that phase, and the frames offered, classified and dropped.
``--soak-minutes M``
    A ``soak`` phase: the same live-paced sources at ``--soak-load`` (default 2) x
    capacity for M minutes. Frames must be dropped (counted in events' ``dropped``);
    RSS is sampled every few seconds, and its growth is the median of the last
    minute against the median of the second (the first is warm-up; a fifth of the
    soak instead of a minute when it is shorter than five minutes). Growth from the
    first minute is recorded too (``rss_mb.rules``): the rule the target was set with.
``--buckets 1,8,32`` and ``--compile torch-compile``
    ``model.batch.buckets`` and ``model.compile`` for bare, e2e, load and soak.

    python bench/bench.py                       # 4 streams x 20 s, 2 fps sampling
    python bench/bench.py --seconds 10 --json bench/results/NAME.json   # name = NAME
    python bench/bench.py --decode keyframes --json out.json
    python bench/bench.py --load 0.5 --skip-naive          # latency at half capacity
    python bench/bench.py --soak-minutes 10 --skip-naive   # 2x capacity for 10 minutes
    python bench/bench.py --quick               # a smoke run of a few seconds

The JSON carries what a reader needs to trust a figure: the run's ``name`` and ``date``,
the ``machine`` (CPU model, cores, CPU flags, torch/transformers/onnxruntime versions),
the exact ``command``, and every phase's results. ``bench/render.py`` renders
BENCHMARKS.md's tables from those files in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Not ".cache": labelcast.model.checkpoint skips files under any ".cache" folder.
DEFAULT_WORKDIR = Path(__file__).resolve().parent / ".work"
# 2: naive at labelcast's precision plus naive_fp32, rate spreads and ratio intervals,
# e2e repeats, name/date/command, and the soak's RSS growth under each rule.
SCHEMA = "labelcast.bench/2"

CLIP_FPS = 30
CLIP_SIZE = (720, 1280)  # (height, width): 720p
DEFAULT_MAX_WAIT_MS = 50.0

# microsoft/beit-base-patch16-224 as its config.json on the hub describes it. BeitConfig's
# defaults match all of it except use_relative_position_bias (default False) and
# num_labels (default 2), which are passed explicitly; the rest is checked, not assumed.
BEIT_BASE_OVERRIDES: dict[str, Any] = {"use_relative_position_bias": True, "num_labels": 1000}
BEIT_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "patch_size": 16,
    "image_size": 224,
    "num_channels": 3,
    "use_relative_position_bias": True,
    "use_shared_relative_position_bias": False,
    "use_absolute_position_embeddings": False,
    "use_mean_pooling": True,
    "layer_scale_init_value": 0.1,
    "layer_norm_eps": 1e-12,
    "num_labels": 1000,
}
# The hub's preprocessor_config.json of microsoft/beit-base-patch16-224.
HUB_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "crop_size": 224,
    "do_center_crop": False,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "BeitFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 224,
}
RANDOM_MODEL_NAME = "beit-base-patch16-224-random"
RANDOM_WEIGHTS_NOTE = (
    "random weights (randomly initialised BeitForImageClassification of the "
    "microsoft/beit-base-patch16-224 architecture): same compute as the real checkpoint, "
    "meaningless labels"
)


# --------------------------------------------------------------------------- options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/bench.py",
        description="Benchmark labelcast against the bare model and a naive OpenCV loop.",
    )
    parser.add_argument("--streams", type=int, help="file streams for e2e/naive (default 4)")
    parser.add_argument("--seconds", type=float, help="length of each clip (default 20)")
    parser.add_argument("--fps", type=float, help="sampling rate, frames/s of video (default 2)")
    parser.add_argument("--batch", type=int, help="batch size, model.batch.max_size (default 32)")
    parser.add_argument(
        "--max-wait-ms", type=float, help=f"model.batch.max_wait_ms (default {DEFAULT_MAX_WAIT_MS})"
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp16", "bf16", "fp32", "int8"],
        help="model.precision for bare and e2e (default auto: fp16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="model.backend for bare and e2e; with onnxruntime, --precision int8 means "
        "model.onnx.quantize: int8 (the export is cached, see docs/onnx.md)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="checkpoint directory with real weights (default: random-weight BEiT-base)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=DEFAULT_WORKDIR, help="cache for clips and the model"
    )
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument(
        "--naive-precision",
        default="same",
        choices=["same", "fp32"],
        help="the naive loop's precision: same as labelcast's (default; the naive loop in "
        "fp32 is measured as well, so both e2e/naive ratios can be shown) or fp32 only",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="e2e runs over the clips, with the same loaded model (default 2): their "
        "spread is e2e's run-to-run noise",
    )
    parser.add_argument(
        "--decode",
        default="all",
        choices=["all", "keyframes"],
        help="e2e file sources' decode mode; keyframes makes clips with a key frame every "
        "1/fps s (the naive loop still decodes all)",
    )
    parser.add_argument(
        "--load",
        type=float,
        metavar="FRACTION",
        help="add a load phase: live-paced sources offering FRACTION x capacity",
    )
    parser.add_argument(
        "--load-seconds", type=float, help="length of the load phase (default 60; --quick 6)"
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        metavar="M",
        help="add a soak phase: live-paced sources at --soak-load x capacity for M minutes",
    )
    parser.add_argument(
        "--soak-load", type=float, default=2.0, help="soak: FRACTION of capacity (default 2)"
    )
    parser.add_argument(
        "--capacity-from",
        default="bare",
        choices=["bare", "e2e"],
        help="capacity for --load and --soak: the bare model's or e2e's frames/s (default bare)",
    )
    parser.add_argument(
        "--capacity",
        type=float,
        metavar="FRAMES_PER_S",
        help="use this capacity for --load and --soak instead of measuring it (e.g. a "
        "tiny model's, which would need hundreds of streams)",
    )
    parser.add_argument(
        "--buckets",
        type=_bucket_list,
        help="model.batch.buckets, comma-separated (e.g. 1,8,32; the largest >= --batch)",
    )
    parser.add_argument(
        "--compile",
        default="none",
        choices=["none", "torch-compile"],
        help="model.compile (needs --buckets)",
    )
    parser.add_argument(
        "--from-frames",
        action="store_true",
        help="add a frames phase: batches of decoded uint8 frames classified one after "
        "another and overlapped (the next staged while one computes; on CUDA)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--warmup", type=int, help="bare: warm-up iterations (default 2)")
    parser.add_argument("--iters", type=int, help="bare: least timed iterations (default 5)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument(
        "--name",
        help="the run's name, recorded in its JSON (default: the --json file's stem); "
        "bench/render.py finds runs by name",
    )
    # Internal: a phase run in a child process.
    parser.add_argument(
        "--phase", choices=["bare", "e2e", "naive", "live", "frames"], help=argparse.SUPPRESS
    )
    parser.add_argument("--settings", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase is None:
        for name in ("streams", "batch", "warmup", "iters", "repeats"):
            value = getattr(args, name)
            if value is not None and value < 1:
                parser.error(f"--{name} must be at least 1")
        positive = ("seconds", "fps", "load", "load_seconds", "soak_minutes", "soak_load")
        for name in (*positive, "capacity"):
            value = getattr(args, name)
            if value is not None and value <= 0:
                parser.error(f"--{name.replace('_', '-')} must be positive")
        if args.compile != "none" and not args.buckets:
            parser.error("--compile needs --buckets (the batch sizes to compile for)")
    return args


def positive_int_list(what: str) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated positive integers (``what`` names them in errors)."""

    def parse(text: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"not a comma-separated list of {what}: {text}"
            ) from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"{what} must be positive integers")
        return values

    return parse


_bucket_list = positive_int_list("bucket sizes")


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Fill in the defaults (smaller ones with --quick) of everything a phase needs."""
    quick = args.quick

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else normal)

    settings = {
        "quick": quick,
        "streams": pick(args.streams, 4, 2),
        "seconds": pick(args.seconds, 20.0, 2.0),
        "clip_fps": CLIP_FPS,
        "clip_size": list(CLIP_SIZE),
        "sample_fps": pick(args.fps, 2.0, 2.0),
        "batch": pick(args.batch, 32, 4),
        "max_wait_ms": pick(args.max_wait_ms, DEFAULT_MAX_WAIT_MS, DEFAULT_MAX_WAIT_MS),
        "precision": args.precision,
        "backend": args.backend,
        "device": args.device,
        "warmup": pick(args.warmup, 2, 1),
        "min_iters": pick(args.iters, 5, 2),
        "min_seconds": 0.0 if quick else 10.0,
        "max_iters": 200,
        "skip_naive": args.skip_naive,
        "naive_precision": args.naive_precision,
        "repeats": pick(args.repeats, 2, 2),
        "decode": args.decode,
        "gop": None,
        "load": args.load,
        "load_seconds": pick(args.load_seconds, 60.0, 6.0),
        "soak_minutes": args.soak_minutes,
        "soak_load": args.soak_load,
        "capacity_from": "given" if args.capacity is not None else args.capacity_from,
        "capacity": args.capacity,
        "buckets": args.buckets,
        "compile": args.compile,
        "from_frames": args.from_frames,
    }
    if args.decode == "keyframes":
        # A key frame at least every 1/fps s of video: each sampling slot has one.
        settings["gop"] = max(1, math.floor(CLIP_FPS / settings["sample_fps"] + 1e-9))
    return settings


# --------------------------------------------------------------------------- inputs


def prepare_clips(workdir: Path, settings: dict[str, Any]) -> list[Path]:
    """Make (or reuse) one 720p H.264 slideshow clip per stream, each in its own photo order."""
    sys.path.insert(0, str(REPO / "tests"))
    from media import PHOTOS, make_clip

    height, width = settings["clip_size"]
    clips = []
    for index in range(settings["streams"]):
        shift = index % len(PHOTOS)
        photos = PHOTOS[shift:] + PHOTOS[:shift]
        gop = settings.get("gop")
        name = (
            f"clip{shift}-{width}x{height}-{settings['seconds']:g}s-{settings['clip_fps']}fps"
            + (f"-g{gop}" if gop else "")
            + ".mp4"
        )
        path = workdir / "clips" / name
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            log(f"making clip {path} ...")
            partial = path.with_name(f".{path.stem}.{os.getpid()}.mp4")
            make_clip(
                partial,
                seconds=settings["seconds"],
                fps=settings["clip_fps"],
                size=(height, width),
                photos=photos,
                gop=gop,
            )
            os.replace(partial, path)
        clips.append(path)
    return clips


def prepare_model(workdir: Path) -> Path:
    """Save (or reuse) a random-weight BEiT-base classifier with the hub's preprocessing."""
    target = workdir / RANDOM_MODEL_NAME
    if (target / "config.json").is_file() and (target / "preprocessor_config.json").is_file():
        return target
    import torch
    from transformers import BeitConfig, BeitForImageClassification
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    log(f"making a random-weight BEiT-base in {target} ...")
    config = BeitConfig(**BEIT_BASE_OVERRIDES)
    wrong = {
        key: (getattr(config, key), expected)
        for key, expected in BEIT_BASE.items()
        if getattr(config, key) != expected
    }
    if wrong:
        raise SystemExit(f"BeitConfig does not describe beit-base-patch16-224: {wrong}")
    torch.manual_seed(0)
    model = BeitForImageClassification(config).eval()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{RANDOM_MODEL_NAME}.", dir=target.parent))
    model.save_pretrained(partial)
    (partial / "preprocessor_config.json").write_text(
        json.dumps(HUB_PREPROCESSOR_CONFIG, indent=2) + "\n", encoding="utf-8"
    )
    os.replace(partial, target)
    return target


def describe_model(model_dir: Path, random_weights: bool) -> dict[str, Any]:
    """Architecture, parameter count (from the safetensors headers) and where weights came from."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    keys = [*BEIT_BASE, "model_type"]
    architecture = {key: config[key] for key in keys if key in config}
    architecture["num_labels"] = len(config.get("id2label", {})) or config.get("num_labels")
    params = 0
    for path in model_dir.glob("*.safetensors"):
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        params += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return {
        "path": str(model_dir),
        "architectures": config.get("architectures"),
        "architecture": architecture,
        "parameters": params or None,
        "random_weights": random_weights,
        "matches_beit_base": all(architecture.get(k) == v for k, v in BEIT_BASE.items()),
        "note": RANDOM_WEIGHTS_NOTE if random_weights else f"weights from {model_dir}",
    }


def decode_sampled(clips: Sequence[Path], count: int, sample_fps: float) -> list[Any]:
    """Decode up to ``count`` sampled RGB frames spread over the clips (repeated if short)."""
    import av

    per_clip = math.ceil(count / len(clips))
    frames: list[Any] = []
    for clip in clips:
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            step = max(1, round(float(stream.average_rate or CLIP_FPS) / sample_fps))
            taken = 0
            for index, frame in enumerate(container.decode(stream)):
                if index % step == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    taken += 1
                    if taken >= per_clip:
                        break
    return [frames[i % len(frames)] for i in range(count)]


def sampled_count(
    frame_count: int, video_fps: float, sample_fps: float, gop: int | None = None
) -> int:
    """How many of ``frame_count`` frames sampling at ``sample_fps`` takes.

    With ``gop`` only key frames (every ``gop``-th frame) are decoded, and labelcast's
    sampler takes the first key frame at or after each sampling slot.
    """
    if gop is None:
        return len({sample_slot(i, video_fps, sample_fps) for i in range(frame_count)})
    from labelcast.sources.sampler import SampleConfig, Sampler

    sampler = Sampler(SampleConfig(fps=sample_fps))
    keyframes = range(0, frame_count, gop)
    return sum(sampler.take(n, index / video_fps) for n, index in enumerate(keyframes))


def sample_slot(index: int, video_fps: float, sample_fps: float) -> int:
    """The sampling slot of frame ``index``: a frame is taken when its slot is new."""
    return math.floor(index * sample_fps / video_fps + 1e-9)


# --------------------------------------------------------------------------- phases


def keep_timing(settings: dict[str, Any], done: int, began: float) -> bool:
    """Whether a timed loop goes on: at least min_iters, then until min_seconds or max_iters."""
    return done < settings["min_iters"] or (
        time.perf_counter() - began < settings["min_seconds"] and done < settings["max_iters"]
    )


def phase_bare(settings: dict[str, Any]) -> dict[str, Any]:
    import torch

    from labelcast.model.classifier import Classifier

    classifier = Classifier.load(model_config(settings))
    device = torch.device(classifier.info.device)
    sync = _synchronizer(device)
    batch = settings["batch"]
    frames = decode_sampled(settings["clips"], batch, settings["sample_fps"])

    preprocess_times = []
    for _ in range(2 if settings["quick"] else 3):
        started = time.perf_counter()
        pixels = classifier.preprocess(frames)
        sync()
        preprocess_times.append(time.perf_counter() - started)

    for _ in range(settings["warmup"]):
        classifier.forward(pixels)
    sync()
    times: list[float] = []
    began = time.perf_counter()
    while keep_timing(settings, len(times), began):
        started = time.perf_counter()
        logits = classifier.forward(pixels)
        sync()
        times.append(time.perf_counter() - started)
    if not torch.isfinite(logits.float()).all():
        raise SystemExit("bare: the model produced non-finite logits")
    return {
        "frames_per_s": batch * len(times) / sum(times),
        "batch": batch,
        "input_shape": list(pixels.shape),
        "input_dtype": str(pixels.dtype).removeprefix("torch."),
        "warmup_iterations": settings["warmup"],
        "iterations": len(times),
        "ms_per_batch": _summary([t * 1000 for t in times]),
        # The noise of this figure: each timed batch's rate (a slower moment of the
        # machine shows here, as it would in e2e).
        "rate_spread": _spread([batch / t for t in times], "timed batches"),
        "preprocess_ms_per_batch": _summary([t * 1000 for t in preprocess_times]),
        "device": str(device),
        "precision": classifier.info.precision,
        "backend": classifier.info.backend,
        **_process_info(device),
    }


def phase_frames(settings: dict[str, Any]) -> dict[str, Any]:
    """(d) From decoded frames: the classifier on batches of decoded ``uint8`` frames.

    The same batch of source-size frames (decoded once, up front) is classified again and
    again, as labelcast's classifier thread does: ``serial`` classifies one batch after
    another; ``overlapped`` submits the next batch before taking the previous one's
    result, so on CUDA its copy and preprocessing overlap the forward pass (see
    labelcast/model/staging.py). Off CUDA the two are the same work.
    """
    import numpy as np
    import torch

    from labelcast.model.classifier import Classifier

    classifier = Classifier.load(model_config(settings))
    device = torch.device(classifier.info.device)
    batch = settings["batch"]
    frames = decode_sampled(settings["clips"], batch, settings["sample_fps"])
    for _ in range(settings["warmup"]):
        classifier.classify(frames)

    serial = 0
    began = time.perf_counter()
    while keep_timing(settings, serial, began):
        probs = classifier.classify(frames)
        serial += 1
    serial_s = time.perf_counter() - began

    overlapped = 0
    began = time.perf_counter()
    in_flight = None
    while keep_timing(settings, overlapped, began):
        submitted = classifier.submit(frames)
        if in_flight is not None:
            probs = in_flight.result()
        in_flight = submitted
        overlapped += 1
    assert in_flight is not None
    probs = in_flight.result()
    overlapped_s = time.perf_counter() - began
    if not np.isfinite(probs).all():
        raise SystemExit("frames: the model produced non-finite scores")
    return {
        "frames_per_s": batch * overlapped / overlapped_s,
        "serial_frames_per_s": batch * serial / serial_s,
        "batch": batch,
        "frame_shape": list(frames[0].shape),
        "overlaps": classifier.overlaps,
        "serial_batches": serial,
        "overlapped_batches": overlapped,
        "device": str(device),
        "precision": classifier.info.precision,
        "backend": classifier.info.backend,
        **_process_info(device),
    }


def pipeline_config(settings: dict[str, Any], sources: list[dict[str, Any]]) -> Any:
    """Return the labelcast config of an e2e, load or soak phase: these sources, no sinks."""
    import yaml

    from labelcast import parse_config

    raw = {
        "name": "bench",
        "model": model_config(settings).model_dump(),
        "sources": sources,
        "labels": {"top_k": 5},
        "sinks": [],
    }
    return parse_config(yaml.safe_dump(raw, sort_keys=False), "bench")


def phase_e2e(settings: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from labelcast import LabelEvent, Pipeline
    from labelcast.model.classifier import Classifier

    sources = [
        {
            "id": f"cam{i}",
            "type": "file",
            "path": str(clip),
            "sample": {"fps": settings["sample_fps"]},
            "decode": settings.get("decode", "all"),
        }
        for i, clip in enumerate(settings["clips"])
    ]
    config = pipeline_config(settings, sources)

    # Load and warm up the model first, as a running daemon would have: the figure is
    # the steady-state rate, not start-up time (reported apart).
    started = time.perf_counter()
    classifier = Classifier.load(config.model)
    load_s = time.perf_counter() - started
    device = torch.device(classifier.info.device)
    warm_frames = decode_sampled(settings["clips"], settings["batch"], settings["sample_fps"])
    classifier.classify(warm_frames)
    del warm_frames

    # Where the classifier thread spends its time; synchronised on CUDA so that each
    # part is timed for real (classify() waits for the GPU at its end anyway).
    timings: dict[str, list[float]] = {"preprocess": [], "forward": [], "classify": []}
    batch_sizes: list[int] = []
    sync = _synchronizer(device)

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            result = function(*args, **kwargs)
            sync()
            timings[name].append(time.perf_counter() - started)
            if name == "classify":
                batch_sizes.append(len(args[0]))
            return result

        return wrapper

    overlapped = classifier.overlaps
    if overlapped:
        # On CUDA the pipeline keeps a batch in flight: syncing inside it would undo that.
        # Each batch is timed from submission to result, as labelcast_model_seconds is.
        timings["classify"], batch_sizes = watch_batches(classifier)
    else:
        for name in timings:
            setattr(classifier, name, timed(name, getattr(classifier, name)))

    def run_once() -> dict[str, Any]:
        """Run the pipeline over the clips once; what it classified and how."""
        for values in (*timings.values(), batch_sizes):
            values.clear()  # each repeat's own batches
        events: list[tuple[str, int, float, float, int | None, float]] = []

        def record(event: LabelEvent) -> None:
            top = event.labels[0].class_id if event.labels else None
            events.append(
                (event.stream, event.seq, event.pts, event.latency_ms, top, time.perf_counter())
            )

        pipeline = Pipeline(config, on_event=record, classifier=classifier)
        started = time.perf_counter()
        pipeline.start()
        pipeline.wait()
        wall_s = time.perf_counter() - started
        if pipeline.failed_streams:
            raise SystemExit(f"e2e: streams failed: {pipeline.failed_streams}")
        if not events:
            raise SystemExit("e2e: the pipeline classified no frames")
        return {
            "events": events,
            "started": started,
            "wall_s": wall_s,
            "pipeline": pipeline,
            "busy_s": sum(timings["classify"]),
            "preprocess_s": sum(timings["preprocess"]),
            "forward_s": sum(timings["forward"]),
            "batch_ms": [t * 1000 for t in timings["classify"]],
            "batch_sizes": list(batch_sizes),
        }

    # Repeats with the model already loaded and warm: their spread is e2e's noise. The
    # details (latency, where the time goes, top-1) are the first repeat's.
    runs = [run_once() for _ in range(settings.get("repeats", 1))]
    first = runs[0]
    events, wall_s, pipeline = first["events"], first["wall_s"], first["pipeline"]
    counts = {len(run["events"]) for run in runs}
    if len(counts) != 1:
        raise SystemExit(f"e2e: the repeats classified different frame counts: {sorted(counts)}")
    rates = [len(run["events"]) / run["wall_s"] for run in runs]

    by_stream: dict[str, list[int]] = {}
    for stream, seq, *_ in events:
        by_stream.setdefault(stream, []).append(seq)
    gapless = all(sorted(seqs) == list(range(1, len(seqs) + 1)) for seqs in by_stream.values())
    latencies = np.array([e[3] for e in events])
    decoded = sum(s.decoded for s in pipeline.stats.values())
    busy = first["busy_s"]
    sizes = first["batch_sizes"]
    return {
        # The median of the repeats (with two, their mean).
        "frames_per_s": statistics.median(rates),
        "rate_spread": _spread(rates, "repeats"),
        "repeats": [
            {"frames_per_s": rate, "wall_s": run["wall_s"], "frames": len(run["events"])}
            for rate, run in zip(rates, runs, strict=True)
        ],
        "frames": len(events),
        "frames_per_stream": {s: len(v) for s, v in sorted(by_stream.items())},
        "seq_gapless": gapless,
        "wall_s": wall_s,
        "first_event_s": min(e[5] for e in events) - first["started"],
        "model_load_s": load_s,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p99": float(np.percentile(latencies, 99)),
            "max": float(latencies.max()),
        },
        "decoded_frames": decoded,
        "decoded_frames_per_s": decoded / wall_s,
        "batch_stats": _batch_stats(pipeline),
        "batches": len(sizes),
        "mean_batch": sum(sizes) / max(len(sizes), 1),
        "classifier": (
            {"overlapped": True, "batch_ms": _summary(first["batch_ms"])}
            if overlapped
            else {
                "overlapped": False,
                "batch_ms": _summary(first["batch_ms"]),
                "busy_s": busy,
                "busy_share": busy / wall_s,
                "preprocess_s": first["preprocess_s"],
                "forward_s": first["forward_s"],
                "softmax_and_copy_s": busy - first["preprocess_s"] - first["forward_s"],
                "forward_frames_per_s": len(events) / max(first["forward_s"], 1e-9),
            }
        ),
        "top1": [[e[0], round(e[2], 3), e[4]] for e in events],
        "device": str(device),
        "precision": classifier.info.precision,
        "backend": classifier.info.backend,
        **_process_info(device),
    }


# What the naive loop does at each precision: the code a user would write for it.
NAIVE_LOOPS = {
    ("fp32", "torch"): "transformers model in fp32",
    ("fp16", "torch"): "transformers model .to(float16)",
    ("bf16", "torch"): "transformers model .to(bfloat16)",
    ("int8", "torch"): "transformers model through torch.ao.quantization.quantize_dynamic "
    "(nn.Linear to qint8)",
    ("fp32", "onnxruntime"): "labelcast's fp32 ONNX export in an onnxruntime.InferenceSession",
    ("int8", "onnxruntime"): "labelcast's int8 ONNX file (ONNX Runtime dynamic quantization) "
    "in an onnxruntime.InferenceSession",
}


def naive_forward(settings: dict[str, Any], device: Any) -> Callable[[Any], Any]:
    """The naive loop's model at ``settings["naive_engine"]``: pixel values in, logits out.

    Each is what a user would write for that precision: the transformers model in fp32,
    ``.to(float16 or bfloat16)``, or through torch's dynamic int8 quantization; with the
    onnxruntime backend, the very ONNX file labelcast runs (its cached export, quantized
    when asked) in a session of the user's own, fed one frame at a time.
    """
    import torch

    engine = settings["naive_engine"]
    precision, backend = engine["precision"], engine["backend"]
    if (precision, backend) not in NAIVE_LOOPS:
        raise SystemExit(f"naive: no naive loop for {precision} with {backend}")
    if backend == "onnxruntime":
        import onnxruntime

        from labelcast.model.backends import onnxruntime as ort_backend

        # labelcast's loader exports (and quantizes) once and caches the file: load it to
        # learn the path, then close it; the session that is timed is the loop's own.
        loaded = ort_backend.load(model_config(settings))
        path = loaded.engine.model.path
        loaded.engine.close()
        session = onnxruntime.InferenceSession(
            str(path), providers=ort_backend.providers_for(device)
        )
        input_name = session.get_inputs()[0].name

        def run_session(pixel_values: Any) -> Any:
            array = pixel_values.to(torch.float32).numpy()
            return torch.from_numpy(session.run(None, {input_name: array})[0])

        return run_session

    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(settings["model_dir"]).eval()
    if precision == "int8":
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            # torch's deprecation notice for torch.ao.quantization: the user's loop runs anyway
            warnings.simplefilter("ignore")
            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        dtype = torch.float32
    else:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        model = model.to(device=device, dtype=dtype)

    def run_model(pixel_values: Any) -> Any:
        with torch.inference_mode():
            return model(pixel_values=pixel_values.to(device=device, dtype=dtype)).logits

    return run_model


def naive_classifier(
    settings: dict[str, Any], device: Any
) -> tuple[Callable[[Any], tuple[int, float]], str]:
    """The naive loop's classification of one RGB frame: (top-1 class id, its score).

    transformers' ``BeitImageProcessorPil`` (the checkpoint's processor where it is
    no BEiT) per frame, then :func:`naive_forward` at ``settings["naive_engine"]``,
    batch size 1. Returns the function and the processor's class name.
    """
    from transformers import AutoImageProcessor
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    model_dir = settings["model_dir"]
    forward = naive_forward(settings, device)
    processor_config = json.loads(
        (Path(model_dir) / "preprocessor_config.json").read_text(encoding="utf-8")
    )
    kind = processor_config.get("image_processor_type") or processor_config.get(
        "feature_extractor_type", ""
    )
    processor: Any = None
    if kind.startswith("Beit"):
        try:
            from transformers import BeitImageProcessorPil
        except ImportError:  # a transformers without the PIL classes: its default processor
            pass
        else:
            processor = BeitImageProcessorPil.from_pretrained(model_dir)
    if processor is None:
        processor = AutoImageProcessor.from_pretrained(model_dir)

    def classify(rgb: Any) -> tuple[int, float]:
        inputs = processor(images=rgb, return_tensors="pt")
        logits = forward(inputs["pixel_values"])
        probs = logits.float().softmax(dim=-1)[0]
        score, class_id = probs.max(dim=0)
        return int(class_id), float(score)

    return classify, type(processor).__name__


def phase_naive(settings: dict[str, Any]) -> dict[str, Any]:
    """The loop a user would write first: OpenCV, the PIL image processor, batch size 1."""
    import cv2

    from labelcast.model.classifier import resolve_device

    device = resolve_device(settings["device"])
    engine = settings["naive_engine"]
    started = time.perf_counter()
    classify, processor = naive_classifier(settings, device)
    load_s = time.perf_counter() - started

    # One warm-up frame, so the figure is not the first call's set-up cost.
    for frame in decode_sampled(settings["clips"][:1], settings["warmup"], settings["sample_fps"]):
        classify(frame)

    top1: list[list[Any]] = []
    decoded = 0
    stream_rates: list[float] = []
    started = time.perf_counter()
    for stream, clip in enumerate(settings["clips"]):
        stream_started, stream_frames = time.perf_counter(), len(top1)
        capture = cv2.VideoCapture(str(clip))
        if not capture.isOpened():
            raise SystemExit(f"naive: OpenCV cannot open {clip}")
        video_fps = capture.get(cv2.CAP_PROP_FPS) or CLIP_FPS
        index, last_slot = 0, -1
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            slot = sample_slot(index, video_fps, settings["sample_fps"])
            if slot != last_slot:
                last_slot = slot
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                class_id, _score = classify(rgb)
                top1.append([f"cam{stream}", round(index / video_fps, 3), class_id])
            index += 1
        decoded += index
        capture.release()
        # Each stream is the same work on other photos: their rates are the loop's noise.
        stream_rates.append((len(top1) - stream_frames) / (time.perf_counter() - stream_started))
    wall_s = time.perf_counter() - started
    if not top1:
        raise SystemExit("naive: no frames were classified")
    return {
        "frames_per_s": len(top1) / wall_s,
        "rate_spread": _spread(stream_rates, "streams"),
        "frames": len(top1),
        "wall_s": wall_s,
        "model_load_s": load_s,
        "decoded_frames": decoded,
        "processor": processor,
        "loop": NAIVE_LOOPS[(engine["precision"], engine["backend"])],
        "top1": top1,
        "device": str(device),
        "precision": engine["precision"],
        "backend": engine["backend"],
        **_process_info(device),
    }


def phase_live(settings: dict[str, Any]) -> dict[str, Any]:
    """Live-paced sources at a fraction of capacity: latency, drops, and RSS over time.

    ``settings["live"]`` says which (``load`` or ``soak``), the fraction, the capacity
    (frames/s) and for how long. The clips are file sources with ``realtime`` and
    ``loop``: each releases frames at the clip's own rate, as a camera would.
    """
    import threading

    import numpy as np
    import torch

    from labelcast import LabelEvent, Pipeline
    from labelcast.model.classifier import Classifier

    live = settings["live"]
    streams = len(settings["clips"])
    offered_fps = live["fraction"] * live["capacity"]
    per_stream_fps = offered_fps / streams
    if per_stream_fps > CLIP_FPS:
        raise SystemExit(
            f"{live['kind']}: {offered_fps:.1f} frames/s over {streams} streams is "
            f"{per_stream_fps:.1f} per stream, more than the clips' {CLIP_FPS} fps; "
            f"use --streams {math.ceil(offered_fps / CLIP_FPS)} or more"
        )
    keyframe_fps = CLIP_FPS / settings["gop"] if settings.get("gop") else None
    if keyframe_fps is not None and per_stream_fps > keyframe_fps + 1e-9:
        log(
            f"{live['kind']}: {per_stream_fps:.2f} frames/s per stream is more than the "
            f"clips' key frames ({keyframe_fps:g}/s): decode keyframes offers fewer"
        )
    sources = [
        {
            "id": f"cam{i}",
            "type": "file",
            "path": str(clip),
            "sample": {"fps": per_stream_fps},
            "decode": settings.get("decode", "all"),
            "realtime": True,
            "loop": True,
        }
        for i, clip in enumerate(settings["clips"])
    ]
    config = pipeline_config(settings, sources)
    classifier = Classifier.load(config.model)
    device = torch.device(classifier.info.device)
    sync = _synchronizer(device)
    # Warm up the batch sizes this load forms (1 up to one frame per stream).
    warm = decode_sampled(settings["clips"], min(streams, settings["batch"]), 1.0)
    for size in sorted({1, len(warm)}):
        classifier.classify(warm[:size])
    del warm

    classify_times, batch_sizes = watch_batches(classifier, sync)

    events: list[tuple[str, int, float, int, float]] = []

    def record(event: LabelEvent) -> None:
        events.append(
            (event.stream, event.seq, event.latency_ms, event.dropped, time.perf_counter())
        )

    rss: list[tuple[float, float]] = []
    sampling_done = threading.Event()
    interval = live["rss_interval_s"]

    def sample_rss() -> None:
        while True:
            rss.append((time.perf_counter() - started, _current_rss_mb()))
            if sampling_done.wait(interval):
                return

    pipeline = Pipeline(config, on_event=record, classifier=classifier)
    started = time.perf_counter()
    sampler = threading.Thread(target=sample_rss, name="rss", daemon=True)
    sampler.start()
    pipeline.start()
    ended_early = pipeline.wait(live["seconds"])
    offered_until = time.perf_counter()
    pipeline.stop()
    pipeline.wait()
    wall_s = time.perf_counter() - started
    sampling_done.set()
    sampler.join()
    if ended_early:
        raise SystemExit(f"{live['kind']}: the pipeline ended before it was stopped")
    if pipeline.failed_streams:
        raise SystemExit(f"{live['kind']}: streams failed: {pipeline.failed_streams}")
    if not events:
        raise SystemExit(f"{live['kind']}: the pipeline classified no frames")

    stats = pipeline.stats.values()
    offered_s = offered_until - started
    sampled = sum(s.sampled for s in stats)
    dropped = sum(s.dropped for s in stats)
    latencies = np.array([e[2] for e in events])
    model_ms = sorted(t * 1000 for t in classify_times)
    batch_model_ms = model_ms[len(model_ms) // 2]
    target_ms = settings["max_wait_ms"] + 2 * batch_model_ms
    p99 = float(np.percentile(latencies, 99))
    # What the sources can offer: key frames only cap a stream's rate at theirs.
    deliverable = min(per_stream_fps, keyframe_fps or per_stream_fps)
    expected = offered_s * deliverable * streams
    return {
        "kind": live["kind"],
        "fraction_of_capacity": live["fraction"],
        "capacity_frames_per_s": live["capacity"],
        "capacity_from": live["capacity_from"],
        "offered_target_frames_per_s": offered_fps,
        "per_stream_sample_fps": per_stream_fps,
        "seconds": offered_s,
        "wall_s": wall_s,
        # Frames the sources queued (``sampled``): fewer than ``expected_offered`` when a
        # source could not keep real time (its queue made it wait, or decoding lagged).
        "expected_offered": expected,
        "offered": sampled,
        "offered_frames_per_s": sampled / offered_s,
        "held_back": max(0.0, expected - sampled),
        "frames": len(events),
        "frames_per_s": len(events) / wall_s,
        "dropped": dropped,
        "dropped_in_events": sum(e[3] for e in events),
        "dropped_share": dropped / sampled if sampled else 0.0,
        "latency_ms": {
            "p50": float(np.percentile(latencies, 50)),
            "p99": p99,
            "max": float(latencies.max()),
        },
        "batch_model_ms": {
            "p50": batch_model_ms,
            "max": model_ms[-1],
            "mean_batch": sum(batch_sizes) / len(batch_sizes),
            "largest_batch": max(batch_sizes),
            "batches": len(batch_sizes),
        },
        "latency_target_ms": target_ms,
        "p99_within_target": p99 <= target_ms,
        "rss_mb": _rss_summary(rss, offered_s),
        "device": str(device),
        "precision": classifier.info.precision,
        "backend": classifier.info.backend,
        **_process_info(device),
    }


def _current_rss_mb() -> float:
    """This process's resident set size now, in MB (from /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm", encoding="utf-8") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


# How a soak's RSS growth is measured: the median of the last window against the median
# of a baseline window. "from-first-window" is the rule the < 5 % target was set with;
# it counts the start-up ramp (the model's first batches, queues filling, the allocator
# growing to its working set) as growth. "from-second-window" skips that warm-up window
# and is the rule ``growth_pct`` uses now. Both are recorded, so that a figure can be
# read under either.
RSS_RULES: dict[str, dict[str, Any]] = {
    "from-first-window": {
        "window": 0,
        "why": "It measures from start-up, so the start-up ramp (the model's first batches, "
        "queues filling, the allocator growing to its working set) counts as growth.",
    },
    "from-second-window": {
        "window": 1,
        "why": "It skips the first window as warm-up, the ramp the first rule counts, so what "
        "is left is growth while running: a leak shows, a working set that settled does not.",
    },
}
RSS_RULE = "from-second-window"


def _rss_summary(samples: list[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """RSS growth over a run: the median of the last window against a baseline window's.

    The window is a minute, or a fifth of the run when that is shorter than five minutes.
    ``growth_pct`` follows :data:`RSS_RULE` (baseline: the second window, the first being
    warm-up); ``rules`` holds the growth under every rule of :data:`RSS_RULES`, and
    ``window_medians`` the median of each window, so a reader sees the plateau.
    """
    window = min(60.0, seconds / 5)

    def median_between(start: float, end: float) -> float | None:
        values = sorted(mb for t, mb in samples if start <= t < end)
        if not values and samples:
            # A sampler starved of CPU for a whole (short) window: the nearest sample.
            middle = (start + end) / 2
            return min(samples, key=lambda sample: abs(sample[0] - middle))[1]
        return values[len(values) // 2] if values else None

    last = sorted(mb for t, mb in samples if seconds - window <= t <= seconds)
    final = last[len(last) // 2] if last else None
    rules = []
    for rule, spec in RSS_RULES.items():
        start = spec["window"] * window
        baseline = median_between(start, start + window)
        growth = (
            (final - baseline) / baseline * 100
            if final is not None and baseline  # neither missing nor zero
            else None
        )
        rules.append(
            {
                "rule": rule,
                "baseline_window_s": [start, start + window],
                "baseline": baseline,
                "final": final,
                "growth_pct": growth,
                "why": spec["why"],
            }
        )
    current = next(r for r in rules if r["rule"] == RSS_RULE)
    if current["growth_pct"] is None:
        return {"samples": len(samples), "growth_pct": None, "rule": RSS_RULE, "rules": rules}
    windows = max(1, math.ceil(seconds / window - 1e-9))
    return {
        "samples": len(samples),
        "window_s": window,
        "rule": RSS_RULE,
        "baseline": current["baseline"],
        "final": final,
        "max": max(mb for _, mb in samples),
        "growth_pct": current["growth_pct"],
        "rules": rules,
        "window_medians": [median_between(k * window, (k + 1) * window) for k in range(windows)],
        "series": [[round(t, 1), round(mb, 1)] for t, mb in samples],
    }


PHASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "bare": phase_bare,
    "e2e": phase_e2e,
    "naive": phase_naive,
    "live": phase_live,
    "frames": phase_frames,
}


def model_config(settings: dict[str, Any]) -> Any:
    from labelcast.model.classifier import ModelConfig

    precision = settings["precision"]
    model: dict[str, Any] = {}
    if settings.get("backend", "torch") == "onnxruntime":
        quantize = "int8" if precision == "int8" else "none"
        precision = "auto" if precision == "int8" else precision
        model = {"backend": "onnxruntime", "onnx": {"quantize": quantize}}
    batch: dict[str, Any] = {"max_size": settings["batch"], "max_wait_ms": settings["max_wait_ms"]}
    if settings.get("buckets"):
        batch["buckets"] = settings["buckets"]
    if settings.get("compile", "none") != "none":
        model["compile"] = settings["compile"]
    return ModelConfig.model_validate(
        {
            "id": settings["model_dir"],
            "device": settings["device"],
            "precision": precision,
            "batch": batch,
            **model,
        }
    )


def _engine(result: dict[str, Any]) -> str:
    """Precision, and the backend when it is not torch (e.g. "int8 onnxruntime")."""
    backend = result.get("backend", "torch")
    return result["precision"] + ("" if backend == "torch" else f" {backend}")


def _batch_stats(pipeline: Any) -> dict[str, Any] | None:
    """The pipeline's own batch counters, where this version of labelcast keeps them."""
    stats = getattr(pipeline, "batch_stats", None)
    if stats is None or not dataclasses.is_dataclass(stats) or isinstance(stats, type):
        return None
    return dataclasses.asdict(stats)


def watch_batches(
    classifier: Any, sync: Callable[[], None] | None = None
) -> tuple[list[float], list[int]]:
    """Time each batch the pipeline classifies; return the (filling) lists of times and sizes.

    Where the classifier overlaps batches (CUDA), a batch is timed from ``submit`` to its
    ``result()``; elsewhere each ``classify`` call is timed, then ``sync`` is called.
    """
    times: list[float] = []
    sizes: list[int] = []
    if classifier.overlaps:
        original_submit = classifier.submit

        def timed_submit(images: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            pending = original_submit(images, *args, **kwargs)
            sizes.append(len(images))
            original_result = pending.result

            def timed_result() -> Any:
                probs = original_result()
                times.append(time.perf_counter() - started)
                return probs

            pending.result = timed_result
            return pending

        classifier.submit = timed_submit
        return times, sizes
    original_classify = classifier.classify

    def timed_classify(images: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = original_classify(images, *args, **kwargs)
        if sync is not None:
            sync()
        times.append(time.perf_counter() - started)
        sizes.append(len(images))
        return result

    classifier.classify = timed_classify
    return times, sizes


def _synchronizer(device: Any) -> Callable[[], None]:
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _spread(rates: list[float], over: str) -> dict[str, Any]:
    """Min, median and max of a phase's rates over its ``over`` (batches, repeats, streams)."""
    ordered = sorted(rates)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "max": ordered[-1],
        "n": len(ordered),
        "over": over,
        "rates": ordered,
    }


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "p50": ordered[len(ordered) // 2],
        "max": ordered[-1],
        "mean": sum(ordered) / len(ordered),
    }


def _process_info(device: Any) -> dict[str, Any]:
    """Peak RSS of this (phase) process, torch's thread count, the device's name and memory."""
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_mb = rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024
    info: dict[str, Any] = {"peak_rss_mb": rss_mb, "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        info["device_name"] = "cpu"
    return info


# --------------------------------------------------------------------------- the run


def run_phase(
    name: str,
    settings_file: Path,
    scratch: Path,
    label: str | None = None,
    script: Path | None = None,
) -> dict[str, Any]:
    """Run one phase in a child process of its own and return what it measured.

    ``script`` is the file whose ``--phase`` runs it: this one by default; another
    benchmark (bench/cameras.py) passes its own and answers with :func:`run_child`.
    """
    label = label or name
    out = scratch / f"{label}.json"
    command = [
        sys.executable,
        str((script or Path(__file__)).resolve()),
        "--phase",
        name,
        "--settings",
        str(settings_file),
        "--phase-out",
        str(out),
    ]
    log(f"phase {label} ...")
    started = time.perf_counter()
    cpu_before, ours_before = read_cpu_times(), own_cpu_seconds()
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"bench: phase {label} failed (exit {completed.returncode})")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    result["phase_wall_s"] = time.perf_counter() - started
    result["cpu_during_phase"] = cpu_accounting(
        cpu_before, read_cpu_times(), own_cpu_seconds() - ours_before
    )
    return result


def run_child(
    phase: Callable[[dict[str, Any]], dict[str, Any]],
    name: str,
    settings_file: Path | None,
    out: Path | None,
) -> int:
    """The child process's side of :func:`run_phase`: run ``phase`` and write its result.

    Returns the exit status: 0, or 2 when labelcast refused the settings (its message
    is logged).
    """
    if settings_file is None or out is None:
        raise SystemExit("--phase needs --settings and --phase-out")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    settings = json.loads(settings_file.read_text(encoding="utf-8"))
    from labelcast import LabelcastError

    try:
        result = phase(settings)
    except LabelcastError as exc:
        log(f"phase {name}: {exc}")
        return 2
    out.write_text(json.dumps(result), encoding="utf-8")
    return 0


def machine_info() -> dict[str, Any]:
    cpu_model = platform.processor() or platform.machine()
    memory_gb = None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    memory_gb = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass
    versions = {}
    packages = (
        "torch",
        "transformers",
        "onnxruntime",
        "onnx",
        "av",
        "opencv-python-headless",
        "numpy",
        "labelcast",
    )
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cpu_model": cpu_model,
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "load_average_at_start": list(os.getloadavg()),
    }


# CPU features the precisions depend on (bf16 and int8 kernels), as /proc/cpuinfo names them.
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str] | None:
    """Which of :data:`CPU_FLAGS` this CPU has (None where /proc/cpuinfo is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in CPU_FLAGS if flag in present]
    except OSError:
        return None
    return []


def read_cpu_times() -> list[int] | None:
    """The machine's aggregate CPU times (USER_HZ ticks) from /proc/stat, or None."""
    try:
        with open("/proc/stat", encoding="utf-8") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    return [int(v) for v in fields[1:9]] if fields and fields[0] == "cpu" else None


def own_cpu_seconds() -> float:
    """CPU seconds used by this process and its finished children (the phases)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_accounting(
    before: list[int] | None, after: list[int] | None, ours_s: float
) -> dict[str, Any] | None:
    """How the machine's CPU time went between two readings: this benchmark, others, steal.

    ``ours_s`` is the CPU time the benchmark used meanwhile. ``others_share`` is CPU
    time used by other processes, as a share of all CPU time; ``steal_share`` is time
    the hypervisor gave to other guests. Either above a few percent: noisy figures.
    """
    if before is None or after is None:
        return None
    delta = [b - a for a, b in zip(before, after, strict=True)]
    user, nice, system, idle, iowait, irq, softirq, steal = delta
    total = sum(delta)
    if total <= 0:
        return None
    ours = ours_s * os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq
    return {
        "benchmark_share": min(ours / total, 1.0),
        "others_share": max(busy - ours, 0) / total,
        "steal_share": steal / total,
        "idle_share": (idle + iowait) / total,
    }


def agreement(e2e: dict[str, Any], naive: dict[str, Any]) -> dict[str, Any]:
    """Top-1 agreement of e2e and naive on the frames both classified (same stream and pts)."""
    labelcast_top1 = {(s, pts): c for s, pts, c in e2e["top1"]}
    naive_top1 = {(s, pts): c for s, pts, c in naive["top1"]}
    common = labelcast_top1.keys() & naive_top1.keys()
    same = sum(labelcast_top1[k] == naive_top1[k] for k in common)
    return {
        "frames_compared": len(common),
        "top1_agreement": same / len(common) if common else None,
        "distinct_top1_e2e": len(set(labelcast_top1.values())),
        "distinct_top1_naive": len(set(naive_top1.values())),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase is not None:
        return run_child(PHASES[args.phase], args.phase, args.settings, args.phase_out)

    sys.path.insert(0, str(REPO))
    settings = resolve_settings(args)
    if settings["buckets"] and max(settings["buckets"]) < settings["batch"]:
        raise SystemExit(
            f"--buckets: the largest bucket ({max(settings['buckets'])}) must be at least "
            f"the batch size ({settings['batch']})"
        )
    started_at = time.time()
    cpu_before = read_cpu_times()
    machine = machine_info()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        model_dir = args.model.resolve()
        if not (model_dir / "config.json").is_file():
            raise SystemExit(f"--model {args.model}: not a checkpoint directory (no config.json)")
        if not (model_dir / "preprocessor_config.json").is_file():
            raise SystemExit(f"--model {args.model}: no preprocessor_config.json")
    else:
        model_dir = prepare_model(workdir)
    model = describe_model(model_dir, random_weights=args.model is None)
    clips = prepare_clips(workdir, settings)
    settings["model_dir"] = str(model_dir)
    settings["clips"] = [str(c) for c in clips]

    with tempfile.TemporaryDirectory(prefix="labelcast-bench-") as scratch_name:
        scratch = Path(scratch_name)
        settings_file = scratch / "settings.json"
        settings_file.write_text(json.dumps(settings), encoding="utf-8")
        bare = run_phase("bare", settings_file, scratch)
        e2e = run_phase("e2e", settings_file, scratch)
        naive, naive_fp32 = run_naive_phases(settings, bare, scratch)
        frames = run_phase("frames", settings_file, scratch) if settings["from_frames"] else None
        capacity = (
            settings["capacity"]
            or (e2e if settings["capacity_from"] == "e2e" else bare)["frames_per_s"]
        )
        live_runs: dict[str, dict[str, Any] | None] = {"load": None, "soak": None}
        for kind, fraction, seconds in (
            ("load", settings["load"], settings["load_seconds"]),
            ("soak", settings["soak_load"], (settings["soak_minutes"] or 0) * 60),
        ):
            if fraction is None or not seconds:
                continue
            live = {
                "kind": kind,
                "fraction": fraction,
                "capacity": capacity,
                "capacity_from": settings["capacity_from"],
                "seconds": seconds,
                # Every second under load; every 5 s (about 120 a soak of 10 minutes).
                "rss_interval_s": 1.0 if kind == "load" else min(5.0, seconds / 20),
            }
            live_file = scratch / f"settings-{kind}.json"
            live_file.write_text(json.dumps({**settings, "live": live}), encoding="utf-8")
            live_runs[kind] = run_phase("live", live_file, scratch, label=kind)

    machine["load_average_at_end"] = list(os.getloadavg())
    machine["cpu_during_run"] = cpu_accounting(cpu_before, read_cpu_times(), own_cpu_seconds())
    machine["device_name"] = bare["device_name"]
    machine["torch_threads"] = bare["torch_threads"]
    expected = settings["streams"] * sampled_count(
        round(settings["seconds"] * CLIP_FPS), CLIP_FPS, settings["sample_fps"], settings["gop"]
    )
    arguments = list(sys.argv[1:] if argv is None else argv)
    phases = {"bare": bare, "e2e": e2e, "naive": naive, "naive_fp32": naive_fp32}
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "name": args.name or (args.json.stem if args.json is not None else "bench"),
        "date": time.strftime("%Y-%m-%d", time.gmtime(started_at)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "command": command_line(arguments),
        "argv": arguments,
        "machine": machine,
        "model": model,
        "settings": {k: v for k, v in settings.items() if k not in ("clips", "model_dir")},
        "clips": settings["clips"],
        "expected_frames": expected,
        "bare": bare,
        "e2e": {k: v for k, v in e2e.items() if k != "top1"},
        "naive": None if naive is None else {k: v for k, v in naive.items() if k != "top1"},
        # The naive loop in fp32: the same run as "naive" when labelcast runs fp32 torch.
        "naive_fp32": None
        if naive_fp32 is None
        else {k: v for k, v in naive_fp32.items() if k != "top1"},
        "naive_fp32_is_naive": naive is not None and naive_fp32 is naive,
        "ratios": {
            name: None if phases[a] is None or phases[b] is None else ratio(phases[a], phases[b])
            for name, (a, b) in RATIOS.items()
        }
        | {
            "frames_over_bare": None
            if frames is None
            else frames["frames_per_s"] / bare["frames_per_s"],
        },
        # Each ratio's lowest and highest value the rates' spreads allow (see _interval).
        "ratio_intervals": {
            name: None
            if phases[a] is None or phases[b] is None
            else ratio_interval(phases[a], phases[b])
            for name, (a, b) in RATIOS.items()
        },
        "frames": frames,
        "e2e_vs_naive": None if naive is None else agreement(e2e, naive),
        "load": live_runs["load"],
        "soak": live_runs["soak"],
    }
    print(report(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


# The ratios a run reports: name -> (numerator phase, denominator phase).
RATIOS: dict[str, tuple[str, str]] = {
    "e2e_over_bare": ("e2e", "bare"),
    "e2e_over_naive": ("e2e", "naive"),
    "e2e_over_naive_fp32": ("e2e", "naive_fp32"),
    "bare_over_naive": ("bare", "naive"),
    "bare_over_naive_fp32": ("bare", "naive_fp32"),
    "naive_over_naive_fp32": ("naive", "naive_fp32"),
}


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Phase a's frames/s over phase b's."""
    return float(a["frames_per_s"]) / float(b["frames_per_s"])


def ratio_interval(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """The lowest and highest a/b the two phases' rate spreads allow.

    a's slowest against b's fastest, and a's fastest against b's slowest: a ratio whose
    interval holds 1.0 (or its target) does not tell the two apart (or the target met from
    missed). A phase with one rate only (one repeat) contributes no spread of its own.
    """
    spread_a, spread_b = a["rate_spread"], b["rate_spread"]
    return [spread_a["min"] / spread_b["max"], spread_a["max"] / spread_b["min"]]


def run_naive_phases(
    settings: dict[str, Any], bare: dict[str, Any], scratch: Path
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Run the naive loop at labelcast's precision (or fp32) and in fp32: both results.

    ``--naive-precision same`` runs it at the precision and backend the bare model ran
    with (``bare`` says which, ``auto`` resolved), then in fp32 torch unless that was it
    already; ``fp32`` runs fp32 only. Either way the second result is the fp32 run (the
    same object when only one ran).
    """
    if settings["skip_naive"]:
        return None, None
    fp32 = {"precision": "fp32", "backend": "torch"}
    same = {"precision": bare["precision"], "backend": bare.get("backend", "torch")}
    engines = [same if settings["naive_precision"] == "same" else fp32]
    if engines[0] != fp32:
        engines.append(fp32)
    results = []
    for engine in engines:
        label = "naive" if not results else "naive-fp32"
        path = scratch / f"settings-{label}.json"
        path.write_text(json.dumps({**settings, "naive_engine": engine}), encoding="utf-8")
        results.append(run_phase("naive", path, scratch, label=label))
    return results[0], results[-1]


def command_line(arguments: Sequence[str], script: Path | None = None) -> str:
    """The command that ran, as a shell line (paths relative to the repository root).

    ``script`` defaults to this file; scripts/keyframes_cpu.py passes its own.
    """

    def shown(path: Path) -> str:
        try:
            return str(path.relative_to(REPO))
        except ValueError:
            return str(path)

    script = (script or Path(__file__)).resolve()
    return shlex.join([shown(Path(sys.executable)), shown(script), *arguments])


def report(r: dict[str, Any]) -> str:
    s, m, model = r["settings"], r["machine"], r["model"]
    bare, e2e, naive = r["bare"], r["e2e"], r["naive"]
    height, width = s["clip_size"]
    arch = model["architecture"]
    if model["random_weights"]:
        params = f"{model['parameters'] / 1e6:.1f}M params" if model["parameters"] else ""
        model_line = (
            f"model: BeitForImageClassification, beit-base-patch16-224 architecture "
            f"({arch.get('num_hidden_layers')} layers, hidden {arch.get('hidden_size')}, "
            f"{params}), RANDOM WEIGHTS: same compute as the real checkpoint"
        )
    else:
        model_line = f"model: {model['path']} (weights as saved there)"
    load = m["load_average_at_start"][0]
    lines = [
        "labelcast benchmark" + (" (--quick smoke run: figures mean little)" if s["quick"] else ""),
        model_line,
        f"machine: {m['cpu_model']}, {m['usable_cores']} cores, torch {m['versions']['torch']} "
        f"({bare['torch_threads']} threads), transformers {m['versions']['transformers']}; "
        f"device {bare['device']}"
        + (f" ({bare['device_name']})" if bare["device_name"] != "cpu" else ""),
        f"clips: {s['streams']} x {s['seconds']:g} s {width}x{height} H.264 at {s['clip_fps']} "
        f"fps, sampled at {s['sample_fps']:g} fps -> {e2e['frames']} frames "
        f"(expected {r['expected_frames']})",
        _decode_line(s),
        "",
        f"{'':56}{'frames/s':>10}{'peak RSS':>12}{'CPU to others':>15}",
        f"{'(a) bare model, batch ' + str(bare['batch']) + ', ' + _engine(bare):56}"
        f"{bare['frames_per_s']:10.2f}{bare['peak_rss_mb']:9.0f} MB{_others(bare):>15}",
        f"{'(b) labelcast e2e, ' + str(s['streams']) + ' streams, ' + _engine(e2e):56}"
        f"{e2e['frames_per_s']:10.2f}{e2e['peak_rss_mb']:9.0f} MB{_others(e2e):>15}",
    ]
    if naive is not None:
        runs = [naive] if r.get("naive_fp32_is_naive", True) else [naive, r["naive_fp32"]]
        for run in runs:
            lines.append(
                f"{'(c) naive cv2 + ' + run['processor'] + ', ' + _engine(run):56}"
                f"{run['frames_per_s']:10.2f}{run['peak_rss_mb']:9.0f} MB{_others(run):>15}"
            )
    else:
        lines.append("(c) naive baseline skipped (--skip-naive)")
    frames = r.get("frames")
    if frames is not None:
        lines.append(
            f"{'(d) from decoded frames, batch ' + str(frames['batch']) + ', overlapped':56}"
            f"{frames['frames_per_s']:10.2f}{frames['peak_rss_mb']:9.0f} MB{_others(frames):>15}"
        )
        lines.append(f"{'    the same, serial':56}{frames['serial_frames_per_s']:10.2f}")
    ratios = r["ratios"]
    lat = e2e["latency_ms"]
    c = e2e["classifier"]
    spreads = [
        f"{name} {phase['rate_spread']['min']:.2f}-{phase['rate_spread']['max']:.2f} "
        f"({phase['rate_spread']['n']} {phase['rate_spread']['over']})"
        for name, phase in (("bare", bare), ("e2e", e2e), ("naive", naive))
        if phase is not None and phase.get("rate_spread")
    ]
    lines += [
        "",
        "rate spread (frames/s, min-max): " + ", ".join(spreads),
        *_ratio_lines(r),
        *(
            []
            if frames is None
            else [
                f"from-frames/bare = {ratios['frames_over_bare']:.2f} ({width}x{height} uint8 "
                f"frames; staging overlapped with compute: "
                f"{'yes' if frames['overlaps'] else 'no, not on CUDA'})"
            ]
        ),
        f"e2e latency (capture -> sink hand-off): p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms"
        f" (file sources run flat out, so this includes queueing behind the model)",
        (
            f"e2e classifier thread: one batch in flight while the next is staged (CUDA), "
            f"{c['batch_ms']['p50']:.0f} ms from submission to result (p50), "
            if c.get("overlapped")
            else f"e2e classifier thread: busy {c['busy_share']:.0%} of {e2e['wall_s']:.1f} s "
            f"(preprocess {c['preprocess_s']:.1f} s, forward {c['forward_s']:.1f} s, "
            f"softmax+copy {c['softmax_and_copy_s']:.2f} s), "
        )
        + f"{e2e['batches']} batches of "
        f"{e2e['mean_batch']:.1f} on average; decoded {e2e['decoded_frames_per_s']:.0f} frames/s",
        f"bare: {bare['iterations']} timed batches after {bare['warmup_iterations']} warm-up, "
        f"{bare['ms_per_batch']['p50']:.0f} ms/batch (p50); labelcast preprocess of one batch "
        f"from {width}x{height}: {bare['preprocess_ms_per_batch']['p50']:.0f} ms",
    ]
    if r["e2e_vs_naive"] is not None and r["e2e_vs_naive"]["top1_agreement"] is not None:
        agree = r["e2e_vs_naive"]
        lines.append(
            f"e2e vs naive top-1 agreement: {agree['top1_agreement']:.0%} of "
            f"{agree['frames_compared']} frames; distinct top-1 classes: "
            f"{agree['distinct_top1_e2e']} e2e, {agree['distinct_top1_naive']} naive"
            + (" (random weights: a sanity check only)" if model["random_weights"] else "")
        )
    for kind in ("load", "soak"):
        if r.get(kind) is not None:
            lines += ["", *_live_lines(r[kind], s)]
    cpu = m.get("cpu_during_run")
    if cpu is not None:
        noisy = cpu["others_share"] + cpu["steal_share"] > 0.05 or load > 0.5
        lines.append(
            f"CPU during the run: benchmark {cpu['benchmark_share']:.0%}, other processes "
            f"{cpu['others_share']:.0%}, steal {cpu['steal_share']:.0%}, idle "
            f"{cpu['idle_share']:.0%}; load average at start {load:.2f}"
            + (": other work was running, timings are noisy" if noisy else "")
        )
    return "\n".join(lines)


RATIO_NAMES = {
    "e2e_over_bare": "e2e/bare",
    "bare_over_naive": "bare/naive",
    "e2e_over_naive": "e2e/naive",
    "e2e_over_naive_fp32": "e2e/naive-fp32",
    "naive_over_naive_fp32": "naive/naive-fp32",
}


def _ratio_lines(r: dict[str, Any]) -> list[str]:
    """Each ratio with its interval; those whose interval holds 1.0 are within noise."""
    lines = []
    for key, name in RATIO_NAMES.items():
        value, interval = r["ratios"].get(key), r["ratio_intervals"].get(key)
        if value is None or (key.endswith("fp32") and r.get("naive_fp32_is_naive")):
            continue
        text = f"{name:17}= {value:.2f}"
        if interval is not None:
            low, high = interval
            text += f"  [{low:.2f}-{high:.2f}]" + (
                "  within noise of 1.0" if low <= 1.0 <= high else ""
            )
        lines.append(text)
    return lines


def _decode_line(s: dict[str, Any]) -> str:
    """How e2e decodes, and the model options that shape batches."""
    gop = s.get("gop")
    if s.get("decode") == "keyframes":
        text = (
            f"e2e decodes key frames only (decode: keyframes; a key frame every {gop} frames "
            f"= {gop / s['clip_fps']:g} s); naive decodes every frame"
        )
    else:
        text = "e2e and naive decode every frame (decode: all)"
    if s.get("buckets"):
        text += f"; batch buckets {s['buckets']}"
    if s.get("compile", "none") != "none":
        text += f"; compile {s['compile']}"
    return text


def _live_lines(run: dict[str, Any], s: dict[str, Any]) -> list[str]:
    """The report of a load or soak phase."""
    lat, model = run["latency_ms"], run["batch_model_ms"]
    verdict = "within" if run["p99_within_target"] else "ABOVE"
    lines = [
        f"{run['kind']}: {s['streams']} live-paced streams (realtime, loop) offering "
        f"{run['fraction_of_capacity']:g} x capacity ({run['capacity_frames_per_s']:.2f} "
        f"frames/s, {run['capacity_from']}) = {run['offered_target_frames_per_s']:.2f} frames/s "
        f"for {run['seconds']:.0f} s",
        f"  offered {run['offered']} frames ({run['offered_frames_per_s']:.2f}/s; "
        f"{run['held_back']:.0f} held back), classified {run['frames']} "
        f"({run['frames_per_s']:.2f}/s), dropped {run['dropped']} "
        f"({run['dropped_share']:.0%}; {run['dropped_in_events']} reported in events)",
        f"  latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms: {verdict} the target "
        f"{run['latency_target_ms']:.0f} ms = max_wait_ms {s['max_wait_ms']:g} + 2 x "
        f"{model['p50']:.0f} ms (median classify() per batch; {model['batches']} batches, "
        f"mean {model['mean_batch']:.1f} frames, largest {model['largest_batch']})",
    ]
    rss = run["rss_mb"]
    if rss.get("growth_pct") is not None:
        for rule in rss["rules"]:
            start, end = rule["baseline_window_s"]
            current = " (current rule)" if rule["rule"] == rss["rule"] else ""
            lines.append(
                f"  RSS {rule['baseline']:.0f} MB (median of {start:.3g}-{end:.3g} s) -> "
                f"{rule['final']:.0f} MB (last {rss['window_s']:.3g} s): "
                f"{rule['growth_pct']:+.1f} %, rule {rule['rule']}{current}"
            )
        lines.append(f"  RSS max {rss['max']:.0f} MB ({rss['samples']} samples)")
    if run["held_back"] > max(2.0, 0.05 * run["expected_offered"]):
        lines.append(
            "  the sources fell behind real time: their queues made them wait instead of "
            "dropping (a labelcast without per-config live streams), or decoding lagged"
        )
    return lines


def _others(phase: dict[str, Any]) -> str:
    """CPU share other processes (and other guests, as steal) took while a phase ran."""
    cpu = phase.get("cpu_during_phase")
    if cpu is None:
        return "n/a"
    return f"{cpu['others_share'] + cpu['steal_share']:.0%}"


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
