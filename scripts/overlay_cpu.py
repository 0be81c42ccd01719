"""Measure the overlay sink's CPU per 720p frame: drawing, H.264 files, all-frames mode.

Decodes a 10 s 1280x720 30 fps clip of real photos once, then feeds its frames to
``OverlaySink`` the way the runner does (label events with their frames; with
``mode: all-frames`` the unsampled frames too, still in the decoder's pixel format) and
prints the sink's process CPU seconds per frame written (best of 3):

- ``draw``: the banner only (``draw_overlay``), per frame;
- ``sampled``: ``mode: sampled``, 2 of 30 frames a second written (draw + encode);
- ``all-frames``: every frame written (colour conversion + draw + encode);
- ``preview JPEG``: one JPEG of a picture as the live preview encodes it (quality 80), done
  at most ``max_fps`` times a second per watched stream, whatever the number of viewers.

Run from the repository root: ``.venv/bin/python scripts/overlay_cpu.py [--preset P]``.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import av
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from media import make_clip

from labelcast.frames import Frame, Label, LabelEvent, ModelInfo, UnsampledFrame
from labelcast.sinks.overlay import OverlaySink, OverlaySinkConfig, draw_overlay

SECONDS, FPS, EVERY = 10, 30, 15  # sampled: every 15th frame = 2 fps


def label_event(seq: int, pts: float) -> LabelEvent:
    """Return a label event like the classifier's, for drawing."""
    labels = (Label("tabby, tabby cat", 0.81, 281), Label("tiger cat", 0.12, 282))
    return LabelEvent(
        "bench", "r", "cam", seq, pts, 1.7e9 + pts, 5.0, labels, ModelInfo("m", None, "fp32"), 0
    )


def best_cpu(run: Callable[[], int]) -> float:
    """Process CPU seconds per unit ``run`` returns, best of 3."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        units = run()
        best = min(best, (time.process_time() - start) / units)
    return best


def main() -> None:
    """Print the CPU figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="veryfast", help="x264 preset (default veryfast)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = make_clip(folder / "clip.mp4", seconds=SECONDS, fps=FPS, size=(720, 1280))
        with av.open(str(clip)) as container:
            pictures = list(container.decode(video=0))
        frames = [
            Frame("cam", i, float(p.time), 0.0, p.to_ndarray(format="rgb24"))
            for i, p in enumerate(pictures)
        ]

        def draw() -> int:
            for frame in frames[:60]:
                draw_overlay(frame.image, label_event(1, frame.pts))
            return 60

        def jpeg() -> int:
            for frame in frames[:60]:
                Image.fromarray(frame.image).save(io.BytesIO(), format="JPEG", quality=80)
            return 60

        def feed(mode: str) -> Callable[[], int]:
            def run() -> int:
                output = str(folder / mode / "{stream}" / "{date}.mp4")
                config = OverlaySinkConfig(output=output, mode=mode, preset=args.preset)
                sink = OverlaySink(config)
                written, after = 0, -1
                for index, (frame, picture) in enumerate(zip(frames, pictures, strict=True)):
                    if index % EVERY == 0:
                        sink.send(label_event(index // EVERY + 1, frame.pts), frame)
                        after, written = index, written + 1
                    elif mode == "all-frames":
                        sink.send_unsampled(
                            UnsampledFrame("cam", index, frame.pts, 0.0, after, picture)
                        )
                        written += 1
                sink.close()
                return written

            return run

        print(f"1280x720, x264 preset {args.preset}; CPU ms per frame written (best of 3)")
        print(f"  draw only:   {best_cpu(draw) * 1000:6.1f}")
        print(f"  preview JPEG:{best_cpu(jpeg) * 1000:6.1f}  (quality 80)")
        print(f"  sampled:     {best_cpu(feed('sampled')) * 1000:6.1f}  (draw + encode)")
        print(
            f"  all-frames:  {best_cpu(feed('all-frames')) * 1000:6.1f}  (convert + draw + encode)"
        )


if __name__ == "__main__":
    main()
