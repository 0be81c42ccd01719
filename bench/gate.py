#!/usr/bin/env python
"""The change gate's cost and noise floor, beside the decoding it is meant to save.

Usage: ``.venv/bin/python bench/gate.py --json bench/results/gate-cpu.json``

For 720p and 1080p it encodes a still scene made from a real photo (scikit-image's
rocket) with fresh Gaussian sensor noise in every frame, as H.264, and measures per
frame, side by side in one run:

- ``decode_ms``: PyAV decoding a frame and converting it to RGB (what a source does for
  every sampled frame);
- ``gate_ms``: the gate's work on that frame (``thumbnail`` + ``changed_share``);

and the share of changed cells (``changed_share``) the gate sees between each frame and
the first one for: sensor noise (sigma 2.5 and 6 grey levels), slow light drift (the
whole scene 0.5 grey levels brighter every frame, 30 levels in 60 frames) and an
object covering 1, 2 and 5% of the frame. The noise floor is the largest share seen
without a real change; ``min_change`` (default 0.03) must sit well above it and below
what a real change gives.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # bench/bench.py: bench/ is no package
from labelcast.pipeline.gate import changed_share, thumbnail

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}
FRAMES = 60


def still(size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """The rocket photo, cut to 16:9 and resized to ``size`` (height, width)."""
    from media import photo

    return photo("rocket", size).astype(np.float32)


def frames(
    background: npt.NDArray[np.float32],
    *,
    sigma: float,
    drift_per_frame: float = 0.0,
    object_share: float = 0.0,
    seed: int = 0,
) -> Iterator[npt.NDArray[np.uint8]]:
    """The scene with noise, optional drift, and from frame 1 on an optional object."""
    from media import photo

    rng = np.random.default_rng(seed)
    height, width = background.shape[:2]
    side = int((object_share * height * width) ** 0.5)
    thing = photo("astronaut", (side, side)).astype(np.float32) if side else None
    for index in range(FRAMES):
        image = background + index * drift_per_frame
        if thing is not None and index > 0:
            top, left = height // 3, width // 3
            image = image.copy()
            image[top : top + side, left : left + side] = thing
        noisy = image + rng.standard_normal(image.shape, dtype=np.float32) * sigma
        yield np.clip(noisy, 0, 255).round().astype(np.uint8)


def encode(path: Path, pictures: Iterator[npt.NDArray[np.uint8]], fps: int = 15) -> Path:
    """Encode pictures as H.264 (veryfast, a key frame every second), as a camera would."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(fps)}
        for index, image in enumerate(pictures):
            if index == 0:
                stream.height, stream.width = image.shape[:2]
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode(path: Path) -> tuple[list[npt.NDArray[np.uint8]], list[float]]:
    """Decode a clip to RGB; return the frames and the milliseconds each took."""
    import av

    pictures, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoder = container.decode(stream)
        while True:
            began = time.perf_counter()
            try:
                frame = next(decoder)
            except StopIteration:
                break
            image = frame.to_ndarray(format="rgb24")
            times.append((time.perf_counter() - began) * 1000.0)
            pictures.append(image)
    return pictures, times


def gate_times(pictures: Sequence[npt.NDArray[np.uint8]]) -> list[float]:
    """Milliseconds the gate takes per picture: its thumbnail and the comparison."""
    reference = thumbnail(pictures[0])
    times = []
    for picture in pictures:
        began = time.perf_counter()
        changed_share(reference, thumbnail(picture))
        times.append((time.perf_counter() - began) * 1000.0)
    return times


def shares(pictures: Sequence[npt.NDArray[np.uint8]]) -> list[float]:
    """The share of changed cells of each picture against the first."""
    reference = thumbnail(pictures[0])
    return [changed_share(reference, thumbnail(picture)) for picture in pictures[1:]]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Min, median and max, rounded."""
    return {
        "min": round(min(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def measure(name: str, size: tuple[int, int], workdir: Path) -> dict[str, Any]:
    """All figures of one frame size."""
    background = still(size)
    cases: dict[str, dict[str, Any]] = {
        "noise 2.5": {"sigma": 2.5},
        "noise 6": {"sigma": 6.0},
        "drift 0.5/frame": {"sigma": 2.5, "drift_per_frame": 0.5},
        "object 1%": {"sigma": 2.5, "object_share": 0.01},
        "object 2%": {"sigma": 2.5, "object_share": 0.02},
        "object 5%": {"sigma": 2.5, "object_share": 0.05},
    }
    result: dict[str, Any] = {"size": f"{size[1]}x{size[0]}", "changed_share": {}}
    for case, options in cases.items():
        clip = encode(
            workdir / f"{name}-{case.replace(' ', '_').replace('/', '_')}.mp4",
            frames(background, **options),
        )
        pictures, decode_ms = decode(clip)
        result["changed_share"][case] = spread(shares(pictures))
        if case == "noise 2.5":
            # Side by side: the same frames decoded, then gated (warm caches for both).
            gate_ms = gate_times(pictures)
            result["decode_ms"] = spread(decode_ms[1:])
            result["gate_ms"] = spread(gate_ms[1:])
            ratio = statistics.median(decode_ms[1:]) / statistics.median(gate_ms[1:])
            result["decode_over_gate"] = round(ratio, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; print the figures; write them as JSON with ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        sizes = {name: measure(name, size, Path(folder)) for name, size in SIZES.items()}
    results = {
        "schema": "labelcast.gate-bench/1",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/gate.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": bench.machine_info(),
        "frames": FRAMES,
        "sizes": sizes,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
