"""Measure the decode CPU that ``decode: keyframes`` saves: same clip, full vs key frames only.

Encodes 20 s H.264 clips (a slow pan across real photos, so every frame differs as a
camera's would), decodes each through labelcast's file source both ways, sampling
1 fps, and prints the process CPU seconds (all threads; best of 3). Run from the
repository root: ``.venv/bin/python scripts/keyframes_cpu.py`` (needs the test extras).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from media import photo

from labelcast.sources.file import FileSource, FileSourceConfig

SECONDS, FPS = 20, 30


def pan_clip(path: Path, size: tuple[int, int], gop: int) -> Path:
    """Encode a pan across two photos at ``size`` (height, width), a key frame every ``gop``."""
    height, width = size
    strip = np.concatenate(
        [photo("astronaut", (height, width)), photo("chelsea", (height, width))], axis=1
    )
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "g": str(gop), "keyint_min": str(gop)}
        stream.options["sc_threshold"] = "0"  # key frames only where the GOP says
        for index in range(SECONDS * FPS):
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
        config = FileSourceConfig(id="m", path=str(path), decode=decode, sample={"fps": 1})
        start = time.process_time()
        with FileSource(config) as source:
            for _frame in source.frames():
                pass
            decoded = source.frames_decoded
        best = min(best, time.process_time() - start)
    return best, decoded


def main() -> None:
    """Print one line per clip: CPU seconds both ways and the saving."""
    with tempfile.TemporaryDirectory() as folder:
        for size, gop in (((720, 1280), 30), ((720, 1280), 60), ((240, 320), 30)):
            path = pan_clip(Path(folder) / f"{size[0]}p-g{gop}.mp4", size, gop)
            full, full_frames = cpu_seconds(path, "all")
            keys, key_frames = cpu_seconds(path, "keyframes")
            print(
                f"{size[1]}x{size[0]} {SECONDS} s @ {FPS} fps, key frame every {gop}: "
                f"all {full:.2f} CPU s ({full_frames} frames), "
                f"keyframes {keys:.2f} CPU s ({key_frames} frames), "
                f"saving {100 * (1 - keys / full):.0f} %"
            )


if __name__ == "__main__":
    main()
