"""The snapshot sink (issue #18, part 1) and the MQTT sink's ``snapshot: true``: a fixed
camera's scene made from real photos, whose region shows chelsea, then the rocket (4 s),
then chelsea again (8 s), classified by the tiny model; pictures land on the real disk
and a real Mosquitto."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from broker import Broker, Subscriber, retained
from helpers import read_events, run_cli, write_config
from media import make_scene_clip, photo
from PIL import Image

from labelcast import ConfigError, Pipeline, load_config, parse_config
from labelcast.errors import ReportedSinkError
from labelcast.frames import Frame, Label, LabelEvent, ModelInfo
from labelcast.sinks.snapshot import SnapshotSink, SnapshotSinkConfig
from labelcast.util.snapshots import label_folder, snapshot_order, snapshot_stem

ROOT = Path(__file__).resolve().parents[1]
SECONDS = 12.0
CHANGES = (4.0, 8.0)
BOX = (200, 40, 96, 96)  # x, y, w, h of the region "gate" in the 320 x 240 scene
SHOWN = ("chelsea", "rocket", "chelsea")  # what the region shows before, between, after
IMMEDIATE = {"method": "none", "min_frames": 1, "min_dwell_s": 0}


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scene")
    return make_scene_clip(folder / "scene.mp4", seconds=SECONDS, changes=CHANGES, box=BOX)


def pipeline_config(
    model: Path,
    clip: Path,
    sinks: list[dict[str, Any]],
    *,
    smoothing: dict[str, Any] | None = None,
    **source: Any,
) -> dict[str, Any]:
    return {
        "name": "yard",
        "model": {"id": str(model), "device": "cpu", "batch": {"max_size": 8}},
        "sources": [
            {
                "id": "cam",
                "type": "file",
                "path": str(clip),
                "sample": {"fps": 2},
                "regions": [{"id": "gate", "box": list(BOX)}],
                **source,
            }
        ],
        "labels": {"top_k": 2, "min_score": 0.0},
        "smoothing": smoothing if smoothing is not None else IMMEDIATE,
        "sinks": sinks,
    }


def run(cfg: dict[str, Any]) -> Pipeline:
    pipeline = Pipeline(parse_config(yaml.safe_dump(cfg)))
    pipeline.run()
    assert pipeline.error is None
    return pipeline


def snapshots(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every snapshot under ``folder`` with its sidecar, in name order (time order)."""
    found = []
    for picture in sorted(folder.rglob("*.jpg"), key=lambda p: p.name):
        if snapshot_order(picture.stem) is None:
            continue  # not a snapshot
        sidecar = picture.with_suffix(".json")
        assert sidecar.is_file(), f"{picture} has no sidecar"
        found.append((picture, json.loads(sidecar.read_text())))
    return found


def subject_of(region: str | None) -> str:
    return "cam" if region is None else f"cam/{region}"


def shown_at(pts: float) -> str:
    return SHOWN[sum(1 for change in CHANGES if pts >= change - 1e-9)]


def looks_like(picture: Path, name: str) -> bool:
    """Whether a saved region picture is the photo ``name`` rather than the other one."""
    with Image.open(picture) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    distance = {
        other: float(np.abs(pixels - photo(other, (BOX[3], BOX[2])).astype(np.float32)).mean())
        for other in set(SHOWN)
    }
    return min(distance, key=lambda other: distance[other]) == name and distance[name] < 20


def expected_snapshots(
    events: list[dict[str, Any]], *, low_score: float, interval_s: float
) -> dict[tuple[str, int], str]:
    """The documented rules (docs/teach.md), applied to the logged events: which pictures
    are saved, and why: change (a start or change), else low_score, else interval."""
    labels = [e for e in events if e["schema"] == "labelcast.label/1"]
    changes = {
        (subject_of(e["region"]), e["seq"])
        for e in events
        if e["schema"] == "labelcast.change/1" and e["type"] in ("start", "change")
    }
    last_interval: dict[str, float] = {}
    expected = {}
    for event in labels:
        subject = subject_of(event["region"])
        last = last_interval.get(subject)
        due = last is None or event["pts"] < last or event["pts"] - last >= interval_s
        if due:
            last_interval[subject] = event["pts"]
        top = event["labels"][0]["score"] if event["labels"] else None
        reason = "low_score" if top is None or top < low_score else "interval" if due else None
        if (subject, event["seq"]) in changes:
            reason = "change"
        if reason is not None:
            expected[(subject, event["seq"])] = reason
    return expected


# -- the snapshot sink through a pipeline ---------------------------------------------------


def test_change_low_score_and_interval_pictures_are_saved_with_their_events(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    # Given a region and the whole frame, every reason on, and a log of the same run
    log_path, folder = tmp_path / "events.jsonl", tmp_path / "snapshots"
    snapshot = {
        "type": "snapshot",
        "dir": str(folder),
        "on": ["change", "low_score", "interval"],
        "low_score": 0.6,
        "interval_s": 5,
    }
    sinks = [{"type": "log", "path": str(log_path), "events": True}, snapshot]
    # When the clip runs
    run(pipeline_config(tiny_model, scene, sinks, whole_frame=True))
    events = read_events(log_path)
    by_id = {e["id"]: e for e in events if e["schema"] == "labelcast.label/1"}
    saved = snapshots(folder)

    # Then each picture lies at <dir>/<stream>[/<region>]/<predicted label>/<time>.jpg, and
    # its sidecar holds the reason and the very event the log sink wrote
    found: dict[tuple[str, int], str] = {}
    for picture, sidecar in saved:
        event = sidecar["event"]
        assert set(sidecar) == {"schema", "reason", "stream", "region", "label", "event"}
        assert sidecar["schema"] == "labelcast.snapshot/1"
        assert event == by_id[event["id"]]
        assert (sidecar["stream"], sidecar["region"]) == (event["stream"], event["region"])
        assert sidecar["label"] == event["labels"][0]["label"]
        subject = subject_of(event["region"])
        relative = picture.relative_to(folder)
        assert relative.parent == Path(subject) / label_folder(sidecar["label"])
        captured = datetime.fromisoformat(event["captured_at"].replace("Z", "+00:00"))
        assert picture.stem.split("-")[0] == snapshot_stem(captured.timestamp())
        # the subject's picture: the region's crop, or the whole frame
        with Image.open(picture) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert image.size == ((BOX[2], BOX[3]) if event["region"] else (320, 240))
        found[(subject, event["seq"])] = sidecar["reason"]
    # and exactly the pictures the rules name were saved, for the reasons they give
    expected = expected_snapshots(events, low_score=0.6, interval_s=5)
    assert found == expected
    gate = {seq: reason for (subject, seq), reason in found.items() if subject == "cam/gate"}
    assert set(gate.values()) == {"change", "low_score", "interval"}, gate
    assert any(subject == "cam" for subject, _ in found)
    # and the region's change pictures show what the region showed then
    for picture, sidecar in saved:
        if sidecar["region"] == "gate" and sidecar["reason"] == "change":
            assert looks_like(picture, shown_at(sidecar["event"]["pts"])), picture


def test_a_change_is_saved_with_the_picture_that_confirmed_it_even_through_the_gate(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    # Given the change gate and default smoothing: unchanged pictures (never classified)
    # confirm each change, which then names the region's last classified picture
    log_path, folder = tmp_path / "events.jsonl", tmp_path / "snapshots"
    sinks = [
        {"type": "log", "path": str(log_path), "events": True},
        {"type": "snapshot", "dir": str(folder), "on": ["change"]},
    ]
    cfg = pipeline_config(tiny_model, scene, sinks, smoothing={}, gate={"max_interval_s": 60})
    run(cfg)
    changes = [e for e in read_events(log_path) if e["schema"] == "labelcast.change/1"]
    assert [c["type"] for c in changes] == ["start", "change", "change", "end"]
    # Then there is one picture per start or change (none for the end), named by its seq
    saved = snapshots(folder)
    assert [s["event"]["seq"] for _, s in saved] == [c["seq"] for c in changes[:3]]
    assert {s["reason"] for _, s in saved} == {"change"}
    # and each shows the region as it was when the change was confirmed
    assert [looks_like(p, name) for (p, _), name in zip(saved, SHOWN, strict=True)] == [True] * 3


def test_max_files_keeps_the_newest_per_subject_also_across_a_restart(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    # Given every picture saved (no score is below 1.0) and at most 5 per subject
    folder = tmp_path / "snapshots"
    sink = {"type": "snapshot", "dir": str(folder), "on": ["low_score"], "low_score": 1.0}
    cfg = pipeline_config(tiny_model, scene, [{**sink, "max_files": 5}])
    # When the 24 pictures of the region are taken
    first = run(cfg)
    # Then only the newest 5 are left, each with its sidecar
    saved = snapshots(folder)
    assert [s["event"]["seq"] for _, s in saved] == [20, 21, 22, 23, 24]
    assert len(list(folder.rglob("*.json"))) == 5
    # Given a file of the user's own among them, and a restart
    keep = saved[0][0].parent / "keep-me.jpg"
    keep.write_bytes(saved[0][0].read_bytes())
    second = run(cfg)
    assert second.run_id != first.run_id
    # Then the bound still holds, counted with what the first run left on disk
    saved = snapshots(folder)
    assert [s["event"]["seq"] for _, s in saved] == [20, 21, 22, 23, 24]
    assert {s["event"]["run"] for _, s in saved} == {second.run_id}
    assert keep.is_file()  # not named like a snapshot: left alone


def test_an_unwritable_folder_is_one_error_and_the_run_goes_on(
    tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    # Given a snapshot folder that cannot be made (read-only for a user; for root, whom
    # permissions don't stop, a file stands where the folder should be)
    if os.geteuid() == 0:
        (tmp_path / "blocked").write_text("a file, not a folder")
    else:
        (tmp_path / "blocked").mkdir(mode=0o555)
    folder = tmp_path / "blocked" / "snapshots"
    assert SnapshotSink.check(SnapshotSinkConfig(dir=str(folder))) == [
        f"snapshot sink: {tmp_path / 'blocked'} is not writable (dir {folder})"
    ]
    log_path = tmp_path / "events.jsonl"
    sinks = [
        {"type": "snapshot", "dir": str(folder), "on": ["low_score"], "low_score": 1.0},
        {"type": "log", "path": str(log_path)},
    ]
    config = write_config(tmp_path, pipeline_config(tiny_model, scene, sinks))
    # When labelcast runs it
    result = run_cli("run", str(config), "--no-progress")
    # Then it ends 0, the log sink got every event, and the failure is one clear error
    assert result.returncode == 0, result.stderr
    assert len(read_events(log_path)) == 24
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, result.stderr
    assert f"cannot write snapshots to {folder}" in errors[0]
    assert "the pipeline goes on without snapshots" in errors[0]
    assert "Traceback" not in result.stderr
    # and the 24 pictures lost are counted
    assert "0 snapshot(s) saved, 24 failed" in result.stderr


def test_the_example_config_saves_the_porch_pictures(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # configs/teach.yaml as a new user runs it, from the repository root, with the tiny
    # checkpoint in place of the hub's and the folders in a temporary place
    monkeypatch.chdir(ROOT)
    folder = tmp_path / "snapshots"
    overrides = [
        f"model.id={tiny_model}",
        f"sinks.snapshot.dir={folder}",
        f"sinks.log.path={tmp_path / 'events.jsonl'}",
    ]
    pipeline = Pipeline(load_config("configs/teach.yaml", overrides))
    pipeline.run()
    assert pipeline.error is None
    saved = snapshots(folder)
    assert saved and {p.relative_to(folder).parts[:2] for p, _ in saved} == {("yard", "porch")}
    assert "change" in {s["reason"] for _, s in saved}


# -- the sink on its own: outages, moved pictures, folder names -----------------------------


def low_score_event(seq: int, at: float) -> tuple[LabelEvent, Frame]:
    image = photo("chelsea", (120, 160))
    frame = Frame("cam", seq, seq * 0.5, at, image)
    event = LabelEvent(
        pipeline="yard",
        run="run-1",
        stream="cam",
        seq=seq,
        pts=seq * 0.5,
        captured_at=at,
        latency_ms=1.0,
        labels=(Label("gate open", 0.2, 0),),
        model=ModelInfo("tiny", None, "fp32"),
        dropped=0,
    )
    return event, frame


def test_a_failing_disk_is_logged_once_counted_and_its_recovery_noticed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a sink whose folder cannot be made (a file stands in its way)
    blocker = tmp_path / "blocked"
    blocker.write_text("")
    caplog.set_level(logging.INFO, logger="labelcast")
    sink = SnapshotSink(SnapshotSinkConfig(dir=str(blocker / "snaps"), on=["low_score"]))
    # When three pictures are due
    for seq in (1, 2, 3):
        with pytest.raises(ReportedSinkError):
            sink.send(*low_score_event(seq, 1_800_000_000.0 + seq))
    # Then that is one error, the pictures are counted, and readiness hears of it
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "cannot write snapshots to" in errors[0].getMessage()
    assert sink.failed == 3 and not sink.connected
    assert sink.problem is not None and str(blocker) in sink.problem
    # When the disk works again
    blocker.unlink()
    sink.send(*low_score_event(4, 1_800_000_004.0))
    # Then the picture is written and the recovery logged once
    assert sink.connected and sink.problem is None and sink.saved == 1
    assert any("writing snapshots again (3 lost" in r.getMessage() for r in caplog.records)
    assert len(list((blocker / "snaps" / "cam" / "gate open").glob("*.jpg"))) == 1
    sink.close()


def test_pictures_moved_away_are_not_counted_against_max_files(tmp_path: Path) -> None:
    # Given a sink keeping 3 pictures, full
    sink = SnapshotSink(SnapshotSinkConfig(dir=str(tmp_path), on=["low_score"], max_files=3))
    for seq in (1, 2, 3):
        sink.send(*low_score_event(seq, 1_800_000_000.0 + seq))
    folder = tmp_path / "cam" / "gate open"
    # When the labelling page moves two of them into a training folder
    for picture in sorted(folder.glob("*.jpg"))[:2]:
        shutil.move(picture, tmp_path / picture.name)
        picture.with_suffix(".json").unlink()
    sink.send(*low_score_event(4, 1_800_000_004.0))
    sink.send(*low_score_event(5, 1_800_000_005.0))
    # Then nothing was removed to make room (three are there), and the bound still holds
    assert len(list(folder.glob("*.jpg"))) == 3
    sink.send(*low_score_event(6, 1_800_000_006.0))
    names = sorted(p.name for p in folder.glob("*.jpg"))
    assert names == [f"{snapshot_stem(1_800_000_000.0 + s)}.jpg" for s in (4, 5, 6)]
    sink.close()


def test_pictures_taken_in_one_millisecond_get_numbered_names(tmp_path: Path) -> None:
    sink = SnapshotSink(SnapshotSinkConfig(dir=str(tmp_path), on=["low_score"]))
    for seq in (1, 2, 3):
        sink.send(*low_score_event(seq, 1_800_000_000.0))
    stem = snapshot_stem(1_800_000_000.0)
    assert stem == "20270115T080000.000Z"
    names = sorted(p.name for p in (tmp_path / "cam" / "gate open").glob("*.jpg"))
    assert names == [f"{stem}-1.jpg", f"{stem}-2.jpg", f"{stem}.jpg"]
    sink.close()


def test_label_folder_names_are_safe_and_stable() -> None:
    assert label_folder("tabby, tabby cat") == "tabby, tabby cat"
    assert label_folder("open/closed\\half\0way") == "open_closed_half_way"
    assert label_folder("..") == "_."
    assert label_folder(".hidden") == "_hidden"
    assert label_folder("") == "_"
    assert label_folder(None) == "_none"
    long = label_folder("é" * 300)
    assert len(long.encode()) <= 200 and set(long) == {"é"}


# -- MQTT: the latest change's picture, retained, and a Home Assistant image entity ---------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("broker"))
    broker.start()
    yield broker
    broker.stop(signal.SIGKILL)


def test_mqtt_publishes_each_change_picture_retained_and_announces_an_image_entity(
    broker: Broker, tiny_model: Path, scene: Path, tmp_path: Path
) -> None:
    prefix, ha = f"lc-{uuid.uuid4().hex[:10]}", f"ha-{uuid.uuid4().hex[:6]}"
    subscriber = Subscriber(broker, [f"{prefix}/#"])
    mqtt = broker.sink_config(
        prefix,
        snapshot=True,
        outbox={"path": str(tmp_path / "outbox.sqlite")},
        homeassistant={"discovery": True, "prefix": ha},
    )
    # When the scene runs with snapshot: true
    run(pipeline_config(tiny_model, scene, [mqtt]))
    topic = f"{prefix}/yard/cam/gate/snapshot"
    subscriber.wait_for(lambda m: len([x for x in m if x.topic == topic]) >= 3, 10)
    subscriber.close()
    # Then each start and change published its picture (the end did not): the region's
    # crop, as JPEG, showing what the region showed
    pictures = [m.payload for m in subscriber.received("/snapshot")]
    assert len(pictures) == 3
    for payload, name in zip(pictures, SHOWN, strict=True):
        path = tmp_path / f"{name}-{len(payload)}.jpg"
        path.write_bytes(payload)
        with Image.open(io.BytesIO(payload)) as image:
            assert image.format == "JPEG" and image.size == (BOX[2], BOX[3])
        assert looks_like(path, name)
    # and the latest is retained, for whoever subscribes later
    assert retained(broker, topic) == pictures[-1]
    # and Home Assistant is told of an image entity beside the sensor
    node = f"{prefix}_yard"
    image_config = json.loads(retained(broker, f"{ha}/image/{node}/cam_gate/config") or b"{}")
    sensor_config = json.loads(retained(broker, f"{ha}/sensor/{node}/cam_gate/config") or b"{}")
    assert image_config["image_topic"] == topic
    assert image_config["content_type"] == "image/jpeg"
    assert image_config["device"] == sensor_config["device"]
    assert image_config["availability_topic"] == sensor_config["availability_topic"]
    assert image_config["unique_id"] != sensor_config["unique_id"]

    # When it runs again with snapshot: false
    run(pipeline_config(tiny_model, scene, [{**mqtt, "snapshot": False}]))
    # Then the image entity is removed, the sensor stays
    assert retained(broker, f"{ha}/image/{node}/cam_gate/config") is None
    assert retained(broker, f"{ha}/sensor/{node}/cam_gate/config") is not None


def test_config_reads_on_as_written_and_names_bad_values() -> None:
    base = "sources: [{id: a, type: file, path: a.mp4}]\nsinks:\n  - {type: snapshot, %s}\n"
    # YAML 1.1 reads the key `on` as true; the sink takes it as written
    config = parse_config(base % "dir: snaps, on: [change]")
    assert config.sinks[0].on == ["change"]  # type: ignore[attr-defined]
    cases = {
        "dir: snaps, on: [sometimes]": "sinks[snapshot].on[0]",
        "dir: snaps, on: []": "sinks[snapshot].on",
        "dir: snaps, on: [change, change]": "name each reason once",
        "dir: snaps, low_score: 2": "sinks[snapshot].low_score",
        "dir: snaps, max_files: 0": "sinks[snapshot].max_files",
        "on: [change]": "sinks[snapshot].dir",
        "dir: snaps, every: 3": "every",
    }
    for text, named in cases.items():
        with pytest.raises(ConfigError) as raised:
            parse_config(base % text)
        assert named in str(raised.value), (text, str(raised.value))
