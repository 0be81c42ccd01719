#!/usr/bin/env python
"""What live-preview viewers cost classification: events/s with 0, 8, ... MJPEG viewers.

One run measures every viewer count on the same machine, with the same clip and model,
alternating them (0, 8, 0, 8, ...: ``--rounds``) so that a change in the machine's load
hits each alike. Each phase is a real ``labelcast run`` process classifying a looped
1280x720 H.264 clip, every frame, as fast as it can (a file source never drops: the
classifier sets the pace), with an overlay sink serving the preview
(``max_clients: 64``) and the operations endpoint serving ``/metrics``. Once it has
warmed up, this script opens the viewers (MJPEG, ``/stream/cam.mjpg``; sockets read as
fast as they come, like a browser on the same machine) and measures, over ``--seconds``:

- ``events_per_s``: classification rate (``labelcast_frames_classified_total``);
- ``cpu_cores``: the labelcast process's CPU time per second;
- ``rss_mb``: its resident memory (median and peak of samples every 0.25 s), and its
  ``growth`` over the same process's RSS just before the viewers came (comparing
  processes is no use: their baselines differ by tens of MB from run to run);
- ``jpeg_encodes_per_s`` and ``pictures_per_s``: JPEGs the preview encoded and pictures
  it was given (``/api/streams``); ``parts_per_viewer_per_s``: pictures each viewer got;
- ``cpu``: how the machine's CPU time went (this benchmark, other processes, idle).

Without ``--model`` the model is the tests' tiny random BEiT (``tests/conftest.py``),
so that the pipeline runs fast and the preview's share of the work shows; ``--model``
takes a local checkpoint directory. ``--tree LABEL=DIR`` (repeatable) runs labelcast from
another source tree too (e.g. a checkout of an older commit), alternating with the others
phase by phase, to compare versions side by side.

    .venv/bin/python bench/preview_viewers.py --json bench/results/preview_viewers.json
    .venv/bin/python bench/preview_viewers.py --viewers 0,8,50 --rounds 3 --seconds 20
    .venv/bin/python bench/preview_viewers.py --tree before=/tmp/old-checkout --tree after=.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from bench import cpu_accounting, machine_info, read_cpu_times  # noqa: E402

SCHEMA = "labelcast.bench.preview_viewers/1"
BOUNDARY = b"--labelcastframe"
WARMUP_EVENTS = 40
WARMUP_S = 3.0


def parse_args() -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", default="0,8", help="viewer counts (default 0,8)")
    parser.add_argument("--rounds", type=int, default=2, help="times each count runs")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds a phase")
    parser.add_argument("--model", help="local checkpoint directory (default: tiny random)")
    parser.add_argument("--workdir", type=Path, help="where the clip and model are made")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="LABEL=DIR",
        help="run labelcast from this source tree (repeatable; default: this repository)",
    )
    return parser.parse_args()


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Viewer:
    """An MJPEG viewer on a thread: reads as fast as pictures come and counts them."""

    def __init__(self, url_host: str, port: int, stream: str) -> None:
        self.parts = 0
        self._sock = socket.create_connection((url_host, port), timeout=30)
        self._sock.sendall(f"GET /stream/{stream}.mjpg HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="bench-viewer", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # Counted in place, without copying what is read: this process shares the machine.
        buffer = bytearray(1 << 18)
        keep = len(BOUNDARY) - 1
        tail = b""
        try:
            while not self._stop.is_set():
                size = self._sock.recv_into(buffer)
                if size == 0:
                    return
                self.parts += buffer.count(BOUNDARY, 0, size)
                # A boundary split between two reads.
                self.parts += (tail + bytes(buffer[: min(keep, size)])).count(BOUNDARY)
                tail = bytes(buffer[max(0, size - keep) : size])
        except OSError:
            return

    def close(self) -> None:
        """Stop reading and hang up."""
        self._stop.set()
        self._sock.close()
        self._thread.join(10)


def classified(metrics_url: str) -> float:
    """The labelcast process's classified frames so far (from /metrics)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("labelcast_frames_classified_total{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def preview_counts(preview_url: str) -> tuple[int, int | None]:
    """The pictures given to the preview, and JPEGs it encoded (None: an older labelcast
    that does not count them), from /api/streams."""
    with urllib.request.urlopen(preview_url + "api/streams", timeout=10) as response:
        entry = json.load(response)[0]
    encodes = entry.get("jpeg_encodes")
    return int(entry["frames"]), None if encodes is None else int(encodes)


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_rss_mb(pid: int) -> float:
    """The process's resident memory in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_config(folder: Path, model: str, clip: Path, preview: int, ops: int) -> Path:
    """The pipeline every phase runs: one looped clip, an overlay preview, /metrics."""
    config = {
        "name": "bench",
        "model": {"id": model, "device": "cpu"},
        "sources": [
            {"id": "cam", "type": "file", "path": str(clip), "loop": True, "sample": {"every": 1}}
        ],
        "sinks": [
            {"type": "overlay", "preview": {"bind": f"127.0.0.1:{preview}", "max_clients": 64}}
        ],
        "server": {"bind": f"127.0.0.1:{ops}"},
        "log": {"level": "WARNING"},
    }
    path = folder / f"pipeline-{preview}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def wait_for(what: str, check: Any, timeout: float, process: subprocess.Popen[bytes]) -> None:
    """Poll ``check()`` until true; fail if the process exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"labelcast exited ({process.returncode}) while waiting for {what}")
        try:
            if check():
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.25)
    raise SystemExit(f"timed out waiting for {what}")


def phase(
    tree: Path, folder: Path, model: str, clip: Path, viewers: int, seconds: float
) -> dict[str, Any]:
    """Run labelcast (from source ``tree``) with ``viewers`` preview viewers; measure it."""
    preview_port, ops_port = free_port(), free_port()
    config = write_config(folder, model, clip, preview_port, ops_port)
    metrics_url = f"http://127.0.0.1:{ops_port}/metrics"
    preview_url = f"http://127.0.0.1:{preview_port}/"
    process = subprocess.Popen(
        [sys.executable, "-m", "labelcast", "run", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tree,  # `python -m` imports labelcast from the working directory first
    )
    opened: list[Viewer] = []
    try:
        wait_for("warm-up", lambda: classified(metrics_url) >= WARMUP_EVENTS, 300, process)
        time.sleep(WARMUP_S)  # the allocators reach their working set
        rss_without_viewers = process_rss_mb(process.pid)
        opened = [Viewer("127.0.0.1", preview_port, "cam") for _ in range(viewers)]
        wait_for("viewers", lambda: all(v.parts > 0 for v in opened), 60, process)
        machine_before, ours_before = read_cpu_times(), _own_and_child_cpu(process.pid)
        events_before, (pictures_before, encodes_before) = (
            classified(metrics_url),
            preview_counts(preview_url),
        )
        parts_before = [v.parts for v in opened]
        cpu_before, started = process_cpu_s(process.pid), time.monotonic()
        rss: list[float] = []
        while time.monotonic() - started < seconds:
            rss.append(process_rss_mb(process.pid))
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        cpu_after = process_cpu_s(process.pid)
        events_after, (pictures_after, encodes_after) = (
            classified(metrics_url),
            preview_counts(preview_url),
        )
        parts_after = [v.parts for v in opened]
        machine_after, ours_after = read_cpu_times(), _own_and_child_cpu(process.pid)
    finally:
        for viewer in opened:
            viewer.close()
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
    if process.returncode not in (0, -signal.SIGTERM):
        raise SystemExit(f"labelcast failed ({process.returncode}): {stderr.decode()[-2000:]}")
    viewer_rates = [(b - a) / elapsed for a, b in zip(parts_before, parts_after, strict=True)]
    encodes = None
    if encodes_before is not None and encodes_after is not None:
        encodes = round((encodes_after - encodes_before) / elapsed, 2)
    return {
        "viewers": viewers,
        "seconds": round(elapsed, 3),
        "events": events_after - events_before,
        "events_per_s": round((events_after - events_before) / elapsed, 2),
        "cpu_cores": round((cpu_after - cpu_before) / elapsed, 3),
        "cpu_ms_per_event": round(
            1000 * (cpu_after - cpu_before) / (events_after - events_before), 2
        ),
        "rss_mb": {
            "before_viewers": round(rss_without_viewers, 1),
            "median": round(statistics.median(rss), 1),
            "peak": round(max(rss), 1),
            # Within one process: the baseline differs by tens of MB from run to run.
            "growth": round(statistics.median(rss) - rss_without_viewers, 1),
        },
        "pictures_per_s": round((pictures_after - pictures_before) / elapsed, 2),
        "jpeg_encodes_per_s": encodes,
        "parts_per_viewer_per_s": [round(rate, 2) for rate in viewer_rates],
        "cpu": cpu_accounting(machine_before, machine_after, ours_after - ours_before),
    }


def _own_and_child_cpu(pid: int) -> float:
    """CPU seconds of this script (the viewers) and of the running labelcast process."""
    own = os.times()
    return own.user + own.system + process_cpu_s(pid)


def summarise(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Median figures per tree and viewer count, and the change against no viewers."""
    groups: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for result in phases:
        groups.setdefault(result["tree"], {}).setdefault(result["viewers"], []).append(result)
    summary: dict[str, Any] = {}
    for tree, by_count in groups.items():
        figures: dict[str, Any] = {}
        for count, results in sorted(by_count.items()):
            encodes = [r["jpeg_encodes_per_s"] for r in results]
            figures[str(count)] = {
                "events_per_s": statistics.median(r["events_per_s"] for r in results),
                "cpu_ms_per_event": statistics.median(r["cpu_ms_per_event"] for r in results),
                "rss_mb_median": statistics.median(r["rss_mb"]["median"] for r in results),
                "rss_growth_mb": statistics.median(r["rss_mb"]["growth"] for r in results),
                "jpeg_encodes_per_s": None if None in encodes else statistics.median(encodes),
                "others_share": statistics.median(
                    (r["cpu"] or {}).get("others_share", 0.0) for r in results
                ),
            }
        base = figures.get("0")
        if base is not None:
            for entry in figures.values():
                entry["events_change_pct"] = round(
                    100 * (entry["events_per_s"] / base["events_per_s"] - 1), 1
                )
                entry["rss_change_mb"] = round(entry["rss_mb_median"] - base["rss_mb_median"], 1)
        summary[tree] = figures
    return summary


def parse_trees(specs: list[str]) -> dict[str, Path]:
    """``LABEL=DIR`` arguments as {label: directory}; this repository when none is given."""
    if not specs:
        return {"current": REPO}
    trees = {}
    for spec in specs:
        label, sep, directory = spec.partition("=")
        path = Path(directory).resolve()
        if not sep or not label or not (path / "labelcast" / "__init__.py").is_file():
            raise SystemExit(f"--tree {spec!r}: expected LABEL=DIR of a labelcast source tree")
        trees[label] = path
    return trees


def main() -> int:
    """Run the phases, print a line each and a summary, write the JSON."""
    args = parse_args()
    counts = [int(n) for n in args.viewers.split(",")]
    trees = parse_trees(args.tree)
    from media import make_clip

    with tempfile.TemporaryDirectory(prefix="preview-viewers-") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        clip = folder / "clip-720p.mp4"
        if not clip.exists():
            make_clip(clip, seconds=6, fps=30, size=(720, 1280))
        model = args.model
        if model is None:
            from conftest import make_tiny_beit

            target = folder / "tiny-beit"
            if not (target / "config.json").exists():
                make_tiny_beit(target)
            model = str(target)
        phases = []
        for round_index in range(args.rounds):
            for count in counts:
                for label, tree in trees.items():
                    result = {"tree": label, "round": round_index}
                    result |= phase(tree, folder, model, clip, count, args.seconds)
                    phases.append(result)
                    print(
                        f"round {round_index} {label:>10} viewers {count:3d}: "
                        f"{result['events_per_s']:7.1f} events/s, "
                        f"{result['cpu_ms_per_event']:6.1f} ms CPU/event, "
                        f"RSS {result['rss_mb']['median']} MB "
                        f"({result['rss_mb']['growth']:+.1f} with viewers), "
                        f"JPEG/s {result['jpeg_encodes_per_s']}, "
                        f"others {(result['cpu'] or {}).get('others_share', 0):.0%}",
                        flush=True,
                    )
    results = {
        "schema": SCHEMA,
        "settings": {
            "viewers": counts,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "trees": {label: str(tree) for label, tree in trees.items()},
            "model": args.model or "tests' tiny random BEiT (tests/conftest.py)",
            "clip": "1280x720 30 fps H.264, 6 s, looped, every frame classified",
            "preview": {"max_clients": 64, "other settings": "defaults"},
        },
        "machine": machine_info(),
        "phases": phases,
        "summary": summarise(phases),
    }
    print(json.dumps(results["summary"], indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
