#!/usr/bin/env python
"""Gateway capacity: how many live 720p fixed cameras one machine holds (issue #17).

Each camera replays a *static scene* live-paced (a file source with ``realtime: true,
loop: true``: frames are released at the clip's own rate, as a camera sends them) and is
sampled at 1 fps. The scene is made here, once, from scikit-image's real photos and
cached in ``--workdir``: 60 s of 1280x720 H.264 at 15 fps with a key frame every second
(GOP 15, no B-frames, so ``decode: keyframes`` can deliver 1 fps), showing

- a still background (the "rocket" photo, cropped to 16:9) with per-frame sensor noise:
  independent Gaussian noise of sigma 2.5 grey levels on every pixel and channel, new in
  every frame;
- one region (a 320x320 box at x=800, y=160) whose content changes every 15 s, four
  times a minute: the background, then photo patches of a cat, a coffee cup and an
  astronaut pasted there;
- a passer-by (a 216x128 patch of the astronaut photo) that walks across the lower
  third of the picture, outside the region, for 20 s of every minute.

Cameras do not change in lock-step: 15 versions of the clip start 0, 1, ... 14 s into
it (made by reordering its one-second GOPs, no re-encoding), and camera *i* plays
version ``i % 15``, so the region of a fifteenth of the cameras changes in each second.
Their frames still arrive together (every source starts with the pipeline).

For each *variant* and camera count N, one run in a child process of its own: N cameras
for ``--seconds``; it reports the pictures offered (sampled by the sources), classified,
skipped (by the change gate), dropped (a live stream's full queue; for the naive loop, a
camera's second overwritten before it was classified), latency p50/p99 (capture ->
hand-off to the sink, from the events' ``latency_ms``), the process's CPU time over the
run as a share of the cores it may use, and RSS. The variants:

``naive``
    What a user writes: one OpenCV reader thread per camera, reading (decoding every
    frame) at the camera's pace and keeping its latest sampled frame; a loop that
    classifies each camera's new frame in turn, one frame at a time: transformers'
    ``BeitImageProcessorPil`` and the model in fp32 (``bench.naive_classifier``).
``fp32``
    labelcast with its defaults on a CPU: fp32 torch, every frame decoded, whole frames.
``best``
    labelcast with the best CPU settings: ONNX Runtime int8 (``--best-backend``,
    ``--best-precision``; the faster of int8 torch and ONNX Runtime int8 in
    BENCHMARKS.md's CPU tables) and ``decode: keyframes``.
``regions-gate``
    ``best`` plus the region as the only subject (``whole_frame: false``) and the change
    gate (``gate: {min_change: 0.03, max_interval_s: 60}``): unchanged pictures are not
    classified. Classified = events; skipped = the streams' counts of the pictures the
    gate skipped (the events' ``skipped`` plus those after a stream's last event);
    dropped = the streams' drops (the events' ``dropped``, plus drops after a stream's
    last event).

A camera count is *held* when, after a warm-up (``--warmup-s``, default 20 s: the first
pictures of every camera all at once, and for the gate the first picture of each region,
which is always classified; ``first_pass_s`` says how long that took), no picture was
dropped and latency p99 <= 2 s, and every camera offered all but at most 2 of its
pictures over the run (a source that cannot decode in real time falls behind instead of
dropping: a camera not held either).

Without ``--cameras`` it searches, per variant, for the most cameras held: from
``--start`` (a per-variant guess) it doubles N until a count is not held (halving
instead when the first is not), then bisects between the most held and the fewest not
held to within an eighth, at most ``--max-runs`` runs a variant. Every run is recorded.
The search assumes that more cameras never hold better than fewer; noise near the limit
can break that, which the runs show.

    python bench/cameras.py --json bench/results/cameras-cpu.json   # the search, ~1 h
    python bench/cameras.py --cameras 8 --variants best --seconds 120
    python bench/cameras.py --quick                                  # a smoke run

The JSON (schema ``labelcast.cameras/1``) carries the run's name, date, machine and
command, as ``bench/bench.py``'s does; ``bench/render.py`` renders BENCHMARKS.md's
"Gateway capacity" table from it. Without ``--model`` the model is the random-weight
BEiT-base of ``bench/bench.py`` (the compute of the real checkpoint); every figure comes
from real forward passes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # bench/bench.py: bench/ is no package

REPO = bench.REPO
SCHEMA = "labelcast.cameras/1"
# What a camera count must meet to be held.
P99_LIMIT_MS = 2000.0
# Pictures a camera may offer short of real time over a run (a source starting a
# moment after the run's clock, a sample at either end) before it counts as lagging.
SHORTFALL_PER_CAMERA = 2
# A stopped pipeline classifies what its queues hold; past this it is aborted (its
# queues were far behind: that count was not held anyway).
DRAIN_S = 15.0
VARIANT_NAMES = ("naive", "fp32", "best", "regions-gate")
# Where each variant's search starts (a guess near its capacity on two cores, so that
# few runs are spent far below it).
SEARCH_START = {"naive": 2, "fp32": 2, "best": 4, "regions-gate": 16}
GATE = {"min_change": 0.03, "max_interval_s": 60}


# --------------------------------------------------------------------------- the scene


@dataclass(frozen=True)
class Scene:
    """The static scene every camera shows; boxes are fractions of the frame."""

    size: tuple[int, int] = (720, 1280)  # (height, width)
    seconds: int = 60
    fps: int = 15
    noise_sigma: float = 2.5  # grey levels, per pixel and channel, new every frame
    background: str = "rocket"
    region: tuple[float, float, float, float] = (0.625, 0.2222, 0.25, 0.4444)  # x, y, w, h
    region_photos: tuple[str, ...] = ("chelsea", "coffee", "astronaut")
    change_every_s: int = 15
    passer: tuple[float, float] = (0.3, 0.1)  # height, width
    passer_top: float = 0.69
    passer_walk_s: float = 20.0
    versions: int = 15  # copies starting 0, 1, ... s into the clip

    @property
    def gop(self) -> int:
        """Frames between key frames: one a second, so key frames alone give 1 fps."""
        return self.fps

    def box(self, fractions: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        """A box given as fractions of the frame, in pixels (x, y, w, h)."""
        height, width = self.size
        x, y, w, h = fractions
        return round(x * width), round(y * height), round(w * width), round(h * height)

    @property
    def region_box(self) -> tuple[int, int, int, int]:
        """The changing region in pixels (x, y, w, h): 800, 160, 320, 320 at 720p."""
        return self.box(self.region)


SCENE = Scene()
# A smoke run's scene: small and short, changing every 3 s.
QUICK_SCENE = replace(
    SCENE, size=(360, 640), seconds=6, change_every_s=3, passer_walk_s=4.0, versions=3
)


def scene_frames(scene: Scene, seed: int = 0) -> Iterator[Any]:
    """Yield the scene's RGB frames (uint8, height x width x 3), one per 1/fps s."""
    import numpy as np
    from media import photo
    from skimage.transform import resize

    height, width = scene.size
    wide = photo(scene.background)
    crop = round(wide.shape[1] * height / width)  # rows of a 16:9 cut of the photo
    top = (wide.shape[0] - crop) // 2
    background = (resize(wide[top : top + crop], (height, width)) * 255).round().astype(np.uint8)
    x, y, w, h = scene.region_box
    contents = [background[y : y + h, x : x + w].copy()]
    contents += [photo(name, (h, w)) for name in scene.region_photos]
    passer_h, passer_w = round(scene.passer[0] * height), round(scene.passer[1] * width)
    person = photo("astronaut")[:, 96:416]  # the astronaut, less the sky beside him
    passer = (resize(person, (passer_h, passer_w)) * 255).round().astype(np.uint8)
    passer_y = round(scene.passer_top * height)
    rng = np.random.default_rng(seed)
    for index in range(scene.seconds * scene.fps):
        t = index / scene.fps
        image = background.copy()
        image[y : y + h, x : x + w] = contents[int(t // scene.change_every_s) % len(contents)]
        if t < scene.passer_walk_s:
            left = round(-passer_w + (width + passer_w) * t / scene.passer_walk_s)
            lo, hi = max(left, 0), min(left + passer_w, width)
            if lo < hi:
                image[passer_y : passer_y + passer_h, lo:hi] = passer[:, lo - left : hi - left]
        noise = rng.standard_normal(image.shape, dtype=np.float32) * scene.noise_sigma
        yield np.clip(image + noise, 0, 255).round().astype(np.uint8)


def encode_scene(path: Path, scene: Scene) -> Path:
    """Encode the scene as H.264: a key frame every second exactly, no B-frames."""
    import av

    height, width = scene.size
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=scene.fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # No key frames at scene cuts (they would restart the GOP count) and no B-frames
        # (so that a version can be cut and rejoined at key frames: see rotate_clip).
        stream.options = {
            "preset": "veryfast",
            "g": str(scene.gop),
            "keyint_min": str(scene.gop),
            "sc_threshold": "0",
            "bf": "0",
        }
        for image in scene_frames(scene):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def rotate_clip(source: Path, dest: Path, gops: int) -> Path:
    """Copy ``source`` starting ``gops`` GOPs in (those GOPs moved to the end): no re-encoding.

    Each GOP starts with a key frame and, without B-frames, refers to no frame outside
    itself, so GOPs can be reordered; timestamps are rewritten to run on evenly.
    """
    import av

    with av.open(str(source)) as reader:
        video = reader.streams.video[0]
        packets = [p for p in reader.demux(video) if p.size]
        groups: list[list[Any]] = []
        for packet in packets:
            if packet.is_keyframe or not groups:
                groups.append([])
            groups[-1].append(packet)
        if not groups[0][0].is_keyframe:
            raise SystemExit(f"{source}: does not start with a key frame")
        step = packets[1].pts - packets[0].pts
        first = packets[0].pts
        with av.open(str(dest), mode="w") as writer:
            out = writer.add_stream_from_template(video)
            for index, packet in enumerate(itertools.chain(*groups[gops:], *groups[:gops])):
                packet.pts = packet.dts = first + index * step
                packet.stream = out
                writer.mux(packet)
    return dest


def prepare_scene(workdir: Path, scene: Scene) -> list[Path]:
    """Make (or reuse) the scene clip and its versions; return the versions in order."""
    sys.path.insert(0, str(REPO / "tests"))
    height, width = scene.size
    stem = (
        f"scene-{width}x{height}-{scene.seconds}s-{scene.fps}fps-g{scene.gop}-"
        f"n{scene.noise_sigma:g}-c{scene.change_every_s}"
    )
    folder = workdir / "cameras"
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / f"{stem}.mp4"
    if not base.is_file():
        bench.log(f"making the scene {base} ...")
        partial = base.with_name(f".{base.stem}.{os.getpid()}.mp4")
        os.replace(encode_scene(partial, scene), base)
    if not 1 <= scene.versions <= scene.change_every_s:
        raise SystemExit("the scene's versions start a whole second apart within one period")
    versions = []
    for version in range(scene.versions):
        # Spread over one period of the region's changes, in whole seconds (GOPs).
        gops = version * scene.change_every_s // scene.versions
        path = folder / f"{stem}-s{gops}.mp4"
        if not path.is_file():
            partial = path.with_name(f".{path.stem}.{os.getpid()}.mp4")
            os.replace(rotate_clip(base, partial, gops), path)
        versions.append(path)
    return versions


# --------------------------------------------------------------------------- options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/cameras.py",
        description="How many live 720p fixed cameras one machine holds, per variant.",
    )
    parser.add_argument(
        "--variants",
        type=_variant_list,
        default=list(VARIANT_NAMES),
        help=f"comma-separated, of {', '.join(VARIANT_NAMES)} (default all)",
    )
    parser.add_argument(
        "--cameras",
        type=bench.positive_int_list("camera counts"),
        help="run these camera counts (comma-separated) instead of searching",
    )
    parser.add_argument(
        "--scene", default="static", choices=["static"], help="what the cameras show"
    )
    parser.add_argument("--seconds", type=float, help="length of each run (default 120)")
    parser.add_argument(
        "--warmup-s",
        type=float,
        help="drops and latency count from this many seconds into a run (default 20)",
    )
    parser.add_argument("--fps", type=float, default=1.0, help="sampling rate (default 1)")
    parser.add_argument("--start", type=int, help="the search's first count (default per variant)")
    parser.add_argument("--max-runs", type=int, default=8, help="runs per variant's search")
    parser.add_argument("--max-cameras", type=int, default=512, help="the search's ceiling")
    parser.add_argument(
        "--cores",
        type=int,
        help="pin each run to this many of the usable cores (default: all of them)",
    )
    parser.add_argument("--best-backend", default="onnxruntime", choices=["torch", "onnxruntime"])
    parser.add_argument("--best-precision", default="int8", choices=["fp32", "bf16", "int8"])
    parser.add_argument("--batch", type=int, default=32, help="model.batch.max_size (default 32)")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=bench.DEFAULT_MAX_WAIT_MS,
        help="model.batch.max_wait_ms",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) | auto | cuda | cuda:N")
    parser.add_argument(
        "--model", type=Path, help="checkpoint directory (default: random-weight BEiT-base)"
    )
    parser.add_argument("--workdir", type=Path, default=bench.DEFAULT_WORKDIR)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--name", help="the run's name (default: the --json file's stem)")
    # Internal: one run in a child process.
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    parser.add_argument("--settings", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--phase-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("start", "max_runs", "max_cameras", "cores", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("seconds", "fps"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name} must be positive")
    return args


def _variant_list(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANT_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"variants are {', '.join(VARIANT_NAMES)}")
    return names


def resolve_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every run needs (smaller defaults with --quick)."""
    scene = QUICK_SCENE if args.quick else SCENE
    return {
        "quick": args.quick,
        "scene": asdict(scene),
        "seconds": args.seconds or (4.0 if args.quick else 120.0),
        "warmup_s": args.warmup_s if args.warmup_s is not None else (1.0 if args.quick else 20.0),
        "sample_fps": args.fps,
        "p99_limit_ms": P99_LIMIT_MS,
        "shortfall_per_camera": SHORTFALL_PER_CAMERA,
        "cores": args.cores,
        "device": args.device,
        "batch": args.batch,
        "max_wait_ms": args.max_wait_ms,
        "best": {"backend": args.best_backend, "precision": args.best_precision},
        "gate": GATE,
    }


def variant_engine(settings: dict[str, Any], variant: str) -> dict[str, Any]:
    """Precision, backend, decoding and subjects of a variant."""
    if variant in ("naive", "fp32"):
        engine = {"precision": "fp32", "backend": "torch", "decode": "all"}
    else:
        engine = {**settings["best"], "decode": "keyframes"}
    return {**engine, "regions": variant == "regions-gate"}


# --------------------------------------------------------------------------- runs


def pin_cores(cores: int | None) -> int:
    """Keep this process on its first ``cores`` usable cores; return how many it may use."""
    usable = sorted(os.sched_getaffinity(0))
    if cores is not None and cores < len(usable):
        os.sched_setaffinity(0, usable[:cores])
        usable = usable[:cores]
    return len(usable)


def cpu_seconds() -> float:
    """CPU time this process (all its threads) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def camera_sources(settings: dict[str, Any], cameras: int) -> list[dict[str, Any]]:
    """The labelcast sources of ``cameras`` live-paced cameras of the run's variant."""
    engine = settings["engine"]
    scene = Scene(**{**settings["scene"], "size": tuple(settings["scene"]["size"])})
    clips = settings["clips"]
    sources = []
    for index in range(cameras):
        source: dict[str, Any] = {
            "id": f"cam{index}",
            "type": "file",
            "path": clips[index % len(clips)],
            "realtime": True,
            "loop": True,
            "sample": {"fps": settings["sample_fps"]},
            "decode": engine["decode"],
        }
        if engine["regions"]:
            source["whole_frame"] = False
            source["regions"] = [{"id": "gate", "box": list(scene.region_box)}]
            source["gate"] = dict(settings["gate"])
        sources.append(source)
    return sources


def phase_labelcast(settings: dict[str, Any]) -> dict[str, Any]:
    """N cameras through ``labelcast.Pipeline`` for ``seconds``: counts, latency, CPU."""
    cores = pin_cores(settings["cores"])
    import torch

    from labelcast import LabelEvent, Pipeline
    from labelcast.model.classifier import Classifier

    if settings["cores"]:
        torch.set_num_threads(cores)
    cameras, engine = settings["cameras"], settings["engine"]
    config = bench.pipeline_config({**settings, **engine}, camera_sources(settings, cameras))
    classifier = Classifier.load(config.model)
    # Warm up the batch sizes the run forms (1 up to one picture per camera), on the
    # pictures it classifies (the region's crops with regions).
    warm = bench.decode_sampled(settings["clips"], min(cameras, settings["batch"]), 1.0)
    if engine["regions"]:
        scene = Scene(**{**settings["scene"], "size": tuple(settings["scene"]["size"])})
        x, y, w, h = scene.region_box
        warm = [frame[y : y + h, x : x + w].copy() for frame in warm]
    for size in sorted({1, len(warm)}):
        classifier.classify(warm[:size])
    del warm
    batch_times, batch_sizes = bench.watch_batches(classifier)

    # (stream, captured_at, latency_ms, dropped, skipped, hand-off time)
    events: list[tuple[str, float, float, int, int, float]] = []

    def record(event: LabelEvent) -> None:
        skipped = event.skipped
        events.append(
            (
                event.stream,
                event.captured_at,
                event.latency_ms,
                event.dropped,
                skipped,
                time.time(),
            )
        )

    pipeline = Pipeline(config, on_event=record, classifier=classifier)
    started_wall, started, cpu_before = time.time(), time.perf_counter(), cpu_seconds()
    pipeline.start()
    ended_early = pipeline.wait(settings["seconds"])
    window_s = time.perf_counter() - started
    cpu_s = cpu_seconds() - cpu_before
    rss_end = bench._current_rss_mb()
    pipeline.stop()
    drained = pipeline.wait(DRAIN_S)
    if not drained:
        pipeline.abort()
        pipeline.wait(60.0)
    if ended_early:
        raise SystemExit(f"cameras: the pipeline ended before it was stopped ({cameras} cameras)")
    if pipeline.failed_streams:
        raise SystemExit(f"cameras: streams failed: {pipeline.failed_streams}")

    stats = list(pipeline.stats.values())
    # The streams count every picture the gate skipped, also those after their last
    # event; sampled frames include those whose pictures were all unchanged.
    skipped_counted = sum(sum(s.skipped.values()) for s in stats)
    skipped_in_events = sum(e[4] for e in events)
    return {
        **run_counts(
            offered=sum(s.sampled for s in stats),
            classified=len(events),
            skipped=skipped_counted,
            dropped=sum(s.dropped for s in stats),
        ),
        "skipped_in_events": skipped_in_events,
        "dropped_in_events": sum(e[3] for e in events),
        "drained": drained,
        **latency_figures(
            [(e[1], e[2], e[3]) for e in events], started_wall + settings["warmup_s"]
        ),
        "first_pass_s": first_pass_s([(e[0], e[5]) for e in events], cameras, started_wall),
        "batches": {
            "count": len(batch_sizes),
            "mean_size": sum(batch_sizes) / len(batch_sizes) if batch_sizes else None,
            "model_ms_p50": sorted(batch_times)[len(batch_times) // 2] * 1000
            if batch_times
            else None,
        },
        "decoded_frames": sum(s.decoded for s in stats),
        **usage(cpu_s, window_s, cores, rss_end),
        "precision": classifier.info.precision,
        "backend": classifier.info.backend,
    }


class NaiveCamera:
    """One camera of the naive loop: a reader thread keeps its latest sampled frame.

    The thread reads the clip with OpenCV (every frame decoded), at the clip's own
    rate from when it starts, again and again; the first frame of each 1/fps s is
    *offered*. A frame offered while the previous one still waits is the previous one's
    drop: the loop missed that camera's second.
    """

    def __init__(self, name: str, clip: str, sample_fps: float, stop: threading.Event) -> None:
        self.name = name
        self._clip = clip
        self._sample_fps = sample_fps
        self._stop = stop
        self._lock = threading.Lock()
        self._waiting: tuple[Any, float] | None = None  # (BGR frame, captured at)
        self.offered = 0
        self.dropped_at: list[float] = []  # capture times of the frames dropped
        self.failed: str | None = None
        self.thread = threading.Thread(target=self._read, name=f"reader-{name}", daemon=True)

    def take(self) -> tuple[Any, float] | None:
        """The frame waiting to be classified (BGR, capture time), if any; it is taken."""
        with self._lock:
            waiting, self._waiting = self._waiting, None
        return waiting

    def _offer(self, frame: Any, captured: float) -> None:
        with self._lock:
            if self._waiting is not None:
                self.dropped_at.append(self._waiting[1])
            self._waiting = (frame, captured)
            self.offered += 1

    def _read(self) -> None:
        import cv2

        capture = cv2.VideoCapture(self._clip)
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        origin = time.monotonic()
        index, last_slot, round_start = 0, -1, 0
        while not self._stop.is_set():
            ok, frame = capture.read()
            if not ok:
                capture.release()
                if index == round_start:  # a whole round read nothing: give up
                    self.failed = f"OpenCV read no frame of {self._clip}"
                    return
                capture, round_start = cv2.VideoCapture(self._clip), index
                continue
            delay = origin + index / fps - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            slot = math.floor(index * self._sample_fps / fps + 1e-9)
            index += 1
            if slot != last_slot:
                last_slot = slot
                self._offer(frame, time.time())
        capture.release()


def phase_naive(settings: dict[str, Any]) -> dict[str, Any]:
    """The naive loop serving N live cameras for ``seconds``: counts, latency, CPU."""
    cores = pin_cores(settings["cores"])
    import cv2
    import torch

    if settings["cores"]:
        torch.set_num_threads(cores)
    device = torch.device(settings["device"] if settings["device"] != "auto" else "cpu")
    naive = {**settings, "naive_engine": {"precision": "fp32", "backend": "torch"}}
    classify, processor = bench.naive_classifier(naive, device)
    for frame in bench.decode_sampled(settings["clips"][:1], 1, 1.0):
        classify(frame)  # the first call's set-up is not the loop's cost

    stop = threading.Event()
    cameras = [
        NaiveCamera(f"cam{i}", clip, settings["sample_fps"], stop)
        for i, clip in enumerate(
            settings["clips"][i % len(settings["clips"])] for i in range(settings["cameras"])
        )
    ]
    classified: list[tuple[str, float, float]] = []  # (camera, captured at, latency ms)
    handed_off: list[tuple[str, float]] = []  # (camera, hand-off time)

    def classify_waiting(camera: NaiveCamera) -> bool:
        waiting = camera.take()
        if waiting is None:
            return False
        frame, captured = waiting
        classify(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        now = time.time()
        classified.append((camera.name, captured, (now - captured) * 1000))
        handed_off.append((camera.name, now))
        return True

    started_wall, started, cpu_before = time.time(), time.perf_counter(), cpu_seconds()
    for camera in cameras:
        camera.thread.start()
    deadline = started + settings["seconds"]
    while time.perf_counter() < deadline:
        # Each camera's new frame in turn, one at a time; a short nap when none is new.
        if not any([classify_waiting(camera) for camera in cameras]):
            stop.wait(0.005)
    window_s = time.perf_counter() - started
    cpu_s = cpu_seconds() - cpu_before
    rss_end = bench._current_rss_mb()
    stop.set()
    for camera in cameras:
        camera.thread.join(10.0)
    failed = [f"{c.name}: {c.failed}" for c in cameras if c.failed]
    if failed:
        raise SystemExit(f"cameras: naive readers failed: {failed}")
    for camera in cameras:  # what was offered in time is still classified, as labelcast does
        classify_waiting(camera)

    drops = [(captured, 0.0, 1) for c in cameras for captured in c.dropped_at]
    latencies = [(captured, latency, 0) for _, captured, latency in classified]
    return {
        **run_counts(
            offered=sum(c.offered for c in cameras),
            classified=len(classified),
            skipped=0,
            dropped=len(drops),
        ),
        **latency_figures(latencies, started_wall + settings["warmup_s"], drops),
        "first_pass_s": first_pass_s(handed_off, settings["cameras"], started_wall),
        "loop": bench.NAIVE_LOOPS[("fp32", "torch")] + f", {processor}, one frame at a time",
        **usage(cpu_s, window_s, cores, rss_end),
        "precision": "fp32",
        "backend": "torch",
    }


def run_counts(*, offered: int, classified: int, skipped: int, dropped: int) -> dict[str, int]:
    """Pictures offered and what became of them; ``pending`` is the rest.

    ``pending``: still queued when the run ended (a stop classifies what the queues
    hold, unless they took longer than DRAIN_S), or skipped by the gate after a
    stream's last event where the streams do not count those.
    """
    return {
        "offered": offered,
        "classified": classified,
        "skipped": skipped,
        "dropped": dropped,
        "pending": offered - classified - skipped - dropped,
    }


def latency_figures(
    pictures: list[tuple[float, float, int]],
    steady_from: float,
    drops: list[tuple[float, float, int]] | None = None,
) -> dict[str, Any]:
    """Latency over the run, and latency and drops after the warm-up.

    ``pictures``: (captured at, latency ms, drops reported with it) per classified
    picture; ``drops``: more (captured at, 0, 1) of pictures dropped, where those are
    known one by one (the naive loop). Drops reported with a picture captured after
    ``steady_from`` count as after the warm-up, even if they happened before it.
    """
    import numpy as np

    def percentiles(values: list[float]) -> dict[str, float | None]:
        if not values:
            return {"p50": None, "p99": None, "max": None}
        array = np.array(values)
        return {
            "p50": float(np.percentile(array, 50)),
            "p99": float(np.percentile(array, 99)),
            "max": float(array.max()),
        }

    steady = [p for p in pictures if p[0] >= steady_from]
    steady_drops = sum(p[2] for p in steady) + sum(d[2] for d in drops or [] if d[0] >= steady_from)
    return {
        "latency_ms": percentiles([p[1] for p in pictures]),
        "steady": {
            "classified": len(steady),
            "dropped": steady_drops,
            "latency_ms": percentiles([p[1] for p in steady]),
        },
    }


def first_pass_s(handed_off: list[tuple[str, float]], cameras: int, started: float) -> float | None:
    """Seconds from the start until every camera's first picture was handed off."""
    first: dict[str, float] = {}
    for stream, at in handed_off:
        first.setdefault(stream, at)
    return max(first.values()) - started if len(first) == cameras else None


def usage(cpu_s: float, window_s: float, cores: int, rss_end_mb: float) -> dict[str, Any]:
    """CPU time over the run as cores used and as a share of the usable cores; RSS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "seconds": window_s,
        "cpu": {
            "cpu_s": cpu_s,
            "cores_used": cpu_s / window_s,
            "cores": cores,
            "share": cpu_s / window_s / cores,
        },
        "rss_mb": {"end": rss_end_mb, "peak": peak},
    }


PHASES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "labelcast": phase_labelcast,
    "naive": phase_naive,
}


# --------------------------------------------------------------------------- verdicts


def judge(run: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Why a run's camera count was not held (empty: it was held)."""
    why = []
    cameras = run["cameras"]
    steady = run["steady"]
    if steady["dropped"]:
        why.append(f"{steady['dropped']} dropped after the warm-up")
    p99 = steady["latency_ms"]["p99"]
    if p99 is None:
        why.append("nothing classified after the warm-up")
    elif p99 > settings["p99_limit_ms"]:
        why.append(f"p99 {p99:.0f} ms > {settings['p99_limit_ms']:.0f} ms")
    expected = cameras * run["seconds"] * settings["sample_fps"]
    short = expected - run["offered"]
    if short > cameras * settings["shortfall_per_camera"]:
        why.append(
            f"the cameras offered {run['offered']} of {expected:.0f} pictures: behind real time"
        )
    if run.get("drained") is False:
        why.append(f"the queues took over {DRAIN_S:g} s to drain at the end")
    return why


def search(
    measure: Callable[[int], bool], start: int, max_cameras: int, max_runs: int
) -> dict[str, Any]:
    """The most cameras held, by doubling from ``start`` (halving if it fails), then bisecting.

    ``measure(n)`` runs n cameras and says whether they were held. Stops bisecting when
    the most held and the fewest not held are within an eighth of the former (or 1),
    or after ``max_runs`` runs. Returns ``held`` (0: not even 1), ``first_failed``
    (None: the ceiling or the run budget was reached first) and ``runs`` (the counts,
    in order).
    """
    results: dict[int, bool] = {}

    def held(n: int) -> bool:
        if n not in results:
            results[n] = measure(n)
        return results[n]

    best, failed = 0, None
    n = min(start, max_cameras)
    # Up: double until a count fails, the ceiling holds, or the runs run out.
    while len(results) < max_runs:
        if not held(n):
            failed = n
            break
        best = n
        if n >= max_cameras:
            break
        n = min(2 * n, max_cameras)
    # Down, when the first count failed: halve until one holds.
    while best == 0 and failed is not None and failed > 1 and len(results) < max_runs:
        n = failed // 2
        if held(n):
            best = n
        else:
            failed = n
    # Between: bisect to within an eighth.
    while failed is not None and best and failed - best > max(1, best // 8):
        if len(results) >= max_runs:
            break
        n = (best + failed) // 2
        if held(n):
            best = n
        else:
            failed = n
    return {"held": best, "first_failed": failed, "runs": list(results)}


# --------------------------------------------------------------------------- the run


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.phase is not None:
        return bench.run_child(PHASES[args.phase], args.phase, args.settings, args.phase_out)

    sys.path.insert(0, str(REPO))
    settings = resolve_settings(args)
    if args.cores:
        # The children's thread pools (OpenMP: torch; ONNX Runtime) size themselves by it.
        os.environ["OMP_NUM_THREADS"] = str(args.cores)
    started_at = time.time()
    cpu_before = bench.read_cpu_times()
    machine = bench.machine_info()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        model_dir = args.model.resolve()
        if not (model_dir / "config.json").is_file():
            raise SystemExit(f"--model {args.model}: not a checkpoint directory (no config.json)")
    else:
        model_dir = bench.prepare_model(workdir)
    scene = Scene(**{**settings["scene"], "size": tuple(settings["scene"]["size"])})
    settings["clips"] = [str(clip) for clip in prepare_scene(workdir, scene)]
    settings["model_dir"] = str(model_dir)

    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="labelcast-cameras-") as scratch_name:
        scratch = Path(scratch_name)
        for variant in args.variants:
            variants[variant] = run_variant(settings, variant, scratch, args)

    machine["load_average_at_end"] = list(os.getloadavg())
    machine["cpu_during_run"] = bench.cpu_accounting(
        cpu_before, bench.read_cpu_times(), bench.own_cpu_seconds()
    )
    naive_held = variants.get("naive", {}).get("held")
    arguments = list(sys.argv[1:] if argv is None else argv)
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "name": args.name or (args.json.stem if args.json is not None else "cameras"),
        "date": time.strftime("%Y-%m-%d", time.gmtime(started_at)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "command": bench.command_line(arguments, Path(__file__)),
        "argv": arguments,
        "machine": machine,
        "model": bench.describe_model(model_dir, random_weights=args.model is None),
        "settings": {
            **{k: v for k, v in settings.items() if k not in ("clips", "model_dir")},
            "search": {"max_runs": args.max_runs, "max_cameras": args.max_cameras},
        },
        "clips": settings["clips"],
        "variants": variants,
        # Cameras held over the naive loop's (None where it held none or did not run).
        "over_naive": {
            name: v["held"] / naive_held if naive_held else None
            for name, v in variants.items()
            if name != "naive"
        },
    }
    print(report(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        bench.log(f"wrote {args.json}")
    return 0


def run_variant(
    settings: dict[str, Any], variant: str, scratch: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Run a variant's camera counts (``--cameras``) or its search; every run, and the most held."""
    engine = variant_engine(settings, variant)
    runs: dict[int, dict[str, Any]] = {}

    def measure(cameras: int) -> bool:
        run = {**settings, "variant": variant, "engine": engine, "cameras": cameras}
        label = f"{variant}-{cameras}"
        path = scratch / f"settings-{label}.json"
        path.write_text(json.dumps(run), encoding="utf-8")
        phase = "naive" if variant == "naive" else "labelcast"
        result = bench.run_phase(phase, path, scratch, label=label, script=Path(__file__))
        result["cameras"] = cameras
        result["why_not_held"] = judge(result, settings)
        result["held"] = not result["why_not_held"]
        runs[cameras] = result
        bench.log(run_line(variant, result))
        return bool(result["held"])

    if args.cameras:
        order = list(dict.fromkeys(args.cameras))  # each count once
        held = [n for n in order if measure(n)]
        failed = [n for n in order if not runs[n]["held"]]
        found = {"held": max(held, default=0), "first_failed": min(failed, default=None)}
    else:
        start = args.start or SEARCH_START[variant]
        found = search(measure, start, args.max_cameras, args.max_runs)
        order = found["runs"]
    return {
        "engine": engine,
        "searched": not args.cameras,
        "held": found["held"],
        "first_failed": found["first_failed"],
        "runs": [runs[n] for n in order],
    }


def run_line(variant: str, run: dict[str, Any]) -> str:
    """One run in a line: counts, p99 after the warm-up, CPU, and whether it was held."""
    p99 = run["steady"]["latency_ms"]["p99"]
    return (
        f"{variant:>12} x{run['cameras']:<4} offered {run['offered']:5}, classified "
        f"{run['classified']:5}, skipped {run['skipped']:5}, dropped {run['dropped']:4} "
        f"({run['steady']['dropped']} after warm-up), p99 "
        + ("-" if p99 is None else f"{p99:.0f} ms")
        + f", CPU {run['cpu']['share']:.0%} of {run['cpu']['cores']} cores, RSS "
        f"{run['rss_mb']['peak']:.0f} MB: "
        + ("held" if run["held"] else "not held (" + "; ".join(run["why_not_held"]) + ")")
    )


def report(results: dict[str, Any]) -> str:
    """The runs and the most cameras each variant held, as printed."""
    s, m = results["settings"], results["machine"]
    scene = s["scene"]
    height, width = scene["size"]
    lines = [
        "labelcast gateway capacity"
        + (" (--quick smoke run: figures mean little)" if s["quick"] else ""),
        f"machine: {m['cpu_model']}, {m['usable_cores']} usable cores"
        + (f", each run pinned to {s['cores']}" if s["cores"] else ""),
        f"scene: {width}x{height} H.264 at {scene['fps']} fps, a key frame every second, "
        f"noise sigma {scene['noise_sigma']:g}; cameras live-paced, sampled at "
        f"{s['sample_fps']:g} fps, {s['seconds']:g} s a run; held: 0 drops and p99 <= "
        f"{s['p99_limit_ms']:.0f} ms after {s['warmup_s']:g} s",
        "",
    ]
    for name, variant in results["variants"].items():
        engine = variant["engine"]
        lines.append(
            f"{name}: {engine['precision']} {engine['backend']}, decode {engine['decode']}"
            + (", one region + change gate" if engine["regions"] else "")
        )
        lines += ["  " + run_line(name, run) for run in variant["runs"]]
        ratio = results["over_naive"].get(name)
        lines.append(
            f"  held: {variant['held']} cameras"
            + ("" if ratio is None else f" ({ratio:.1f} x the naive loop's)")
        )
    cpu = m.get("cpu_during_run")
    if cpu is not None:
        lines.append(
            f"CPU during the run: benchmark {cpu['benchmark_share']:.0%}, other processes "
            f"{cpu['others_share']:.0%}, steal {cpu['steal_share']:.0%}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
