# The rendered tables' en dashes and multiplication signs are meant:
# ruff: noqa: RUF001
"""bench/bench.py runs end to end and writes its JSON; bench/render.py renders BENCHMARKS.md.

The bench runs are smoke tests (timings not asserted); the render tests check the table
cells from fixture JSON, the noise rules, ``--check``, and that BENCHMARKS.md is what the
committed results in bench/results render.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from helpers import require_module

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench" / "bench.py"
RENDER = REPO / "bench" / "render.py"


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script of bench/ as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = load_script(BENCH, "labelcast_bench")
render = load_script(RENDER, "labelcast_bench_render")


def test_quick_bench_writes_all_figures(tiny_model: Path, tmp_path: Path) -> None:
    # given the tiny checkpoint, int8 (so the naive loop runs twice: int8 and fp32) and
    # an empty work directory
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(BENCH),
        "--quick",
        "--model",
        str(tiny_model),
        "--device",
        "cpu",
        "--precision",
        "int8",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(out),
        "--name",
        "quick-int8",
        "--from-frames",
    ]

    # when the benchmark runs in quick mode, with the from-decoded-frames phase
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)

    # then it exits cleanly, prints the rates and ratios and writes them as JSON
    assert result.returncode == 0, result.stderr[-3000:]
    for phrase in ("bare model", "labelcast e2e", "naive", "e2e/bare", "e2e/naive", "p99"):
        assert phrase in result.stdout
    for phrase in ("bare/naive", "e2e/naive-fp32", "rate spread"):
        assert phrase in result.stdout
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["schema"] == "labelcast.bench/2"
    # and the JSON says which run, when, where and how: all a results file needs
    assert data["name"] == "quick-int8"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", data["date"])
    assert "bench/bench.py --quick" in data["command"] and "--name quick-int8" in data["command"]
    assert data["argv"][0] == "--quick"
    machine = data["machine"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1
    assert machine["versions"]["torch"] and machine["versions"]["transformers"]
    assert "onnxruntime" in machine["versions"] and isinstance(machine["cpu_flags"], list)
    assert machine["device_name"] == "cpu"
    for key in ("model", "settings", "bare", "e2e", "naive", "naive_fp32", "ratios"):
        assert data[key] is not None, key
    for phase in ("bare", "e2e", "naive", "naive_fp32"):
        assert data[phase]["frames_per_s"] > 0, phase
        assert data[phase]["peak_rss_mb"] > 0, phase
        spread = data[phase]["rate_spread"]
        assert 0 < spread["min"] <= spread["median"] <= spread["max"], phase
    # e2e ran twice with the model loaded once; its rate is their median
    assert [r["frames"] for r in data["e2e"]["repeats"]] == [data["expected_frames"]] * 2
    assert data["e2e"]["rate_spread"]["n"] == 2
    # the naive loop ran at labelcast's precision (torch's dynamic int8) and in fp32
    assert (data["naive"]["precision"], data["naive"]["backend"]) == ("int8", "torch")
    assert "quantize_dynamic" in data["naive"]["loop"]
    assert data["naive_fp32"]["precision"] == "fp32" and not data["naive_fp32_is_naive"]
    # and every ratio comes with the interval the spreads allow
    for key in ("e2e_over_bare", "e2e_over_naive", "e2e_over_naive_fp32", "bare_over_naive"):
        low, high = data["ratio_intervals"][key]
        assert 0 < low <= data["ratios"][key] <= high, key
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
    # every sampled frame of every stream was classified, by labelcast and both naive loops
    expected = data["expected_frames"]
    assert data["e2e"]["frames"] == expected == data["naive"]["frames"]
    assert data["naive_fp32"]["frames"] == expected
    assert data["e2e"]["seq_gapless"]
    assert data["model"]["random_weights"] is False


def test_keyframes_load_and_soak_modes_write_their_figures(
    tiny_model: Path, tmp_path: Path
) -> None:
    # given the tiny checkpoint, key-frame decoding and short live-paced phases (the tiny
    # model's real capacity would need hundreds of streams: a capacity is given instead)
    out = tmp_path / "bench.json"
    command = [
        sys.executable,
        str(BENCH),
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
    assert data["name"] == "bench"  # the --json file's stem
    settings = data["settings"]
    assert settings["decode"] == "keyframes" and settings["gop"] == 15
    assert settings["buckets"] == [1, 4]
    assert data["e2e"]["frames"] == data["expected_frames"] == 8
    assert data["e2e"]["decoded_frames"] == data["e2e"]["frames"]
    assert data["naive"] is None and data["naive_fp32"] is None
    assert data["ratios"]["e2e_over_naive"] is None
    assert data["ratio_intervals"]["e2e_over_naive"] is None
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
        rss = run["rss_mb"]
        assert rss["samples"] >= 2 and rss["growth_pct"] is not None
        assert rss["baseline"] > 0
        # RSS growth under both rules: from the first window (the rule the soak target
        # was set with) and from the second (the current one, which growth_pct follows)
        rules = {rule["rule"]: rule for rule in rss["rules"]}
        assert set(rules) == {"from-first-window", "from-second-window"}
        assert rss["rule"] == "from-second-window"
        assert rules["from-second-window"]["growth_pct"] == rss["growth_pct"]
        assert rules["from-first-window"]["baseline_window_s"][0] == 0
        assert rules["from-first-window"]["growth_pct"] is not None
        assert len(rss["window_medians"]) >= 2


def test_the_naive_onnxruntime_loop_runs_labelcasts_int8_file(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_module("onnxruntime", "pip install labelcast[onnx]")
    require_module("onnxscript", "pip install labelcast[onnx]")
    monkeypatch.setenv("LABELCAST_CACHE", str(tmp_path / "cache"))
    # given the settings of a quick ONNX Runtime int8 run with one 2 s stream
    arguments = ["--quick", "--streams", "1", "--backend", "onnxruntime", "--precision", "int8"]
    settings = bench.resolve_settings(bench.parse_args([*arguments, "--device", "cpu"]))
    settings["clips"] = [str(c) for c in bench.prepare_clips(tmp_path / "work", settings)]
    settings["model_dir"] = str(tiny_model)
    settings["naive_engine"] = {"precision": "int8", "backend": "onnxruntime"}

    # when the naive loop runs at that precision
    result = bench.phase_naive(settings)

    # then it ran the int8 ONNX file one frame at a time, over every sampled frame
    assert (result["precision"], result["backend"]) == ("int8", "onnxruntime")
    assert "int8 ONNX file" in result["loop"]
    assert result["frames"] == 4 and result["frames_per_s"] > 0
    assert result["rate_spread"]["n"] == 1  # one stream: no spread of its own
    assert list((tmp_path / "cache").rglob("*-int8.onnx"))


def test_quick_zeroshot_bench_writes_its_figures_and_renders(tmp_path: Path) -> None:
    # given bench/zeroshot.py with tiny towers of the three kinds (a smoke run)
    out = tmp_path / "zeroshot.json"
    zeroshot = load_script(REPO / "bench" / "zeroshot.py", "labelcast_bench_zeroshot")
    # when it measures two frames of each in one batch
    assert zeroshot.main(["--quick", "--frames", "2", "--batch", "2", "--json", str(out)]) == 0
    # then each model has its cost per frame, relative to BEiT-base, and its preprocessing
    data = json.loads(out.read_text())
    assert data["schema"] == render.ZEROSHOT_SCHEMA and data["settings"]["quick"] is True
    assert set(data["models"]) == {"beit-base", "clip-vit-b16", "siglip-base"}
    for model in data["models"].values():
        assert model["forward_ms_per_frame"]["median"] > 0 and model["batches"] == 1
        assert model["preprocess_720p_ms"]["median"] > 0
    assert data["models"]["beit-base"]["relative_to_beit_base"] == 1.0
    # and render.py makes its table
    data["_path"] = str(out)
    text = render.render_zeroshot([data])
    assert "CLIP ViT-B/16 image tower" in text and "bench/zeroshot.py --quick" in text


# --------------------------------------------------------------------------- render


def phase(rate: float, low: float, high: float, **extra: Any) -> dict[str, Any]:
    """A phase's result: its rate and spread (and what else a table reads)."""
    return {
        "frames_per_s": rate,
        "rate_spread": {"min": low, "median": rate, "max": high, "n": 4, "over": "x"},
        **extra,
    }


def bench_result(
    name: str, precision: str, backend: str, decode: str, rates: dict[str, tuple[float, ...]]
) -> dict[str, Any]:
    """A labelcast.bench/2 result with these rates (rate, spread min, spread max) per phase."""
    bare = phase(
        *rates["bare"],
        precision=precision,
        backend=backend,
        batch=32,
        ms_per_batch={"p50": 7000.0},
        preprocess_ms_per_batch={"p50": 65.0},
    )
    e2e = phase(
        *rates["e2e"],
        batches=4,
        mean_batch=20.0,
        decoded_frames_per_s=60.0,
        classifier={"busy_share": 0.99, "busy_s": 20.0, "forward_s": 19.4},
    )
    naive = phase(*rates["naive"], precision=precision, backend=backend)
    naive_fp32 = phase(*rates["naive_fp32"], precision="fp32") if "naive_fp32" in rates else naive
    phases = {"bare": bare, "e2e": e2e, "naive": naive, "naive_fp32": naive_fp32}
    argv = ["--seconds", "10", "--precision", precision, "--decode", decode]
    argv += ["--json", f"bench/results/{name}.json"]
    return {
        "schema": "labelcast.bench/2",
        "name": name,
        "date": "2026-12-01",
        "command": ".venv/bin/python bench/bench.py " + " ".join(argv),
        "argv": argv,
        "machine": {
            "cpu_model": "Test CPU",
            "cpu_flags": ["avx512_bf16"],
            "usable_cores": 2,
            "versions": {"torch": "2.13.0", "transformers": "5.24.0", "onnxruntime": "1.32.0"},
            "cpu_during_run": {"others_share": 0.01, "steal_share": 0.0},
        },
        "model": {"random_weights": True, "parameters": 86_500_000, "path": "x"},
        "settings": {
            "streams": 4,
            "seconds": 10.0,
            "clip_size": [720, 1280],
            "clip_fps": 30,
            "sample_fps": 2.0,
            "batch": 32,
            "max_wait_ms": 50.0,
            "decode": decode,
            "repeats": 2,
        },
        "expected_frames": 80,
        **phases,
        "naive_fp32_is_naive": naive_fp32 is naive,
        "ratios": {k: bench.ratio(phases[a], phases[b]) for k, (a, b) in bench.RATIOS.items()},
        "ratio_intervals": {
            k: bench.ratio_interval(phases[a], phases[b]) for k, (a, b) in bench.RATIOS.items()
        },
        "load": None,
        "soak": None,
    }


def soak_result() -> dict[str, Any]:
    """A 10-minute soak whose growth meets the target under one rule and not the other."""
    rules = [
        {
            "rule": "from-first-window",
            "baseline_window_s": [0.0, 60.0],
            "baseline": 1574.0,
            "final": 1698.0,
            "growth_pct": 7.9,
            "why": "It measures from start-up.",
        },
        {
            "rule": "from-second-window",
            "baseline_window_s": [60.0, 120.0],
            "baseline": 1631.0,
            "final": 1698.0,
            "growth_pct": 4.1,
            "why": "It skips the first window as warm-up.",
        },
    ]
    return {
        "fraction_of_capacity": 2.0,
        "offered_target_frames_per_s": 7.48,
        "seconds": 600.0,
        "offered": 4492,
        "frames": 2024,
        "dropped": 2468,
        "dropped_in_events": 2468,
        "rss_mb": {
            "window_s": 60.0,
            "rule": "from-second-window",
            "rules": rules,
            "max": 1786.0,
            "samples": 120,
            "window_medians": [1574.0, 1631.0, 1698.0],
        },
    }


def keyframes_result() -> dict[str, Any]:
    return {
        "schema": "labelcast.keyframes/1",
        "name": "keyframes-cpu",
        "date": "2026-12-01",
        "argv": ["--json", "bench/results/keyframes-cpu.json"],
        "machine": {"cpu_model": "Test CPU", "usable_cores": 2, "versions": {}},
        "seconds": 20,
        "fps": 30,
        "sample_fps": 1,
        "repeat": 3,
        "clips": [
            {
                "width": 1280,
                "height": 720,
                "gop": 30,
                "fps": 30,
                "all": {"cpu_s": 0.99, "frames": 600},
                "keyframes": {"cpu_s": 0.2, "frames": 20},
                "saving_pct": 79.8,
            }
        ],
    }


DOC = """# Benchmarks

Prose that render.py leaves alone.

<!-- table:cpu kind=throughput rows=fp32,int8-kf -->
stale
<!-- /table -->

<!-- table:targets kind=targets rows=fp32,int8-kf -->
<!-- /table -->

<!-- table:soak kind=soak rows=fp32 -->
<!-- /table -->

<!-- table:kf kind=keyframes rows=keyframes-cpu -->
<!-- /table -->
"""


def cells(text: str, first_cell_contains: str) -> list[str]:
    """The cells of the table row whose first cell contains ``first_cell_contains``."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("|") and first_cell_contains in parts[0]:
            return parts
    raise AssertionError(f"no row with {first_cell_contains!r} in:\n{text}")


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results folder: an fp32 run with a soak, an int8 key-frame run and key frames."""
    folder = tmp_path / "bench" / "results"
    folder.mkdir(parents=True)
    # fp32: e2e/bare clearly above its 0.85 target, e2e/naive fp32 clearly below 1.35
    fp32 = bench_result(
        "fp32",
        "fp32",
        "torch",
        "all",
        {"bare": (4.0, 3.9, 4.1), "e2e": (3.8, 3.75, 3.85), "naive": (3.0, 2.95, 3.05)},
    )
    fp32["soak"] = soak_result()
    # int8 with key frames: e2e measured above bare (noise), e2e/naive fp32 well above 2.8
    int8 = bench_result(
        "int8-kf",
        "int8",
        "torch",
        "keyframes",
        {
            "bare": (10.0, 9.0, 11.0),
            "e2e": (10.3, 10.2, 10.4),
            "naive": (6.0, 5.8, 6.2),
            "naive_fp32": (3.0, 2.9, 3.1),
        },
    )
    for result in (fp32, int8, keyframes_result()):
        path = folder / f"{result['name']}.json"
        path.write_text(json.dumps(result), encoding="utf-8")
    # another benchmark's results, which render.py skips
    (folder / "preview_viewers.json").write_text('{"schema": "labelcast.bench.preview/1"}')
    return folder


def run_render(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(RENDER), *arguments]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_render_writes_the_tables_from_the_results(results: Path, tmp_path: Path) -> None:
    # given a document with marked tables and the results they name
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(DOC, encoding="utf-8")

    # when render.py rewrites it
    result = run_render("--results", str(results), "--doc", str(doc))

    # then the throughput rows hold each rate with its spread, and each ratio with its
    # interval: bold where the target is met beyond noise, "within noise" where e2e came
    # out above bare
    assert result.returncode == 0, result.stderr
    text = doc.read_text(encoding="utf-8")
    assert "Prose that render.py leaves alone." in text and "stale" not in text
    header = cells(text, "command")
    assert header[1:] == [
        "(a) bare",
        "(b) e2e",
        "(c) naive, same precision",
        "(c) naive fp32",
        "e2e/bare",
        "bare/naive",
        "e2e/naive",
        "e2e/naive fp32",
    ]
    fp32 = cells(text, "(fp32 torch, full decode)")
    assert fp32[0] == "`--seconds 10 --precision fp32 --decode all` (fp32 torch, full decode)"
    # (fp32 torch: the naive loop at the same precision is the fp32 one, one run)
    assert fp32[1:5] == [
        "4.00 (3.90–4.10)",
        "3.80 (3.75–3.85)",
        "3.00 (2.95–3.05)",
        "3.00 (2.95–3.05)",
    ]
    assert fp32[5] == "**0.95** [0.91–0.99]"  # e2e/bare, target 0.85 met
    assert fp32[6] == "1.33 [1.28–1.39]"  # bare/naive
    assert fp32[7] == fp32[8] == "1.27 [1.23–1.31]"  # below 1.35: not met, not bold
    int8 = cells(text, "(int8 torch, key frames only)")
    assert int8[1:5] == [
        "10.00 (9.00–11.00)",
        "10.30 (10.20–10.40)",
        "6.00 (5.80–6.20)",
        "3.00 (2.90–3.10)",
    ]
    assert int8[5] == "1.03 [0.93–1.16] within noise"  # e2e above bare
    assert int8[6] == "1.67 [1.45–1.90]"
    assert int8[7] == "1.72 [1.65–1.79]"
    assert int8[8] == "**3.43** [3.29–3.59]"  # target 2.8 met
    assert "Test CPU, 2 cores (avx512_bf16), torch 2.13.0" in text
    assert "onnxruntime 1.32.0; measured 2026-12-01" in text
    # and the targets table gives each verdict
    assert cells(text, "e2e ≥ 1.35× naive fp32")[2:] == ["1.27 [1.23–1.31]", "not met"]
    assert cells(text, "e2e ≥ 2.8× naive fp32")[2:] == ["3.43 [3.29–3.59]", "met"]
    assert cells(text, "e2e/bare ≥ 0.95")[2:] == ["1.03 [0.93–1.16]", "within noise"]
    assert cells(text, "e2e/bare ≥ 0.85")[3] == "met"
    # the soak's growth under the rule the target was set with first, then the current one
    assert cells(text, "soak RSS growth < 5 % (from minute 1)")[2:] == ["+7.9 %", "not met"]
    assert cells(text, "soak: every drop reported")[2:] == ["2468 of 2468", "met"]
    first = text.index("RSS from minute 1 (`from-first-window`, the rule the < 5 % target")
    second = text.index("RSS from minute 2 (`from-second-window`, the current rule)")
    assert first < second
    assert "1574 MB → 1698 MB (median of the last 60 s), +7.9 %, above the target" in text
    assert "1631 MB → 1698 MB (median of the last 60 s), +4.1 %, within the target" in text
    assert "It skips the first window as warm-up." in text
    # and the key-frame table
    assert cells(text, "1280×720, key frame every 1 s")[1:] == [
        "0.99 CPU s (600 frames)",
        "0.20 CPU s (20 frames)",
        "80 %",
    ]

    # when it checks the document it wrote: nothing differs
    assert run_render("--results", str(results), "--doc", str(doc), "--check").returncode == 0

    # when a figure is edited by hand, --check fails and says so
    doc.write_text(text.replace("**3.43**", "**3.50**"), encoding="utf-8")
    checked = run_render("--results", str(results), "--doc", str(doc), "--check")
    assert checked.returncode == 1
    assert "differs from what" in checked.stderr and "+| `--seconds 10" in checked.stderr


def test_render_fails_on_a_table_whose_results_are_missing(results: Path, tmp_path: Path) -> None:
    # given a table naming a run with no results file
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(DOC.replace("rows=fp32,int8-kf -->", "rows=fp32,gone -->", 1))

    # when render.py writes the document, then checks it
    written = run_render("--results", str(results), "--doc", str(doc))
    checked = run_render("--results", str(results), "--doc", str(doc), "--check")

    # then both fail, naming the missing run, which the table says is not measured
    for result in (written, checked):
        assert result.returncode == 1
        assert "no results named 'gone'" in result.stderr
    assert "_Not measured yet: `bench/results/gone.json` missing" in doc.read_text()


def test_benchmarks_md_is_what_the_committed_results_render() -> None:
    # given BENCHMARKS.md and the raw results committed in bench/results
    # when render.py checks it
    result = run_render("--check")

    # then every table is there, rendered from the JSON, and nothing was edited by hand
    assert result.returncode == 0, (
        "BENCHMARKS.md is not what bench/results renders (run the commands in its "
        "'How the figures here are made' section, then bench/render.py):\n" + result.stderr[-3000:]
    )
