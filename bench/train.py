#!/usr/bin/env python
"""How long ``labelcast train`` takes, end to end, on the beit-base architecture.

Usage: ``.venv/bin/python bench/train.py --json bench/results/train-cpu.json``

It makes a base checkpoint of the microsoft/beit-base-patch16-224 architecture with random
weights (``bench.py``'s ``prepare_model``: the same compute as the real checkpoint, nothing
downloaded) and a data folder of 2 labels x 40 pictures (``--per-label``), 1280x720 JPEGs
cut from two of scikit-image's photos with random crops, flips and noise
(``tests/media.py``). Then it runs ``labelcast train DATA -o OUT --base BASE --json`` as a
user would, in a fresh interpreter, and times it from start to exit: imports, loading the
base, decoding and preprocessing every picture, the forward passes, training the head and
writing the checkpoint. Making the base and the pictures is not counted.

The issue's target (#18): under 3 minutes on a 2-core CPU. With random weights the
held-out accuracy means nothing; the time is what this measures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench  # bench/bench.py: bench/ is no package

SCHEMA = "labelcast.train-bench/1"
TARGET_S = 180.0
PHOTOS = {"cat": "chelsea", "coffee": "coffee"}
PICTURE_SIZE = (720, 1280)


def measure(workdir: Path, per_label: int) -> dict[str, object]:
    """Make the base and the pictures in ``workdir``, run train once, return the figures."""
    from media import make_labelled_pictures

    base = bench.prepare_model(workdir)
    data = workdir / "data"
    if not data.exists():
        make_labelled_pictures(data, PHOTOS, per_label, size=PICTURE_SIZE)
    out = workdir / "trained"
    command = [sys.executable, "-m", "labelcast", "train", str(data), "-o", str(out)]
    command += ["--base", str(base), "--device", "cpu", "--force", "--json"]
    load = os.getloadavg()
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall_s = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"labelcast train failed ({result.returncode}):\n{result.stderr}")
    report = json.loads(result.stdout)
    return {
        "base": bench.describe_model(base, random_weights=True),
        "labels": len(PHOTOS),
        "pictures_per_label": per_label,
        "picture_size": f"{PICTURE_SIZE[1]}x{PICTURE_SIZE[0]} JPEG",
        "train_command": " ".join(["labelcast", *command[3:]]),
        "load_average_before": [round(x, 2) for x in load],
        "wall_s": round(wall_s, 2),
        "target_s": TARGET_S,
        "under_target": wall_s < TARGET_S,
        "train_seconds": report["seconds"],
        "holdout_top1_pct": report["holdout_top1_pct"],
        "epochs": report["epochs"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; print the figures; write them as JSON with ``--json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--per-label", type=int, default=40, help="pictures per label (40)")
    parser.add_argument(
        "--workdir", type=Path, help="keep the base and pictures here, to reuse (default: temp)"
    )
    args = parser.parse_args(argv)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        figures = measure(args.workdir, args.per_label)
    else:
        with tempfile.TemporaryDirectory(prefix="labelcast-train-bench-") as folder:
            figures = measure(Path(folder), args.per_label)
    results = {
        "schema": SCHEMA,
        "name": "train-cpu",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python bench/train.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": bench.machine_info(),
        **figures,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
