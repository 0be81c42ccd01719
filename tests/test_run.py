"""`labelcast run` on video files: event counts, schema, sequences, batching, signals."""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_LABELS
from helpers import by_stream, read_events, run_cli, signal_mid_run, write_config


def two_stream_config(tiny_model: Path, clips: dict[str, Path], out: Path) -> dict[str, Any]:
    return {
        "name": "gateway-1",
        "model": {"id": str(tiny_model), "batch": {"max_size": 8, "max_wait_ms": 100}},
        "sources": [
            {"id": "door", "type": "file", "path": str(clips["long"]), "sample": {"fps": 2}},
            {"id": "lobby", "type": "file", "path": str(clips["short"]), "sample": {"every": 5}},
        ],
        "labels": {"top_k": 3},
        "sinks": [{"type": "log", "path": str(out)}],
    }


@pytest.fixture(scope="module")
def two_stream_run(
    tiny_model: Path, clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    # Given a 20 s 30 fps clip sampled at 2 fps and a 4 s 25 fps clip sampled every 5th frame
    folder = tmp_path_factory.mktemp("run")
    out = folder / "events.jsonl"
    config = write_config(folder, two_stream_config(tiny_model, clips, out))
    # When labelcast runs them to the end
    result = run_cli("run", str(config))
    return {"result": result, "events": read_events(out) if out.exists() else []}


def test_run_exits_zero_and_sampling_gives_the_promised_counts(two_stream_run):
    result = two_stream_run["result"]
    assert result.returncode == 0, result.stderr
    streams = by_stream(two_stream_run["events"])
    # 20 s x 2 fps = 40; 100 frames / every 5 = 20
    assert len(streams["door"]) == 40
    assert len(streams["lobby"]) == 20


def test_each_stream_has_its_own_gapless_sequence(two_stream_run):
    for events in by_stream(two_stream_run["events"]).values():
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        assert [e["id"] for e in events] == [
            f"gateway-1/{e['stream']}/{e['run']}/{e['seq']}" for e in events
        ]
    # One run id for the whole run, shaped like 20261128T062100Z-1a2b
    runs = {e["run"] for e in two_stream_run["events"]}
    assert len(runs) == 1 and re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{4}", runs.pop())


def test_sampled_presentation_times_follow_the_rule(two_stream_run):
    streams = by_stream(two_stream_run["events"])
    assert [e["pts"] for e in streams["door"]] == pytest.approx(
        [i * 0.5 for i in range(40)], abs=0.02
    )
    assert [e["pts"] for e in streams["lobby"]] == pytest.approx(
        [i * 0.2 for i in range(20)], abs=0.02
    )


def test_every_event_has_the_schema_fields_with_their_types(two_stream_run):
    for event in two_stream_run["events"]:
        assert set(event) == {
            "schema",
            "id",
            "pipeline",
            "run",
            "stream",
            "region",
            "seq",
            "pts",
            "captured_at",
            "latency_ms",
            "labels",
            "model",
            "dropped",
            "skipped",
        }
        assert event["schema"] == "labelcast.label/1"
        assert event["region"] is None and event["skipped"] == 0  # no regions, no gate
        assert event["pipeline"] == "gateway-1"
        assert isinstance(event["seq"], int) and isinstance(event["pts"], float)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", event["captured_at"])
        datetime.fromisoformat(event["captured_at"].replace("Z", "+00:00"))
        assert isinstance(event["latency_ms"], float) and event["latency_ms"] >= 0
        assert event["dropped"] == 0
        assert event["model"] == {
            "id": event["model"]["id"],
            "revision": None,
            "precision": "fp32",
            "scoring": "softmax",
        }
        assert 1 <= len(event["labels"]) <= 3
        scores = [label["score"] for label in event["labels"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        for label in event["labels"]:
            # Labels come from the checkpoint's id2label.
            assert label["label"] == TINY_LABELS[label["class_id"]]


def test_labels_follow_the_picture(two_stream_run):
    # The slideshow shows four different photos in turn: a real model's top label changes with
    # them (random weights, but deterministic per picture).
    door = by_stream(two_stream_run["events"])["door"]
    first, last = door[0]["labels"][0], door[-1]["labels"][0]
    assert (first["label"], first["score"]) != (last["label"], last["score"])


def test_batches_mix_streams(tiny_model, clips, tmp_path):
    # Given two file streams and batches of up to 8 frames
    from labelcast import Pipeline, parse_config

    config = parse_config(json.dumps(two_stream_config(tiny_model, clips, tmp_path / "e.jsonl")))
    events = []
    pipeline = Pipeline(config, on_event=events.append)
    # When it runs to the end
    pipeline.run()
    # Then frames of both streams shared batches, and batches held more than one frame
    stats = pipeline.batch_stats
    assert stats.frames == len(events) == 60
    assert stats.multi_stream >= 1
    assert stats.largest == 8
    assert stats.batches < stats.frames / 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_cleanly_and_flushes_the_sink(tiny_model, clips, tmp_path, signum):
    # Given a run over a long clip sampling every frame
    out = tmp_path / "events.jsonl"
    config = two_stream_config(tiny_model, clips, out)
    config["sources"] = [
        {"id": "door", "type": "file", "path": str(clips["long"]), "sample": {"every": 1}}
    ]
    path = write_config(tmp_path, config)
    # When it gets the signal mid-run
    returncode, stderr = signal_mid_run(path, out, 5, signum)
    # Then it exits 0 and every event written is a whole line, in sequence, fewer than all
    assert returncode == 0, stderr
    events = read_events(out)
    assert 5 <= len(events) < 600
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert "stopping" in stderr and "Traceback" not in stderr


def test_log_sink_writes_to_stdout_by_default(tiny_model, clips, tmp_path):
    config = {
        "model": {"id": str(tiny_model)},
        "sources": [{"id": "a", "type": "file", "path": str(clips["short"]), "sample": {"fps": 1}}],
    }
    result = run_cli("run", str(write_config(tmp_path, config)))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert all(e["pipeline"] == "labelcast" for e in events)
