"""Measure the decode CPU that ``decode: keyframes`` saves: same clip, full vs key frames only.

Encodes 20 s H.264 clips (a slow pan across real photos, so every frame differs as a
camera's would), decodes each through labelcast's file source both ways, sampling
1 fps, and prints the process CPU seconds (all threads; best of 3). Run from the
repository root: ``.venv/bin/python scripts/keyframes_cpu.py`` (needs the test extras).

``--json bench/results/NAME.json`` also writes the figures with the run's name, date,
machine and command, as ``bench/bench.py`` does: ``bench/render.py`` renders
BENCHMARKS.md's key-frame table from it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from media import photo

from labelcast.sources.file import FileSource, FileSourceConfig

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "labelcast.keyframes/1"
SECONDS, FPS, SAMPLE_FPS = 20, 30, 1
# (height, width) and GOP (frames) of each clip: 720p with a key frame every 1 and 2 s, and
# a small clip, where decoding costs less next to the rest.
CLIPS = (((720, 1280), 30), ((720, 1280), 60), ((240, 320), 30))


def pan_clip(path: Path, size: tuple[int, int], gop: int, seconds: float = SECONDS) -> Path:
    """Encode ``seconds`` of a pan across two photos at ``size`` (height, width), GOP ``gop``."""
    height, width = size
    strip = np.concatenate(
        [photo("astronaut", (height, width)), photo("chelsea", (height, width))], axis=1
    )
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(gop), "keyint_min": str(gop)}
        stream.options["sc_threshold"] = "0"  # key frames only where the GOP says
        for index in range(round(seconds * FPS)):
            x = (index * 3) % width
            picture = np.ascontiguousarray(strip[:, x : x + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                output.mux(packet)
        for packet in stream.encode():
            output.mux(packet)
    return path


def cpu_seconds(path: Path, decode: str, repeat: int = 3) -> tuple[float, int]:
    """Best-of-``repeat`` process CPU seconds to read the clip, and frames decoded."""
    best, decoded = float("inf"), 0
    for _ in range(repeat):
        config = FileSourceConfig(id="m", path=str(path), decode=decode, sample={"fps": SAMPLE_FPS})
        start = time.process_time()
        with FileSource(config) as source:
            for _frame in source.frames():
                pass
            decoded = source.frames_decoded
        best = min(best, time.process_time() - start)
    return best, decoded


def bench_module() -> ModuleType:
    """bench/bench.py as a module: its machine description and CPU accounting."""
    spec = importlib.util.spec_from_file_location("labelcast_bench", REPO / "bench" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    """Print one line per clip: CPU seconds both ways and the saving; --json writes them."""
    parser = argparse.ArgumentParser(prog="scripts/keyframes_cpu.py", description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="decodes per clip and mode (best)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--name", help="the run's name (default: the --json file's stem)")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 s clips, one decode each"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    seconds, repeat = (2, 1) if args.quick else (SECONDS, args.repeat)
    bench = bench_module()
    started_at = time.time()
    machine = bench.machine_info()
    cpu_before = bench.read_cpu_times()
    clips: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for size, gop in CLIPS:
            path = pan_clip(Path(folder) / f"{size[0]}p-g{gop}.mp4", size, gop, seconds)
            full, full_frames = cpu_seconds(path, "all", repeat)
            keys, key_frames = cpu_seconds(path, "keyframes", repeat)
            print(
                f"{size[1]}x{size[0]} {seconds} s @ {FPS} fps, key frame every {gop}: "
                f"all {full:.2f} CPU s ({full_frames} frames), "
                f"keyframes {keys:.2f} CPU s ({key_frames} frames), "
                f"saving {100 * (1 - keys / full):.0f} %"
            )
            clips.append(
                {
                    "width": size[1],
                    "height": size[0],
                    "gop": gop,
                    "fps": FPS,
                    "all": {"cpu_s": full, "frames": full_frames},
                    "keyframes": {"cpu_s": keys, "frames": key_frames},
                    "saving_pct": 100 * (1 - keys / full),
                }
            )
    if args.json is None:
        return
    # The process's own CPU time: this script decodes in-process (no child phases).
    times = os.times()
    machine["cpu_during_run"] = bench.cpu_accounting(
        cpu_before, bench.read_cpu_times(), times.user + times.system
    )
    arguments = list(sys.argv[1:] if argv is None else argv)
    results = {
        "schema": SCHEMA,
        "name": args.name or args.json.stem,
        "date": time.strftime("%Y-%m-%d", time.gmtime(started_at)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "command": bench.command_line(arguments, Path(__file__)),
        "argv": arguments,
        "machine": machine,
        "quick": args.quick,
        "seconds": seconds,
        "fps": FPS,
        "sample_fps": SAMPLE_FPS,
        "repeat": repeat,
        "clips": clips,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
