"""File sources paced like a camera (``realtime``) and replayed in a loop (``loop``).

Timing assertions are one-sided where they must not flake: a real-time source may be
late on a loaded machine, but it must never release a frame before its time.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
from helpers import read_events, run_cli, write_config
from media import make_clip

from labelcast import LabelEvent, Pipeline
from labelcast.config import load_config
from labelcast.errors import ConfigError

# A frame released this much before its time would be a pacing bug, not jitter.
EARLY_TOLERANCE_S = 0.02
# The longest a stopped pipeline may take to finish here (it takes ~0.1 s).
STOP_WITHIN_S = 10.0


def pipeline_config(model: Path, sources: list[dict], **batch: float) -> dict:
    return {
        "name": "pacing",
        "model": {"id": str(model), "device": "cpu", "batch": {"max_wait_ms": 20, **batch}},
        "sources": sources,
        "sinks": [],
    }


def run_until(
    config: dict, tmp_path: Path, enough: int, on_event=None
) -> tuple[Pipeline, list[LabelEvent]]:
    """Run a pipeline until ``enough`` events came (or its sources ended), then stop it."""
    events: list[LabelEvent] = []
    got_enough = threading.Event()

    def record(event: LabelEvent) -> None:
        events.append(event)
        if on_event is not None:
            on_event(event)
        if len(events) >= enough:
            got_enough.set()

    pipeline = Pipeline(load_config(write_config(tmp_path, config)), on_event=record)
    pipeline.start()
    while not got_enough.wait(0.1):
        if pipeline.wait(0):
            break
    pipeline.stop()
    assert pipeline.wait(STOP_WITHIN_S), "the pipeline did not stop"
    return pipeline, events


@pytest.fixture(scope="module")
def fast_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of small 60 fps video: many frames per second of real time."""
    folder = tmp_path_factory.mktemp("pacing")
    return make_clip(folder / "fast.mp4", seconds=2, fps=60, size=(96, 128))


def test_a_realtime_file_never_releases_a_frame_before_its_time(tiny_model, clips, tmp_path):
    # given the 4 s clip at 25 fps, replayed in real time and sampled at 5 fps
    source = {"id": "cam", "type": "file", "path": str(clips["short"]), "realtime": True}
    config = pipeline_config(tiny_model, [{**source, "sample": {"fps": 5}}])

    # when it runs to the end
    started = time.time()
    pipeline, events = run_until(config, tmp_path, enough=10**6)

    # then every sampled frame was classified, none dropped, in pts order...
    assert pipeline.failed_streams == []
    assert [e.seq for e in events] == list(range(1, 21))
    assert sum(e.dropped for e in events) == 0
    # ...and each was captured no sooner than its pts says, counted from the first one
    first = events[0]
    assert first.captured_at >= started
    for event in events:
        due = first.captured_at + (event.pts - first.pts)
        assert event.captured_at >= due - EARLY_TOLERANCE_S, (event.seq, event.pts)
    # so the run lasted the clip's length (the last sampled frame is 3.8 s in)
    assert events[-1].captured_at - first.captured_at >= 3.8 - EARLY_TOLERANCE_S


def test_a_looped_file_starts_again_with_pts_going_on(tiny_model, clips, tmp_path):
    # given the 4 s clip at 25 fps (20 frames at 5 fps), looped, read as fast as possible
    source = {"id": "cam", "type": "file", "path": str(clips["short"]), "loop": True}
    config = pipeline_config(tiny_model, [{**source, "sample": {"fps": 5}}])

    # when 2.5 rounds of events have come and the pipeline is stopped
    pipeline, events = run_until(config, tmp_path, enough=50)

    # then it stopped (a looped file never ends on its own), with gapless seq...
    assert pipeline.failed_streams == []
    assert len(events) >= 50
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # ...and pts going on across the ends of the file, one sampling period apart
    steps = [b.pts - a.pts for a, b in itertools.pairwise(events)]
    assert all(abs(step - 0.2) < 1e-3 for step in steps), steps
    assert events[-1].pts > 8.0
    # ...and each round shows the same pictures as the first
    top = [e.labels[0].label if e.labels else None for e in events]
    assert top[20:40] == top[:20]


def test_a_realtime_loop_stops_promptly(tiny_model, clips, tmp_path):
    # given a looped real-time file (it never ends on its own)
    source = {"id": "cam", "type": "file", "path": str(clips["short"])}
    source.update({"realtime": True, "loop": True, "sample": {"fps": 2}})
    config = pipeline_config(tiny_model, [source])

    # when the pipeline is stopped after its first events
    started = time.monotonic()
    pipeline, events = run_until(config, tmp_path, enough=2)

    # then it finished soon (run_until asserts that) and the stream ended as stopped
    assert events and pipeline.stats["cam"].ended
    assert pipeline.failed_streams == []
    assert time.monotonic() - started < 60


def test_a_realtime_file_behind_the_classifier_drops_the_oldest_and_counts(
    tiny_model, fast_clip, tmp_path
):
    # given a looped real-time 60 fps clip, every frame sampled, with a queue of 2
    source = {"id": "cam", "type": "file", "path": str(fast_clip), "queue_size": 2}
    source.update({"realtime": True, "loop": True, "sample": {"every": 1}})
    config = pipeline_config(tiny_model, [source], max_size=4)
    pipeline_box: list[Pipeline] = []
    release = threading.Event()

    def hold_the_first_event(event: LabelEvent) -> None:
        # A lossless callback that does not return stalls the classifier once the
        # sink's queue is full; the source keeps its pace and must drop, not wait.
        if event.seq == 1:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not pipeline_box[0].stats["cam"].dropped:
                time.sleep(0.05)
            release.set()

    events: list[LabelEvent] = []

    def record(event: LabelEvent) -> None:
        hold_the_first_event(event)
        events.append(event)

    pipeline = Pipeline(load_config(write_config(tmp_path, config)), on_event=record)
    pipeline_box.append(pipeline)
    pipeline.start()
    assert release.wait(60)
    time.sleep(0.5)
    pipeline.stop()
    assert pipeline.wait(STOP_WITHIN_S)

    # then frames were dropped, and each drop is counted in the next event of the stream
    dropped = pipeline.stats["cam"].dropped
    assert dropped > 0
    assert sum(e.dropped for e in events) == dropped
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def test_realtime_runs_from_the_command_line(tiny_model, clips, tmp_path):
    # given a config with a real-time file and a log sink
    out = tmp_path / "events.jsonl"
    source = {"id": "cam", "type": "file", "path": str(clips["short"]), "realtime": True}
    config = pipeline_config(tiny_model, [{**source, "sample": {"fps": 1}}])
    config["sinks"] = [{"type": "log", "path": str(out)}]

    # when labelcast runs it
    result = run_cli("run", str(write_config(tmp_path, config)), timeout=120)

    # then it ends with the file, every sampled frame classified, none dropped
    assert result.returncode == 0, result.stderr
    events = read_events(out)
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert [e["dropped"] for e in events] == [0, 0, 0, 0]


@pytest.mark.parametrize("key", ["realtime", "loop"])
def test_realtime_and_loop_must_be_booleans(tiny_model, clips, tmp_path, key):
    source = {"id": "cam", "type": "file", "path": str(clips["short"]), key: "sometimes"}
    path = write_config(tmp_path, pipeline_config(tiny_model, [source]))
    with pytest.raises(ConfigError, match=rf"sources\[cam\]\.{key}"):
        load_config(path)
