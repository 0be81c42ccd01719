"""Smoke test of bench/bench.py: it runs end to end and writes its JSON (timings not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_writes_all_figures(tiny_model: Path, tmp_path: Path) -> None:
    # given the tiny checkpoint and an empty work directory
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(REPO / "bench" / "bench.py"),
        "--quick",
        "--model",
        str(tiny_model),
        "--device",
        "cpu",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(out),
        "--from-frames",
    ]

    # when the benchmark runs in quick mode, with the from-decoded-frames phase
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)

    # then it exits cleanly, prints the three rates and writes them as JSON
    assert result.returncode == 0, result.stderr[-3000:]
    for phrase in ("bare model", "labelcast e2e", "naive", "e2e/bare", "e2e/naive", "p99"):
        assert phrase in result.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["schema"] == "labelcast.bench/1"
    for key in ("machine", "model", "settings", "bare", "e2e", "naive", "ratios"):
        assert data[key] is not None, key
    for phase in ("bare", "e2e", "naive"):
        assert data[phase]["frames_per_s"] > 0, phase
        assert data[phase]["peak_rss_mb"] > 0, phase
    assert data["ratios"]["e2e_over_bare"] > 0
    assert data["ratios"]["e2e_over_naive"] > 0
    # the frames phase classified decoded 1280x720 frames, serially and overlapped
    # (overlapping needs CUDA: on the CPU both are the same work)
    frames = data["frames"]
    assert frames["frame_shape"] == [720, 1280, 3] and frames["overlaps"] is False
    assert frames["frames_per_s"] > 0 and frames["serial_frames_per_s"] > 0
    assert frames["overlapped_batches"] >= 2 and frames["serial_batches"] >= 2
    assert data["ratios"]["frames_over_bare"] > 0
    assert "(d) from decoded frames" in result.stdout
    latency = data["e2e"]["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p99"]
    # every sampled frame of every stream was classified, by labelcast and by the naive loop
    assert data["e2e"]["frames"] == data["expected_frames"] == data["naive"]["frames"]
    assert data["e2e"]["seq_gapless"]
    assert data["model"]["random_weights"] is False
    machine = data["machine"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1
    assert machine["versions"]["torch"] and machine["versions"]["transformers"]
    assert machine["device_name"] == "cpu"


def test_keyframes_load_and_soak_modes_write_their_figures(
    tiny_model: Path, tmp_path: Path
) -> None:
    # given the tiny checkpoint, key-frame decoding and short live-paced phases (the tiny
    # model's real capacity would need hundreds of streams: a capacity is given instead)
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(REPO / "bench" / "bench.py"),
        "--quick",
        "--skip-naive",
        "--model",
        str(tiny_model),
        "--device",
        "cpu",
        "--workdir",
        str(tmp_path / "work"),
        "--decode",
        "keyframes",
        "--load",
        "0.5",
        "--load-seconds",
        "3",
        "--soak-minutes",
        "0.05",
        "--capacity",
        "8",
        "--buckets",
        "1,4",
        "--json",
        str(out),
    ]

    # when the benchmark runs
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=150)

    # then e2e decoded key frames only (one every 1/fps s), and classified every sample
    assert result.returncode == 0, result.stderr[-3000:]
    for phrase in ("decode: keyframes", "load:", "soak:", "target", "RSS"):
        assert phrase in result.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    settings = data["settings"]
    assert settings["decode"] == "keyframes" and settings["gop"] == 15
    assert settings["buckets"] == [1, 4]
    assert data["e2e"]["frames"] == data["expected_frames"] == 8
    assert data["e2e"]["decoded_frames"] == data["e2e"]["frames"]
    assert data["naive"] is None and data["ratios"]["e2e_over_naive"] is None
    # and each live phase reports what it offered, classified and dropped, its latency
    # against the target, and RSS over time
    for kind, fraction in (("load", 0.5), ("soak", 2.0)):
        run = data[kind]
        assert run["kind"] == kind and run["fraction_of_capacity"] == fraction
        assert run["capacity_frames_per_s"] == 8 and run["capacity_from"] == "given"
        assert 0 < run["frames"] <= run["offered"]
        assert 0 <= run["dropped_in_events"] <= run["dropped"] <= run["offered"]
        assert 0 <= run["latency_ms"]["p50"] <= run["latency_ms"]["p99"]
        model_ms = run["batch_model_ms"]["p50"]
        assert run["latency_target_ms"] == settings["max_wait_ms"] + 2 * model_ms
        assert isinstance(run["p99_within_target"], bool)
        assert run["rss_mb"]["samples"] >= 2 and run["rss_mb"]["growth_pct"] is not None
        assert run["rss_mb"]["baseline"] > 0
