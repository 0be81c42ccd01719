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
    ]

    # when the benchmark runs in quick mode
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
