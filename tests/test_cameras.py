# The rendered tables' multiplication signs are meant:
# ruff: noqa: RUF001
"""bench/cameras.py (gateway capacity, issue #17): the scene, the search, the verdicts,
a quick run's JSON, and bench/render.py's "cameras" table."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from test_bench import cells, load_script, run_render

REPO = Path(__file__).resolve().parent.parent
CAMERAS = REPO / "bench" / "cameras.py"

cameras = load_script(CAMERAS, "labelcast_bench_cameras")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work directory shared by this module's tests: the quick scene is made once."""
    return tmp_path_factory.mktemp("cameras-work")


def decoded(path: Path) -> tuple[list[Any], list[bool]]:
    """Every frame of a clip (RGB) and whether each is a key frame."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [f.key_frame for f in frames]


# --------------------------------------------------------------------------- the scene


def test_the_scene_has_a_key_frame_a_second_and_versions_offset_in_time(workdir: Path) -> None:
    # given the quick scene (640x360, 6 s at 15 fps, the region changing every 3 s)
    scene = cameras.QUICK_SCENE

    # when its clip and versions are made
    versions = cameras.prepare_scene(workdir, scene)

    # then there is one version per offset, each with every frame and a key frame every
    # second exactly (so that key frames alone give 1 fps)
    assert len(versions) == scene.versions == 3
    first, keys = decoded(versions[0])
    assert len(first) == scene.seconds * scene.fps
    assert [i for i, key in enumerate(keys) if key] == list(range(0, len(first), scene.fps))
    assert first[0].shape == (360, 640, 3)
    # and version 1 starts one second into version 0 (whole GOPs moved, not re-encoded)
    second, keys = decoded(versions[1])
    assert [i for i, key in enumerate(keys) if key] == list(range(0, len(second), scene.fps))
    assert np.array_equal(second[0], first[scene.fps])
    assert np.array_equal(second[-1], first[scene.fps - 1])
    # and the region changes between its periods, but hardly between two key frames of
    # one period (sensor noise only), while the frame around it is noisy everywhere
    x, y, w, h = scene.region_box
    period = scene.change_every_s * scene.fps

    def region_change(a: int, b: int) -> float:
        ra, rb = first[a][y : y + h, x : x + w], first[b][y : y + h, x : x + w]
        return float(np.abs(ra.astype(int) - rb).mean())

    assert region_change(0, scene.fps) < 5  # the same content, new noise
    assert region_change(0, period) > 20  # new content
    assert first[0][y : y + h, x : x + w].std() > 0


# --------------------------------------------------------------------------- the search


def capacity(limit: int) -> tuple[list[int], Any]:
    """A fake run: ``limit`` cameras or fewer are held; the counts run, in order."""
    ran: list[int] = []

    def measure(n: int) -> bool:
        ran.append(n)
        return n <= limit

    return ran, measure


def test_the_search_doubles_then_bisects_to_within_an_eighth() -> None:
    # given a variant that holds 37 cameras
    ran, measure = capacity(37)

    # when the search starts at 4
    found = cameras.search(measure, start=4, max_cameras=512, max_runs=10)

    # then it doubled to the first count not held, then bisected to within an eighth
    assert ran == [4, 8, 16, 32, 64, 48, 40, 36]
    assert found == {"held": 36, "first_failed": 40, "runs": ran}


def test_the_search_halves_when_its_first_count_is_not_held() -> None:
    ran, measure = capacity(3)
    found = cameras.search(measure, start=16, max_cameras=512, max_runs=10)
    assert ran == [16, 8, 4, 2, 3]
    assert (found["held"], found["first_failed"]) == (3, 4)


def test_the_search_stops_at_its_ceiling_its_run_budget_or_nothing_held() -> None:
    # the ceiling held: no count failed
    ran, measure = capacity(10_000)
    found = cameras.search(measure, start=4, max_cameras=20, max_runs=10)
    assert ran == [4, 8, 16, 20] and (found["held"], found["first_failed"]) == (20, None)
    # the run budget spent while bisecting: the best so far
    ran, measure = capacity(37)
    found = cameras.search(measure, start=4, max_cameras=512, max_runs=6)
    assert ran == [4, 8, 16, 32, 64, 48]
    assert (found["held"], found["first_failed"]) == (32, 48)
    # not even one camera held
    ran, measure = capacity(0)
    found = cameras.search(measure, start=2, max_cameras=512, max_runs=10)
    assert ran == [2, 1] and (found["held"], found["first_failed"]) == (0, 1)


# --------------------------------------------------------------------------- verdicts


def run_result(**changes: Any) -> dict[str, Any]:
    """A run of 4 cameras for 60 s at 1 fps that was held, with ``changes``."""
    run: dict[str, Any] = {
        "cameras": 4,
        "seconds": 60.0,
        "offered": 240,
        "classified": 240,
        "skipped": 0,
        "dropped": 0,
        "pending": 0,
        "drained": True,
        "steady": {"classified": 160, "dropped": 0, "latency_ms": {"p99": 900.0}},
    }
    for key, value in changes.items():
        if key == "steady":
            run["steady"] = {**run["steady"], **value}
        else:
            run[key] = value
    return run


def test_a_count_is_held_with_no_drop_p99_within_2_s_and_cameras_in_real_time() -> None:
    settings = {"p99_limit_ms": 2000.0, "sample_fps": 1.0, "shortfall_per_camera": 2}
    assert cameras.judge(run_result(), settings) == []
    # 2 pictures a camera short is a source starting late, not lagging
    assert cameras.judge(run_result(offered=232), settings) == []
    assert cameras.judge(run_result(steady={"dropped": 3}), settings) == [
        "3 dropped after the warm-up"
    ]
    assert cameras.judge(run_result(steady={"latency_ms": {"p99": 2100.0}}), settings) == [
        "p99 2100 ms > 2000 ms"
    ]
    assert cameras.judge(run_result(offered=200), settings) == [
        "the cameras offered 200 of 240 pictures: behind real time"
    ]
    assert cameras.judge(run_result(drained=False), settings) == [
        "the queues took over 15 s to drain at the end"
    ]


# --------------------------------------------------------------------------- quick runs


def quick_run(tiny_model: Path, workdir: Path, tmp_path: Path, *arguments: str) -> dict[str, Any]:
    """Run bench/cameras.py --quick with the tiny model; its JSON."""
    out = tmp_path / "cameras.json"
    command = [
        sys.executable,
        str(CAMERAS),
        "--quick",
        "--model",
        str(tiny_model),
        "--workdir",
        str(workdir),
        "--json",
        str(out),
        *arguments,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "labelcast gateway capacity" in result.stdout
    return json.loads(out.read_text(encoding="utf-8"))


def check_runs(data: dict[str, Any]) -> None:
    """Every run's counts add up, and its figures are there."""
    settings = data["settings"]
    for name, variant in data["variants"].items():
        assert variant["runs"], name
        for run in variant["runs"]:
            n = run["cameras"]
            # every picture offered was classified, skipped, dropped or still pending
            assert (
                run["classified"] + run["skipped"] + run["dropped"] + run["pending"]
                == run["offered"]
            ), (name, run)
            # a camera offers about one picture a second of the run
            expected = n * run["seconds"] * settings["sample_fps"]
            assert expected - 2 * n <= run["offered"] <= expected + n, (name, run)
            assert 0 <= run["pending"] <= 8 * n  # at most a full queue a camera
            assert run["classified"] > 0
            assert 0 <= run["steady"]["dropped"] <= run["dropped"] + n
            latency = run["latency_ms"]
            assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
            assert 0 < run["cpu"]["share"] <= 1.0 and run["cpu"]["cores"] >= 1
            assert run["rss_mb"]["peak"] > 0
            assert run["first_pass_s"] is not None and run["first_pass_s"] >= 0
            assert run["held"] is (run["why_not_held"] == [])
            assert run["cpu_during_phase"] is not None


def test_quick_run_of_labelcast_fp32_writes_consistent_counts(
    tiny_model: Path, workdir: Path, tmp_path: Path
) -> None:
    # given the tiny checkpoint and two live-paced cameras of the quick scene
    # when labelcast fp32 serves them for a few seconds
    data = quick_run(tiny_model, workdir, tmp_path, "--variants", "fp32", "--cameras", "2")

    # then the JSON names the run and machine, and the run's counts add up
    assert data["schema"] == "labelcast.cameras/1" and data["name"] == "cameras"
    assert "bench/cameras.py --quick" in data["command"]
    assert data["machine"]["usable_cores"] >= 1 and data["settings"]["quick"] is True
    variant = data["variants"]["fp32"]
    assert variant["engine"] == {
        "precision": "fp32",
        "backend": "torch",
        "decode": "all",
        "regions": False,
    }
    assert variant["searched"] is False and [r["cameras"] for r in variant["runs"]] == [2]
    check_runs(data)
    run = variant["runs"][0]
    # nothing is skipped without a gate, and a tiny model keeps up with two cameras
    assert run["skipped"] == 0 and run["dropped"] == 0 and run["pending"] == 0
    assert run["held"] and variant["held"] == 2
    assert run["decoded_frames"] > run["offered"]  # every frame decoded, 1 in 15 sampled


@pytest.mark.slow
def test_quick_search_of_every_variant(tiny_model: Path, workdir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    # given every variant
    variants = ["naive", "fp32", "best", "regions-gate"]

    # when each is searched from 1 camera, two runs at most
    data = quick_run(
        tiny_model,
        workdir,
        tmp_path,
        "--variants",
        ",".join(variants),
        "--start",
        "1",
        "--max-runs",
        "2",
    )

    # then each ran 1 then 2 cameras (the tiny model holds both), and the counts add up
    assert list(data["variants"]) == variants
    for name in variants:
        variant = data["variants"][name]
        assert [r["cameras"] for r in variant["runs"]] == [1, 2], name
        assert variant["held"] == 2 and variant["first_failed"] is None
    check_runs(data)
    assert data["over_naive"] == {name: 1.0 for name in variants if name != "naive"}
    best = data["variants"]["best"]["runs"][-1]
    assert best["precision"] == "int8" and best["backend"] == "onnxruntime"
    assert best["decoded_frames"] <= best["offered"] + 2 * best["cameras"]  # key frames only
    if "regions-gate" in variants:
        gated = data["variants"]["regions-gate"]["runs"][-1]
        # the region changes every 3 s: most pictures are unchanged
        assert gated["skipped"] > 0 and gated["classified"] < gated["offered"]


# --------------------------------------------------------------------------- render


def cameras_result() -> dict[str, Any]:
    """A labelcast.cameras/1 result: the naive loop holds 2, regions + gate 40."""

    def run(n: int, held: bool, p99: float, share: float, **extra: Any) -> dict[str, Any]:
        return {
            "cameras": n,
            "seconds": 120.0,
            "offered": n * 120,
            "classified": n * 120 - extra.get("skipped", 0),
            "skipped": extra.get("skipped", 0),
            "dropped": 0 if held else 7,
            "pending": 0,
            "steady": {"dropped": 0 if held else 5, "latency_ms": {"p99": p99}},
            "cpu": {"share": share, "cores": 2},
            "rss_mb": {"peak": 1500.0},
            "held": held,
            "why_not_held": [] if held else ["5 dropped after the warm-up"],
        }

    def variant(engine: dict[str, Any], held: int, failed: int | None, runs: list[Any]) -> Any:
        return {
            "engine": engine,
            "searched": True,
            "held": held,
            "first_failed": failed,
            "runs": runs,
        }

    best = {"precision": "int8", "backend": "onnxruntime", "decode": "keyframes"}
    return {
        "schema": "labelcast.cameras/1",
        "name": "cameras-cpu",
        "date": "2026-12-04",
        "argv": ["--json", "bench/results/cameras-cpu.json"],
        "machine": {
            "cpu_model": "Test CPU",
            "usable_cores": 2,
            "versions": {"torch": "2.13.0", "transformers": "5.24.0", "onnxruntime": "1.32.0"},
            "cpu_during_run": {"others_share": 0.01, "steal_share": 0.0},
        },
        "model": {"random_weights": True, "parameters": 86_500_000, "path": "x"},
        "settings": {
            "quick": False,
            "scene": {"size": [720, 1280], "fps": 15},
            "sample_fps": 1.0,
            "seconds": 120.0,
            "warmup_s": 20.0,
            "p99_limit_ms": 2000.0,
        },
        "variants": {
            "naive": variant(
                {"precision": "fp32", "backend": "torch", "decode": "all", "regions": False},
                2,
                4,
                [run(2, True, 900.0, 0.8), run(4, False, 4000.0, 1.0)],
            ),
            "best": variant({**best, "regions": False}, 8, None, [run(8, True, 1200.0, 0.9)]),
            "regions-gate": variant(
                {**best, "regions": True},
                40,
                48,
                [run(40, True, 1500.0, 0.7, skipped=4400), run(48, False, 2500.0, 0.9)],
            ),
        },
        "over_naive": {"best": 4.0, "regions-gate": 20.0},
    }


def test_render_writes_the_gateway_capacity_table(tmp_path: Path) -> None:
    # given a cameras result and a document with its table
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "cameras-cpu.json").write_text(json.dumps(cameras_result()), encoding="utf-8")
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("<!-- table:cameras kind=cameras rows=cameras-cpu -->\n<!-- /table -->\n")

    # when render.py writes it
    result = run_render("--results", str(folder), "--doc", str(doc))

    # then each variant's cameras held, its ratio to the naive loop (bold at the aim of
    # 16x), and CPU and p99 at that count; a search that never failed shows "≥"
    assert result.returncode == 0, result.stderr
    text = doc.read_text(encoding="utf-8")
    assert cells(text, "`naive`")[1:] == [
        "OpenCV, BeitImageProcessorPil, fp32 torch, one frame at a time",
        "2",
        "–",
        "80%",
        "900 ms",
    ]
    best = cells(text, "`best`")
    assert best[1:] == [
        "labelcast, int8 onnxruntime, key frames only",
        "≥ 8",
        "4.0×",
        "90%",
        "1200 ms",
    ]
    gated = cells(text, "`regions-gate`")
    assert gated[1] == "labelcast, int8 onnxruntime, key frames only, one region + change gate"
    assert gated[2:4] == ["40", "**20.0×**"]
    # and every run, with what was offered, classified, skipped and dropped
    rows = [line for line in text.splitlines() if line.startswith("| `regions-gate` | 4")]
    assert rows[0].split(" | ")[1:7] == ["40", "4800", "400", "4400", "0 (0)", "1500 ms"]
    assert "not held: 5 dropped after the warm-up" in rows[1]
    assert "sampled at 1 fps, 120 s a run" in text and "after the first 20 s" in text
    assert math.isclose(cameras_result()["over_naive"]["regions-gate"], 20.0)
