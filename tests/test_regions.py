"""Regions and the change gate, through the command line: a fixed camera's scene made from
real photos, whose region changes at known times while a passer-by crosses elsewhere."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cli_process import start_cli
from helpers import read_events, run_cli, write_config
from media import make_scene_clip, photo

from labelcast import ConfigError, parse_config
from labelcast.frames import Frame, Subject
from labelcast.pipeline.batcher import StreamQueues
from labelcast.pipeline.gate import changed_share, thumbnail

SECONDS = 12.0
CHANGES = (4.0, 8.0)  # the region shows chelsea, then the rocket, then chelsea again
BOX = (200, 40, 96, 96)  # x, y, w, h in the 320 x 240 scene
SAMPLED = int(SECONDS * 2)  # 2 frames/s sampled


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scene")
    return make_scene_clip(folder / "scene.mp4", seconds=SECONDS, changes=CHANGES, box=BOX)


def config(
    model: Path, clip: Path, out: Path, *, smoothing: dict[str, Any] | None = None, **source: Any
) -> dict[str, Any]:
    return {
        "name": "yard",
        "model": {"id": str(model), "device": "cpu", "batch": {"max_size": 8}},
        "sources": [
            {"id": "cam", "type": "file", "path": str(clip), "sample": {"fps": 2}, **source}
        ],
        "labels": {"top_k": 2, "min_score": 0.0},
        "smoothing": smoothing or {},
        "sinks": [{"type": "log", "path": str(out), "events": True}],
    }


def run(tmp_path: Path, cfg: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    result = run_cli("run", str(write_config(tmp_path, cfg)), "--no-progress")
    assert result.returncode == 0, result.stderr
    return read_events(Path(cfg["sinks"][0]["path"])), result.stderr


def labels_of(events: list[dict[str, Any]], region: str | None) -> list[dict[str, Any]]:
    return [e for e in events if e["schema"] == "labelcast.label/1" and e["region"] == region]


def changes_of(events: list[dict[str, Any]], region: str | None) -> list[dict[str, Any]]:
    return [e for e in events if e["schema"] == "labelcast.change/1" and e["region"] == region]


def skipped_in_summary(stderr: str, region: str) -> int:
    match = re.search(rf"pictures skipped: [^\n]*\b{region} (\d+)", stderr)
    return int(match.group(1)) if match else 0


IMMEDIATE = {"method": "none", "min_frames": 1, "min_dwell_s": 0}


def test_a_region_changes_state_when_its_content_changes_and_only_then(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    # Given a region over the part of the scene that changes at 4 s and 8 s, gated,
    # while sensor noise covers every frame and a passer-by crosses outside the region
    out = tmp_path / "events.jsonl"
    cfg = config(
        tiny_model,
        scene,
        out,
        smoothing=IMMEDIATE,
        regions=[{"id": "gate", "box": list(BOX)}],
        gate={"min_change": 0.03, "max_interval_s": 60},
    )
    # When labelcast runs the clip
    events, stderr = run(tmp_path, cfg)
    gate = labels_of(events, "gate")
    # Then only the region is a subject (whole_frame defaults to false with regions)
    assert labels_of(events, None) == []
    # and exactly the first picture and the two changed ones were classified
    assert [e["pts"] for e in gate] == [0.0, 4.0, 8.0]
    assert [e["seq"] for e in gate] == [1, 2, 3]
    assert gate[1]["id"] == f"yard/cam/gate/{gate[1]['run']}/2"
    # and the region's state changed at those times: start, then two changes
    changes = changes_of(events, "gate")
    assert [c["type"] for c in changes] == ["start", "change", "change", "end"]
    seq_pts = {e["seq"]: e["pts"] for e in gate}
    assert [seq_pts[c["seq"]] for c in changes[:3]] == [0.0, 4.0, 8.0]
    assert changes[1]["label"] != changes[1]["previous"] == changes[2]["label"]
    # and every sampled picture was classified or skipped, and said so: the events
    # report the skips before them, the run's summary all of them
    assert skipped_in_summary(stderr, "gate") + len(gate) == SAMPLED
    assert [e["skipped"] for e in gate] == [0, 7, 7]


def test_with_default_smoothing_unchanged_pictures_confirm_a_change_without_the_model(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    # Given the default smoothing (ema, min_frames 2, min_dwell_s 1): a new label must
    # lead for 2 pictures and 1 s before it becomes the state
    out = tmp_path / "events.jsonl"
    cfg = config(
        tiny_model,
        scene,
        out,
        regions=[{"id": "gate", "box": list(BOX)}],
        gate={"max_interval_s": 60},
    )
    events, stderr = run(tmp_path, cfg)
    gate = labels_of(events, "gate")
    changes = changes_of(events, "gate")
    # Only the changed pictures went through the model
    assert [e["pts"] for e in gate] == [0.0, 4.0, 8.0]
    assert skipped_in_summary(stderr, "gate") + len(gate) == SAMPLED
    # yet the unchanged pictures after each confirmed it: the state follows the region
    assert [c["type"] for c in changes] == ["start", "change", "change", "end"]
    assert [c["seq"] for c in changes[:3]] == [1, 2, 3]  # the pictures that showed it
    assert changes[1]["label"] != changes[1]["previous"] == changes[2]["label"]
    # and the state's timeline is the one every picture classified gives (to a picture)
    del cfg["sources"][0]["gate"]
    cfg["sinks"][0]["path"] = str(tmp_path / "ungated.jsonl")
    ungated, _ = run(tmp_path, cfg)
    assert len(labels_of(ungated, "gate")) == SAMPLED
    reference = changes_of(ungated, "gate")
    assert [(c["type"], c["label"]) for c in changes] == [
        (c["type"], c["label"]) for c in reference
    ]
    for gated_change, full in zip(changes, reference, strict=True):
        assert gated_change["duration_s"] == pytest.approx(full["duration_s"], abs=0.51)


def test_the_heartbeat_classifies_an_unchanged_picture_every_max_interval(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    # Given the whole frame (the passer-by changes it) and two regions, one in fractions,
    # one over a part of the scene where nothing but sensor noise happens
    out = tmp_path / "events.jsonl"
    quiet = [20 / 320, 20 / 240, 60 / 320, 60 / 240]
    cfg = config(
        tiny_model,
        scene,
        out,
        smoothing=IMMEDIATE,
        whole_frame=True,
        regions=[{"id": "gate", "box": list(BOX)}, {"id": "wall", "box": quiet}],
        gate={"min_change": 0.03, "max_interval_s": 2},
    )
    events, stderr = run(tmp_path, cfg)
    # The quiet region: its first picture, then one every 2 s of video (heartbeats)
    wall = labels_of(events, "wall")
    assert [e["pts"] for e in wall] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert [e["skipped"] for e in wall] == [0, 3, 3, 3, 3, 3]
    # The changing region: heartbeats and changes, never more than they predict
    gate = labels_of(events, "gate")
    assert [e["pts"] for e in gate] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    # The whole frame: the passer-by changes it more than 3% of the cells every sample
    whole = labels_of(events, None)
    assert len(whole) >= SAMPLED - 4
    for region, subject_events in (("wall", wall), ("gate", gate), (None, whole)):
        seqs = [e["seq"] for e in subject_events]
        assert seqs == list(range(1, len(seqs) + 1)), region
        skipped = skipped_in_summary(stderr, region or "whole frame")
        assert sum(e["skipped"] for e in subject_events) <= skipped
        assert skipped + len(subject_events) == SAMPLED, region
    assert len({e["id"] for e in events}) == len(events)


def test_without_a_gate_every_sampled_picture_of_every_subject_is_classified(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    cfg = config(
        tiny_model,
        scene,
        out,
        whole_frame=True,
        regions=[{"id": "gate", "box": list(BOX)}, {"id": "left", "box": [0, 0, 0.5, 1.0]}],
    )
    cfg["model"]["batch"]["max_size"] = 4  # a frame brings 3 pictures: one frame per batch
    events, _ = run(tmp_path, cfg)
    for region in (None, "gate", "left"):
        subject = labels_of(events, region)
        assert [e["seq"] for e in subject] == list(range(1, SAMPLED + 1)), region
        assert {e["skipped"] for e in subject} == {0}
        assert {e["dropped"] for e in subject} == {0}
    # A region's own picture is classified: the region showing the rocket scores apart
    gate = labels_of(events, "gate")
    whole = labels_of(events, None)
    assert [e["labels"] for e in gate] != [e["labels"] for e in whole]


def test_bad_boxes_and_regions_are_config_errors_that_name_the_field(tiny_model: Path) -> None:
    def problem(**source: Any) -> str:
        cfg = config(tiny_model, Path("clip.mp4"), Path("out.jsonl"), **source)
        with pytest.raises(ConfigError) as caught:
            parse_config(yaml.safe_dump(cfg))
        return str(caught.value)

    assert "sources[cam].regions[a].box: no value may be negative" in problem(
        regions=[{"id": "a", "box": [-1, 0, 5, 5]}]
    )
    message = problem(regions=[{"id": "a", "box": [0.5, 0.5, 0.6, 0.2]}])
    assert "inside the frame" in message
    assert "whole numbers" in problem(regions=[{"id": "a", "box": [10.5, 0, 20, 20]}])
    assert "used twice" in problem(
        regions=[{"id": "a", "box": [0, 0, 10, 10]}, {"id": "a", "box": [0, 0, 5, 5]}]
    )
    assert "sources[cam].regions[0].id" in problem(regions=[{"id": "a/b", "box": [0, 0, 9, 9]}])
    assert "needs at least one region" in problem(whole_frame=False)
    many = [{"id": f"r{i}", "box": [0, 0, 9, 9]} for i in range(9)]
    assert "more than model.batch.max_size (8)" in problem(regions=many)


def test_a_box_outside_the_frame_is_named_by_check_and_by_run(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    out = tmp_path / "events.jsonl"
    cfg = config(tiny_model, scene, out, regions=[{"id": "gate", "box": [300, 200, 64, 64]}])
    path = write_config(tmp_path, cfg)
    checked = run_cli("check", str(path))
    assert checked.returncode == 2
    assert (
        "sources[cam].regions[gate].box: box [300, 200, 64, 64] falls outside the 320x240 frame"
        in checked.stderr
    )
    assert "Traceback" not in checked.stderr
    ran = run_cli("run", str(path), "--no-progress")
    assert ran.returncode != 0
    assert (
        "stream 'cam': region 'gate': box [300, 200, 64, 64] falls outside the 320x240 frame"
        in ran.stderr
    )
    assert "Traceback" not in ran.stderr


# -- the parts, through their public interfaces ----------------------------------------------


def test_the_gate_ignores_noise_and_light_drift_but_sees_a_small_object() -> None:
    rng = np.random.default_rng(1)
    scene = photo("coffee", (720, 1280)).astype(np.float32)

    def shot(base: np.ndarray, brighter: float = 0.0) -> np.ndarray:
        noisy = base + brighter + rng.normal(0, 4.0, base.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)

    reference = thumbnail(shot(scene))
    assert changed_share(reference, thumbnail(shot(scene))) == 0.0
    # The light drifts: every pixel 15 levels brighter
    assert changed_share(reference, thumbnail(shot(scene, 15.0))) == 0.0
    # A 160 x 160 object (2.8% of the frame) appears
    with_object = scene.copy()
    with_object[300:460, 500:660] = photo("astronaut", (160, 160))
    assert changed_share(reference, thumbnail(shot(with_object))) >= 0.02


def test_a_batch_never_holds_more_pictures_than_max_size_and_drops_count_per_subject() -> None:
    queues = StreamQueues()
    queues.add_stream("cam", capacity=2, live=True)
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    subjects = (Subject(), Subject("a", (0, 0, 4, 4), skipped=2), Subject("b", (4, 4, 4, 4)))
    stop = threading.Event()
    for index in range(3):  # the third drops the first (a live queue of two)
        queues.put(Frame("cam", index, index * 0.5, 0.0, image, subjects), stop)
    first = queues.next_batch(4, 0.0)
    assert first is not None and [item.frame.index for item in first] == [1]
    assert first[0].dropped == 1
    assert {s.region: first[0].dropped_before(s) for s in subjects} == {None: 1, "a": 1, "b": 1}
    # the dropped frame's skips are reported with the next picture of the subject
    assert first[0].skipped_before(subjects[1]) == 4
    second = queues.next_batch(4, 0.0)
    assert second is not None and [item.frame.index for item in second] == [2]
    assert second[0].dropped_before(subjects[1]) == 0


# -- regions over MQTT, against a real Mosquitto ----------------------------------------------


def test_regions_get_topics_sensors_and_listen_lines_of_their_own(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    import signal
    import uuid

    from broker import Broker, Subscriber, retained
    from helpers import wait_until

    from labelcast import Pipeline

    prefix = f"lc-{uuid.uuid4().hex[:10]}"
    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        ha = f"{prefix}-ha"
        subscriber = Subscriber(broker, [f"{prefix}/#", f"{ha}/#"])
        sink = broker.sink_config(
            prefix,
            outbox={"path": str(tmp_path / "outbox.sqlite")},
            homeassistant={"discovery": True, "prefix": ha},
        )
        cfg = config(
            tiny_model,
            scene,
            tmp_path / "unused.jsonl",
            smoothing=IMMEDIATE,
            whole_frame=True,
            regions=[{"id": "gate", "box": list(BOX)}],
            gate={"min_change": 0.03, "max_interval_s": 60},
        )
        cfg["sinks"] = [sink]
        config_path = write_config(tmp_path, cfg)
        # labelcast listen, started first, prints the label events of every subject
        listen_out = tmp_path / "listen.out"
        listen_err = tmp_path / "listen.err"
        with listen_out.open("wb") as out, listen_err.open("wb") as err:
            listener = start_cli(
                ["listen", str(config_path), "--count", "6"], stdout=out, stderr=err
            )
        try:
            wait_until(lambda: "listening on" in listen_err.read_text(), 60, "listen to subscribe")
            pipeline = Pipeline(parse_config(yaml.safe_dump(cfg)))
            pipeline.run()
            assert listener.wait(30) == 0, listen_err.read_text()
        finally:
            if listener.poll() is None:
                listener.send_signal(signal.SIGKILL)
                listener.wait()
        gate_events = pipeline.stats["cam"].events["gate"]
        whole_events = pipeline.stats["cam"].events[None]
        # The metrics count each subject's events and skipped pictures
        metrics = pipeline.metrics.exposition().decode()
        skipped = pipeline.stats["cam"].skipped["gate"]
        assert skipped > 0 and skipped + gate_events == SAMPLED
        for name, region, value in (
            ("labelcast_frames_skipped_total", "gate", skipped),
            ("labelcast_label_events_total", "gate", gate_events),
            ("labelcast_label_events_total", "", whole_events),
        ):
            line = f'{name}{{pipeline="yard",region="{region}",stream="cam"}} {float(value)}'
            assert line in metrics, (line, metrics)
        subscriber.wait_for(
            lambda m: sum(x.topic.endswith("/labels") for x in m) >= gate_events + whole_events,
            10,
        )
        subscriber.close()
        # The region's label events have a topic level of their own, the frame's keep theirs
        region_labels = [m.json() for m in subscriber.received("/yard/cam/gate/labels")]
        assert [e["seq"] for e in region_labels] == list(range(1, gate_events + 1))
        assert {e["region"] for e in region_labels} == {"gate"}
        whole_labels = [m.json() for m in subscriber.received("/yard/cam/labels")]
        assert {e["region"] for e in whole_labels} == {None}
        assert len(whole_labels) == whole_events
        # its state (retained) and change events too
        changes = [m.json() for m in subscriber.received("/yard/cam/gate/events")]
        assert [c["type"] for c in changes] == ["start", "change", "change", "end"]
        assert {c["region"] for c in changes} == {"gate"}
        assert retained(broker, f"{prefix}/yard/cam/gate/state") is not None
        # Home Assistant gets a sensor per subject
        discovery = json.loads(
            retained(broker, f"{ha}/sensor/{prefix}_yard/cam_gate/config") or b"{}"
        )
        assert discovery["state_topic"] == f"{prefix}/yard/cam/gate/state"
        whole = json.loads(retained(broker, f"{ha}/sensor/{prefix}_yard/cam/config") or b"{}")
        assert whole["unique_id"] != discovery["unique_id"]
        # and labelcast listen printed both kinds of subjects' events
        printed = [json.loads(line) for line in listen_out.read_text().splitlines()]
        assert len(printed) == 6
        assert {e["region"] for e in printed} == {None, "gate"}
    finally:
        broker.stop(signal.SIGKILL)


def test_the_example_config_classifies_its_regions_when_they_change(tiny_model: Path) -> None:
    # configs/regions.yaml as a new user runs it, from the repository root, with the
    # tiny checkpoint in place of the hub's
    root = Path(__file__).parent.parent
    result = run_cli(
        "run",
        "configs/regions.yaml",
        "--set",
        f"model.id={tiny_model}",
        "--no-progress",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    porch = labels_of(events, "porch")
    assert porch and labels_of(events, None) == []
    # the porch changes at 4 s and 8 s: classified then (and while its state settles)
    assert 4.0 in [e["pts"] for e in porch] and 8.0 in [e["pts"] for e in porch]
    assert not [e for e in porch if 3.5 < e["pts"] < 4.0 or 7.5 < e["pts"] < 8.0]
    assert skipped_in_summary(result.stderr, "porch") + len(porch) == SAMPLED


def test_the_overlay_draws_each_region_with_its_label_once_per_frame(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    import av

    out = tmp_path / "events.jsonl"
    cfg = config(
        tiny_model,
        scene,
        out,
        regions=[{"id": "gate", "box": list(BOX)}, {"id": "path", "box": [0, 184, 144, 56]}],
    )
    video = tmp_path / "video" / "{stream}.mp4"
    cfg["sinks"].append({"type": "overlay", "output": str(video), "lossless": True, "crf": 12})
    events, _ = run(tmp_path, cfg)
    assert len(labels_of(events, "gate")) == len(labels_of(events, "path")) == SAMPLED
    with av.open(str(tmp_path / "video" / "cam.mp4")) as container:
        drawn = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(str(scene)) as container:
        source = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][::5]
    # One frame per sampled frame, though each brought two events
    assert len(drawn) == SAMPLED
    x, y, w, h = BOX
    outline = np.array([0, 220, 255])
    for image, original in zip(drawn, source, strict=True):
        # the box's edges are outlined, its inside carries the label, the rest is the frame
        left_edge = image[y + h // 2, x : x + 2].astype(int)
        assert np.abs(left_edge - outline).max(axis=-1).min() < 50, left_edge
        label_band = image[y + 2 : y + 14, x + 2 : x + w - 2].astype(int)
        assert np.abs(label_band - original[y + 2 : y + 14, x + 2 : x + w - 2]).mean() > 30
        elsewhere = (slice(40, 170), slice(150, 190))
        assert np.abs(image[elsewhere].astype(int) - original[elsewhere]).mean() < 6
