#!/usr/bin/env python
"""Local inference vs a gateway sending to a local Triton server, in one run.

One run, on this machine, with the same model and the same frames:

(a) ``local``: ``Classifier.classify`` with ``backend: torch`` on the CPU, batches of
    ``--batch`` frames (resize, normalise, forward, softmax);
(b) ``remote``: the same frames through ``backend: triton`` to a ``labelcast serve``
    (PyTriton) started by this script on loopback: the gateway resizes to ``uint8`` and
    sends; the server normalises and runs the same torch model. Triton's statistics for
    the run split the server's time into queue, input, inference and output;
(c) ``two gateways``: two gateway processes classify at once through the server; Triton's
    statistics give the batch sizes its dynamic batcher formed from their requests.

The per-frame overhead of the remote path is (b) minus (a) per frame; the part of it
that is serialisation and transport (client, gRPC, PyTriton's IPC to the Python model)
is the request time minus the server's queue, input, inference and output time.

The server runs in ``.venv-serve`` (Debian's Python; see docs/scaling.md), or
``$LABELCAST_SERVE_PYTHON``. Without ``--model`` the model is the tests' tiny BEiT
(2 layers, hidden size 32): its forward pass costs almost nothing, so what the remote
path adds stands out; ``--model beit-base`` makes a random-weight BEiT-base as
``bench/bench.py`` does (real compute, random weights).

    python bench/triton_bench.py                    # tiny model, 64 frames, batches of 8
    python bench/triton_bench.py --model beit-base --frames 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
SERVE_PYTHON = Path(os.environ.get("LABELCAST_SERVE_PYTHON") or REPO / ".venv-serve/bin/python")
MODEL_NAME = "labelcast"
FRAME_SIZE = (720, 1280)  # what the gateway receives from a 720p camera


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny | beit-base | a checkpoint dir")
    parser.add_argument("--frames", type=int, default=64, help="frames per phase")
    parser.add_argument("--batch", type=int, default=8, help="gateway batch size")
    parser.add_argument("--max-queue-delay-us", type=int, default=5000)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".work")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--gateway", help=argparse.SUPPRESS)  # a child: classify via this URL
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare_model(choice: str, workdir: Path) -> Path:
    if choice == "beit-base":
        sys.path.insert(0, str(REPO / "bench"))
        import bench

        return Path(bench.prepare_model(workdir))
    if choice != "tiny":
        return Path(choice)
    target = workdir / "tiny-beit"
    if not (target / "preprocessor_config.json").is_file():
        sys.path.insert(0, str(REPO / "tests"))
        from conftest import make_tiny_beit

        target.mkdir(parents=True, exist_ok=True)
        make_tiny_beit(target)
    return target


def frames(count: int) -> list[np.ndarray]:
    """Real photos (scikit-image's) at 720p, cycled."""
    from PIL import Image
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    height, width = FRAME_SIZE
    resized = [
        np.asarray(Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR))
        for p in photos
    ]
    return [resized[i % len(resized)] for i in range(count)]


def model_section(model_dir: Path, url: str | None) -> dict[str, Any]:
    model: dict[str, Any] = {"id": str(model_dir), "device": "cpu"}
    if url is not None:
        model.update({"backend": "triton", "triton": {"url": url, "model": MODEL_NAME}})
    return model


def time_classify(classifier: Any, images: list[np.ndarray], batch: int) -> dict[str, Any]:
    """Classify ``images`` in batches; per-frame figures in ms (warm up first)."""
    resize_s = request_s = 0.0
    started = time.perf_counter()
    for start in range(0, len(images), batch):
        part = images[start : start + batch]
        t0 = time.perf_counter()
        pixels = classifier.preprocess(part)
        t1 = time.perf_counter()
        logits = classifier.forward(pixels)
        logits.float().softmax(dim=-1)
        t2 = time.perf_counter()
        resize_s += t1 - t0
        request_s += t2 - t1
    total = time.perf_counter() - started
    n = len(images)
    return {
        "frames": n,
        "batch": batch,
        "ms_per_frame": 1000 * total / n,
        "frames_per_s": n / total,
        "preprocess_ms_per_frame": 1000 * resize_s / n,
        "forward_ms_per_frame": 1000 * request_s / n,
        "requests": -(-n // batch),
    }


def triton_stats(http_port: int) -> dict[str, Any]:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
    try:
        stats: dict[str, Any] = client.get_inference_statistics(MODEL_NAME)["model_stats"][0]
        return stats
    finally:
        client.close()


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the server did between two statistics snapshots."""

    def phase(name: str) -> tuple[int, int]:
        a = after["inference_stats"][name]
        b = before["inference_stats"][name]
        return int(a["count"]) - int(b["count"]), int(a["ns"]) - int(b["ns"])

    def batches(stats: dict[str, Any]) -> dict[int, int]:
        return {
            int(e["batch_size"]): int(e["compute_infer"]["count"])
            for e in stats.get("batch_stats", [])
        }

    old, new = batches(before), batches(after)
    formed = {size: new[size] - old.get(size, 0) for size in sorted(new)}
    result: dict[str, Any] = {
        "frames": int(after["inference_count"]) - int(before["inference_count"]),
        "executions": int(after["execution_count"]) - int(before["execution_count"]),
        "batch_sizes": {str(k): v for k, v in formed.items() if v > 0},
    }
    for name in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        count, ns = phase(name)
        result[f"{name}_requests"] = count
        result[f"{name}_ms"] = ns / 1e6
    return result


class Server:
    """``labelcast serve`` in the server venv, on free loopback ports."""

    def __init__(self, model_dir: Path, workdir: Path, max_queue_delay_us: int) -> None:
        self.grpc_port, self.http_port, metrics = free_port(), free_port(), free_port()
        self.config = workdir / "triton-bench-server.yaml"
        serve = {
            "bind": "127.0.0.1",
            "grpc_port": self.grpc_port,
            "http_port": self.http_port,
            "metrics_port": metrics,
            "max_batch_size": 32,
            "max_queue_delay_us": max_queue_delay_us,
        }
        config = {
            "name": "triton-bench",
            "model": {
                **model_section(model_dir, None),
                "triton": {"model": MODEL_NAME, "serve": serve},
            },
            "sources": [{"id": "unused", "type": "file", "path": "unused.mp4"}],
        }
        self.config.write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "triton-bench-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
        env["HF_HUB_OFFLINE"] = "1"
        command = [str(SERVE_PYTHON), "-m", "labelcast", "serve", str(self.config)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                triton_stats(self.http_port)
                return
            except Exception:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the Triton server did not start; see {self.log}") from None
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def gateway_child(url: str, model_dir: Path, count: int, batch: int) -> int:
    """One gateway process of the two-gateway phase: print its timing as JSON."""
    from labelcast.model.classifier import Classifier, ModelConfig

    classifier = Classifier.load(ModelConfig.model_validate(model_section(model_dir, url)))
    images = frames(count)
    classifier.classify(images[:batch])  # warm-up
    print(json.dumps(time_classify(classifier, images, batch)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gateway:
        return gateway_child(args.gateway, args.model_dir, args.frames, args.batch)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not SERVE_PYTHON.exists():
        raise SystemExit(f"no server Python at {SERVE_PYTHON} (scripts/test.sh makes .venv-serve)")
    import torch

    from labelcast.logs import setup_logging
    from labelcast.model.classifier import Classifier, ModelConfig

    setup_logging("WARNING", "text")
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir = prepare_model(args.model, args.workdir)
    images = frames(args.frames)
    server = Server(model_dir, args.workdir, args.max_queue_delay_us)
    print(f"starting the Triton server ({SERVE_PYTHON}) ...", file=sys.stderr)
    server.start()
    try:
        url = f"grpc://127.0.0.1:{server.grpc_port}"
        local = Classifier.load(ModelConfig.model_validate(model_section(model_dir, None)))
        remote = Classifier.load(ModelConfig.model_validate(model_section(model_dir, url)))
        local.classify(images[: args.batch])  # warm-up, both
        remote.classify(images[: args.batch])
        local_result = time_classify(local, images, args.batch)
        before = triton_stats(server.http_port)
        remote_result = time_classify(remote, images, args.batch)
        alone = stats_delta(before, triton_stats(server.http_port))
        # The same scores both ways (float rounding of another batch size at most).
        diff = float(np.abs(local.classify(images[:8]) - remote.classify(images[:8])).max())

        before = triton_stats(server.http_port)
        child = [
            sys.executable,
            __file__,
            "--gateway",
            url,
            "--model-dir",
            str(model_dir),
            "--frames",
            str(args.frames),
            "--batch",
            str(args.batch),
        ]
        children = [subprocess.Popen(child, stdout=subprocess.PIPE, text=True) for _ in range(2)]
        gateways = [json.loads(c.communicate(timeout=600)[0]) for c in children]
        together = stats_delta(before, triton_stats(server.http_port))
    finally:
        server.stop()

    per_frame = {
        name: alone[f"{name}_ms"] / remote_result["frames"]
        for name in ("success", "queue", "compute_input", "compute_infer", "compute_output")
    }
    overhead = remote_result["ms_per_frame"] - local_result["ms_per_frame"]
    # What the server did not spend on the request: the client's serialisation, gRPC
    # both ways and Triton's frontend.
    transport = remote_result["forward_ms_per_frame"] - per_frame["success"]
    height, width = local.preprocessor.output_size or (0, 0)
    result = {
        "schema": "labelcast.triton-bench/1",
        "model": str(model_dir),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "frame_size": list(FRAME_SIZE),
        "bytes_per_frame_sent": 3 * height * width,
        "local": local_result,
        "remote": {**remote_result, "server": alone},
        "max_abs_score_diff": diff,
        "overhead_ms_per_frame": overhead,
        "overhead_without_batcher_wait_ms_per_frame": overhead - per_frame["queue"],
        "transport_ms_per_frame": transport,
        "server_ms_per_frame": per_frame,
        "max_queue_delay_us": args.max_queue_delay_us,
        "two_gateways": {"gateways": gateways, "server": together},
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    return 0


def report(r: dict[str, Any]) -> str:
    local, remote = r["local"], r["remote"]
    server = r["server_ms_per_frame"]
    two = r["two_gateways"]["server"]
    alone_sizes = ", ".join(f"{k}x{v}" for k, v in remote["server"]["batch_sizes"].items())
    two_sizes = ", ".join(f"{k}x{v}" for k, v in two["batch_sizes"].items())
    rates = ", ".join(f"{g['frames_per_s']:.1f}" for g in r["two_gateways"]["gateways"])
    return "\n".join(
        [
            f"model {r['model']}; {r['cpus']} CPUs, torch threads {r['threads']}; "
            f"{r['frame_size'][1]}x{r['frame_size'][0]} frames in batches of {local['batch']}",
            f"local (torch, CPU):   {local['ms_per_frame']:.2f} ms/frame "
            f"({local['frames_per_s']:.1f} frames/s; preprocess "
            f"{local['preprocess_ms_per_frame']:.2f}, forward {local['forward_ms_per_frame']:.2f})",
            f"remote (Triton gRPC): {remote['ms_per_frame']:.2f} ms/frame "
            f"({remote['frames_per_s']:.1f} frames/s; gateway resize "
            f"{remote['preprocess_ms_per_frame']:.2f}, "
            f"request {remote['forward_ms_per_frame']:.2f})",
            f"  in the server: {server['success']:.2f} ms/frame = batcher wait "
            f"{server['queue']:.2f} (max_queue_delay_us {r['max_queue_delay_us']}) + input "
            f"{server['compute_input']:.2f} + Python model (PyTriton IPC, normalise, forward) "
            f"{server['compute_infer']:.2f} + output {server['compute_output']:.2f}",
            f"overhead of the remote path: {r['overhead_ms_per_frame']:+.2f} ms/frame "
            f"({r['overhead_without_batcher_wait_ms_per_frame']:+.2f} without the batcher's "
            f"wait); serialisation + transport: {r['transport_ms_per_frame']:.2f} ms/frame "
            f"({r['bytes_per_frame_sent'] / 1e3:.0f} kB of uint8 per frame)",
            f"same scores: max |diff| {r['max_abs_score_diff']:.2g}",
            f"Triton batch sizes, one gateway:  {alone_sizes}",
            f"Triton batch sizes, two gateways: {two_sizes} ({two['executions']} executions "
            f"for {two['frames']} frames; {rates} frames/s per gateway)",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
