"""Label semantics: maps and groups, smoothing, the label state and its change events."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import PREPROCESSOR_CONFIG
from helpers import read_events, run_cli, write_config

from labelcast import ChangeEvent, ConfigError, LabelState, Pipeline, parse_config
from labelcast.frames import Frame, LabelEvent, ModelInfo, StreamStatus
from labelcast.labels.groups import GROUP_MAPS, IMAGENET_COARSE
from labelcast.labels.postprocess import LabelsConfig, Postprocess
from labelcast.labels.smoothing import LabelTracker, SmoothingConfig
from labelcast.pipeline.fanout import SinkWorker

REPO = Path(__file__).parent.parent
IMAGENET_NAMES = [
    line.rstrip("\n")
    for line in (Path(__file__).parent / "data" / "imagenet1k_labels.txt").open(encoding="utf-8")
    if not line.startswith("#")
]
IMAGENET_ID2LABEL = dict(enumerate(IMAGENET_NAMES))
T0 = 1_800_000_000.0  # capture times start here; pts start at 0


# -- feeding score sequences through a tracker --------------------------------------------


def tracker(labels: tuple[str, ...] = ("cat", "dog"), min_score: float = 0.3, **smoothing: Any):
    return LabelTracker(
        SmoothingConfig(**smoothing), labels, min_score, pipeline="p", stream="door", clock="pts"
    )


def feed(track: LabelTracker, rows: list[list[float]], step: float = 0.5) -> list[ChangeEvent]:
    """Frames every ``step`` s of pts; capture times run 5x faster (a file decoded quickly)."""
    changes = []
    for index, row in enumerate(rows):
        change = track.update(
            np.array(row, dtype=np.float32),
            seq=index + 1,
            pts=index * step,
            captured_at=T0 + index * step / 5,
        )
        if change is not None:
            changes.append(change)
    return changes


CAT, DOG, NOTHING = [0.8, 0.1], [0.1, 0.8], [0.2, 0.1]


def summary(changes: list[ChangeEvent]) -> list[tuple[Any, ...]]:
    return [(c.type, c.previous, c.label, c.seq) for c in changes]


def test_flicker_shorter_than_min_dwell_is_ignored_and_a_sustained_change_is_one_event():
    # Given frames every 0.5 s, raw scores, and a label that must lead for 1 s
    track = tracker(method="none", min_dwell_s=1.0, min_frames=1)
    # When the top label flickers to dog for 0.5 s, then changes to dog for good
    rows = [CAT] * 4 + [DOG] * 2 + [CAT] * 3 + [DOG] * 4
    changes = feed(track, rows)
    # Then cat starts after leading 1 s, the flicker is ignored, dog changes once
    assert summary(changes) == [("start", None, "cat", 3), ("change", "cat", "dog", 12)]
    start, change = changes
    assert start.since == T0 and start.duration_s == 0.0
    # since: the capture time of the first dog frame (index 9); duration_s: cat's pts span
    assert change.since == pytest.approx(T0 + 9 * 0.1)
    assert change.duration_s == pytest.approx(4.5)
    assert change.score == pytest.approx(0.8)
    assert track.state == LabelState("p", "door", "dog", change.score, change.since)


def test_flicker_shorter_than_min_frames_is_ignored():
    track = tracker(method="none", min_dwell_s=0.0, min_frames=3)
    changes = feed(track, [CAT] * 3 + [DOG] * 2 + [CAT] + [DOG] * 3)
    assert summary(changes) == [("start", None, "cat", 3), ("change", "cat", "dog", 9)]
    assert changes[1].since == pytest.approx(T0 + 6 * 0.1)
    assert changes[1].duration_s == pytest.approx(3.0)


def test_both_dwell_conditions_must_hold():
    # 3 frames but only 1 s of a 2 s dwell: no change yet; the 5th frame (2 s) confirms it
    track = tracker(method="none", min_dwell_s=2.0, min_frames=3)
    assert feed(track, [DOG] * 4) == []
    change = track.update(np.array(DOG), seq=5, pts=2.0, captured_at=T0 + 2)
    assert change is not None and change.type == "start" and change.since == T0


def test_scores_below_min_score_end_the_state():
    track = tracker(method="none", min_score=0.5, min_dwell_s=0.5, min_frames=2)
    changes = feed(track, [CAT] * 3 + [NOTHING] * 3)
    assert summary(changes) == [("start", None, "cat", 2), ("end", "cat", None, 5)]
    end = changes[1]
    assert end.score is None and end.since == pytest.approx(T0 + 3 * 0.1)
    assert end.duration_s == pytest.approx(1.5)
    assert track.state == LabelState("p", "door", None, None, end.since)


def test_a_label_filtered_out_never_becomes_the_state():
    # Given postprocess that excludes dog: its column is negative and never leads
    post = Postprocess(LabelsConfig(exclude=["dog"]), {0: "cat", 1: "dog"})
    track = LabelTracker(
        SmoothingConfig(method="none", min_dwell_s=0, min_frames=1), post.names, 0.3,
        pipeline="p", stream="door",
    )  # fmt: skip
    scores = post.scores(np.array([CAT, DOG, DOG], dtype=np.float32))
    changes = [track.update(row, seq=i, pts=i, captured_at=T0 + i) for i, row in enumerate(scores)]
    assert [c.type if c else None for c in changes] == [
        "start",
        "end",
        None,
    ]


@pytest.mark.parametrize(
    ("smoothing", "expected"),
    [
        ({"method": "none"}, [("start", None, "cat", 1), ("change", "cat", "dog", 4)]),
        # One frame at dog 0.7 moves the average by a third only: cat stays ahead.
        ({"method": "ema", "alpha": 0.3}, [("start", None, "cat", 1)]),
        ({"method": "window", "window": 4}, [("start", None, "cat", 1)]),
    ],
)
def test_smoothing_absorbs_a_one_frame_spike(smoothing, expected):
    track = tracker(min_dwell_s=0.0, min_frames=1, **smoothing)
    changes = feed(track, [[0.6, 0.3]] * 3 + [[0.2, 0.7]] + [[0.6, 0.3]] * 3)
    if smoothing["method"] == "none":
        expected = [*expected, ("change", "dog", "cat", 5)]
    assert summary(changes) == expected


def test_window_mean_changes_when_the_new_label_leads_on_average():
    # Mean of the last 3 frames: after 2 dog frames dog averages 0.57 against cat's 0.37
    track = tracker(method="window", window=3, min_dwell_s=0.0, min_frames=1)
    changes = feed(track, [[0.9, 0.1]] * 3 + [[0.1, 0.9]] * 3)
    assert summary(changes) == [("start", None, "cat", 1), ("change", "cat", "dog", 5)]
    assert changes[1].score == pytest.approx((0.1 + 0.9 + 0.9) / 3)


def test_wall_clock_measures_dwell_in_capture_time_and_live_sources_use_it():
    assert SmoothingConfig().resolved_clock(live=True) == "wall"
    assert SmoothingConfig().resolved_clock(live=False) == "pts"
    track = LabelTracker(
        SmoothingConfig(min_dwell_s=2.0, min_frames=1, method="none"), ("cat",), 0.3,
        pipeline="p", stream="lobby", clock="wall",
    )  # fmt: skip
    # pts stand still (a live stream that restarted its clock); capture time runs
    results = [
        track.update(np.array([0.9]), seq=i + 1, pts=0.0, captured_at=T0 + i) for i in range(3)
    ]
    assert results[:2] == [None, None]
    assert results[2] is not None and results[2].since == T0


def test_a_clock_that_jumps_back_counts_no_time():
    track = tracker(method="none", min_dwell_s=1.0, min_frames=1)
    assert track.update(np.array(CAT), seq=1, pts=50.0, captured_at=T0) is None
    # a reconnect restarts pts at 0: no second has passed
    assert track.update(np.array(CAT), seq=2, pts=0.0, captured_at=T0 + 1) is None
    change = track.update(np.array(CAT), seq=3, pts=1.0, captured_at=T0 + 2)
    assert change is not None and change.type == "start"


def test_finish_ends_a_labelled_stream_at_its_last_frame():
    track = tracker(method="none", min_dwell_s=0.0, min_frames=1)
    feed(track, [CAT] * 4)
    end = track.finish()
    assert end is not None
    assert (end.type, end.previous, end.label, end.seq) == ("end", "cat", None, 4)
    assert end.duration_s == pytest.approx(1.5)
    assert track.finish() is None  # nothing left to end


def test_change_and_state_payloads():
    change = ChangeEvent("gw", "r1", "door", "change", "dog", "cat", 0.8123456789, T0, 4.5, 12)
    assert change.to_dict() == {
        "schema": "labelcast.change/1",
        "id": "gw/door/r1/12/change",
        "pipeline": "gw",
        "run": "r1",
        "stream": "door",
        "region": None,
        "type": "change",
        "label": "dog",
        "previous": "cat",
        "score": 0.812346,
        "since": "2027-01-15T08:00:00.000Z",
        "duration_s": 4.5,
        "seq": 12,
    }
    assert json.loads(change.to_json()) == change.to_dict()
    # A region's change: its id and payload name the region
    region = dataclasses.replace(change, region="gate")
    assert region.to_dict()["id"] == "gw/door/gate/r1/12/change"
    assert region.to_dict()["region"] == "gate"
    state = LabelState("gw", "door", None, None, T0)
    assert json.loads(state.to_json()) == {
        "label": None,
        "score": None,
        "since": "2027-01-15T08:00:00.000Z",
    }


# -- configuration ------------------------------------------------------------------------


def config(**keys: Any) -> dict[str, Any]:
    return {"sources": [{"id": "door", "type": "file", "path": "x.mp4"}], **keys}


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"smoothing": {"method": "window", "alpha": 0.2}},
            "smoothing: alpha applies to method ema",
        ),
        ({"smoothing": {"window": 3}}, "smoothing: window applies to method window only"),
        ({"smoothing": {"min_frames": 0}}, "smoothing.min_frames"),
        ({"smoothing": {"method": "median"}}, "smoothing.method"),
        ({"smoothing": {"speed": 1}}, "smoothing.speed: unknown key"),
        ({"labels": {"groups": "imagenet-fine"}}, "labels.groups"),
        ({"labels": {"ungrouped": "drop"}}, "labels: ungrouped applies only with groups"),
    ],
)
def test_invalid_label_settings_name_the_field(keys, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(json.dumps(config(**keys)))


def test_a_source_overrides_only_the_keys_it_sets():
    # Given pipeline-wide rules and a source that changes a few keys
    parsed = parse_config(
        json.dumps(
            {
                "labels": {"top_k": 2, "min_score": 0.2, "map": {"tabby, tabby cat": "cat"}},
                "smoothing": {"method": "ema", "alpha": 0.2, "min_dwell_s": 3},
                "sources": [
                    {"id": "door", "type": "file", "path": "x.mp4"},
                    {
                        "id": "lobby",
                        "type": "file",
                        "path": "y.mp4",
                        "labels": {"min_score": 0.6},
                        "smoothing": {"method": "window", "window": 4},
                    },
                ],
            }
        )
    )
    door_labels, door_smoothing = parsed.stream_labels("door")
    lobby_labels, lobby_smoothing = parsed.stream_labels("lobby")
    assert door_labels == parsed.labels and door_smoothing == parsed.smoothing
    # Then the rest is inherited, and a new method does not inherit the old alpha
    assert (lobby_labels.top_k, lobby_labels.min_score) == (2, 0.6)
    assert lobby_labels.map == {"tabby, tabby cat": "cat"}
    assert (lobby_smoothing.method, lobby_smoothing.window, lobby_smoothing.alpha) == (
        "window",
        4,
        None,
    )
    assert lobby_smoothing.min_dwell_s == 3


def test_a_source_override_is_judged_with_what_it_inherits():
    ok = config(smoothing={"method": "window"})
    ok["sources"][0]["smoothing"] = {"window": 8}
    assert parse_config(json.dumps(ok)).stream_labels("door")[1].window == 8
    bad = config()
    bad["sources"][0]["smoothing"] = {"window": 8}
    with pytest.raises(ConfigError, match=r"sources\[door\]\.smoothing: window applies to method"):
        parse_config(json.dumps(bad))


# -- maps and groups ----------------------------------------------------------------------

TINY = {0: "tabby, tabby cat", 1: "Egyptian cat", 2: "tiger cat", 3: "espresso", 4: "cup"}
CAT_MAP = {"tabby, tabby cat": "cat", "Egyptian cat": "cat", "tiger cat": "cat"}


def labels_of(config: LabelsConfig, row: list[float], id2label=TINY) -> dict[str, Any]:
    (labels,) = Postprocess(config, id2label).labels(np.array([row], dtype=np.float32))
    return {label.label: (round(label.score, 6), label.class_id) for label in labels}


def test_mapped_labels_add_their_scores():
    result = labels_of(LabelsConfig(map=CAT_MAP), [0.2, 0.15, 0.1, 0.5, 0.05])
    assert result == {"espresso": (0.5, 3), "cat": (0.45, None), "cup": (0.05, 4)}


def test_include_and_exclude_apply_to_mapped_names():
    row = [0.2, 0.15, 0.1, 0.5, 0.05]
    # "cat" matches no original name, only the mapped one
    assert set(labels_of(LabelsConfig(map=CAT_MAP, include=["cat"]), row)) == {"cat"}
    assert set(labels_of(LabelsConfig(map=CAT_MAP, exclude=["c*"]), row)) == {"espresso"}
    # the originals are gone after mapping: excluding one of them excludes nothing
    assert "cat" in labels_of(LabelsConfig(map=CAT_MAP, exclude=["tiger cat"]), row)


def random_probs(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(1000), size=rows).astype(np.float32)


def group_ids(name: str) -> list[int]:
    return [i for first, last in IMAGENET_COARSE.groups[name] for i in range(first, last + 1)]


def test_group_scores_are_the_sums_of_their_classes():
    probs = random_probs(3)
    post = Postprocess(LabelsConfig(groups="imagenet-coarse", top_k=1000), IMAGENET_ID2LABEL)
    for row, labels in zip(probs, post.labels(probs), strict=True):
        by_name = {label.label: label for label in labels}
        assert by_name["dog"].score == pytest.approx(float(row[151:269].sum()), rel=1e-5)
        assert by_name["dog"].class_id is None
        assert by_name["horse"].class_id == 339  # a one-class group keeps its class id
        # ungrouped classes keep their names: the scores still add up to 1
        assert by_name["hyena, hyaena"].score == pytest.approx(float(row[276]))
        assert sum(label.score for label in labels) == pytest.approx(1.0, rel=1e-4)


def test_ungrouped_classes_can_become_other_or_be_dropped():
    probs = random_probs(1)
    grouped = sorted(set(IMAGENET_COARSE.class_groups()))
    other = Postprocess(
        LabelsConfig(groups="imagenet-coarse", ungrouped="other", top_k=1000), IMAGENET_ID2LABEL
    )
    (labels,) = other.labels(probs)
    names = {label.label: label.score for label in labels}
    assert set(names) == set(IMAGENET_COARSE.groups) | {"other"}
    ungrouped_ids = [i for i in range(1000) if i not in set(grouped)]
    assert names["other"] == pytest.approx(float(probs[0, ungrouped_ids].sum()), rel=1e-5)
    drop = Postprocess(
        LabelsConfig(groups="imagenet-coarse", ungrouped="drop", top_k=1000), IMAGENET_ID2LABEL
    )
    assert set(drop.names) == set(IMAGENET_COARSE.groups)


def test_map_renames_groups_and_a_class_name_in_map_wins_over_its_group():
    probs = random_probs(1)
    post = Postprocess(
        LabelsConfig(
            groups="imagenet-coarse",
            map={"dog": "pet", "cat": "pet", "tabby, tabby cat": "tabby"},
            top_k=1000,
        ),
        IMAGENET_ID2LABEL,
    )
    (labels,) = post.labels(probs)
    names = {label.label: label.score for label in labels}
    assert "dog" not in names and "cat" not in names
    pet_ids = [*group_ids("dog"), *(i for i in group_ids("cat") if i != 281)]
    assert names["pet"] == pytest.approx(float(probs[0, pet_ids].sum()), rel=1e-5)
    assert names["tabby"] == pytest.approx(float(probs[0, 281]))


def test_a_group_map_needs_a_model_with_its_classes():
    with pytest.raises(ConfigError, match=r"1000 \(ImageNet-1k\) classes; this model has 5"):
        Postprocess(LabelsConfig(groups="imagenet-coarse"), TINY)


# -- the shipped group map, against the class names and docs/labels.md --------------------


def documented_groups() -> dict[str, dict[str, Any]]:
    """Parse the group reference of docs/labels.md: heading, id ranges and class list."""
    text = (REPO / "docs" / "labels.md").read_text(encoding="utf-8")
    reference = text.split("## Group reference", 1)[1]
    groups: dict[str, dict[str, Any]] = {}
    for block in reference.split("\n### ")[1:]:
        heading, _, body = block.partition("\n")
        match = re.fullmatch(r"`([^`]+)` \((\d+) class(?:es)?\)", heading.strip())
        assert match, heading
        ranges = re.search(r"^Class ids: (.+)\.$", body, re.MULTILINE)
        classes = re.search(r"^Classes: (.+)$", body, re.MULTILINE)
        assert ranges and classes, heading
        groups[match.group(1)] = {
            "count": int(match.group(2)),
            "ranges": ranges.group(1),
            "classes": [
                (int(item.split(" ", 1)[0]), item.split(" ", 1)[1])
                for item in classes.group(1).split(" · ")
            ],
        }
    return groups


def format_ranges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}\N{EN DASH}{b}" for a, b in ranges)


def test_the_shipped_groups_are_disjoint_and_within_imagenet():
    assert set(GROUP_MAPS) == {"imagenet-coarse"}
    seen: dict[int, str] = {}
    for name, ranges in IMAGENET_COARSE.groups.items():
        for first, last in ranges:
            assert 0 <= first <= last < 1000, name
            for class_id in range(first, last + 1):
                assert class_id not in seen, (class_id, name, seen.get(class_id))
                seen[class_id] = name


def test_docs_list_exactly_the_classes_of_each_shipped_group():
    documented = documented_groups()
    assert list(documented) == list(IMAGENET_COARSE.groups)
    for name, ranges in IMAGENET_COARSE.groups.items():
        ids = group_ids(name)
        doc = documented[name]
        assert doc["count"] == len(ids), name
        assert doc["ranges"] == format_ranges(ranges), name
        assert doc["classes"] == [(i, IMAGENET_NAMES[i].split(",")[0]) for i in ids], name


def short(class_id: int) -> str:
    return IMAGENET_NAMES[class_id].split(",")[0]


def test_the_groups_hold_what_the_docs_claim():
    # dog: the 118 dog breeds, ids 151-268, between the sea lion and the timber wolf
    assert group_ids("dog") == list(range(151, 269))
    assert (short(150), short(151), short(268), short(269)) == (
        "sea lion",
        "Chihuahua",
        "Mexican hairless",
        "timber wolf",
    )
    assert [short(i) for i in group_ids("cat")] == [
        "tabby",
        "tiger cat",
        "Persian cat",
        "Siamese cat",
        "Egyptian cat",
    ]
    bird = {short(i) for i in group_ids("bird")}
    assert {"cock", "hen", "goose", "king penguin", "bald eagle", "hummingbird"} <= bird
    vehicle = {short(i) for i in group_ids("vehicle")}
    assert {"sports car", "cab", "minivan", "school bus", "moped", "mountain bike"} <= vehicle
    assert not {"car wheel", "grille", "mobile home", "bobsled"} & vehicle
    assert {short(i) for i in group_ids("food")} >= {"pizza", "banana", "cheeseburger", "plate"}
    # each range starts and ends where the docs' kind of thing starts and ends
    edges = {
        "fish": ["tench", "stingray", "barracouta", "puffer"],
        "reptile": ["loggerhead", "American alligator", "thunder snake", "sidewinder"],
        "insect": ["tiger beetle", "lycaenid"],
        "primate": ["orangutan", "indri"],
        "fungus": ["coral fungus", "bolete"],
    }
    for group, names in edges.items():
        ends = [short(i) for first, last in IMAGENET_COARSE.groups[group] for i in (first, last)]
        assert ends == names, group
    # 51 triceratops sits inside the reptile ids but is not in the group
    assert short(51) == "triceratops" and 51 not in group_ids("reptile")


def test_imagenet_1k_lacks_the_classes_the_docs_say_it_lacks():
    text = (REPO / "docs" / "labels.md").read_text(encoding="utf-8")
    section = text.split("## What ImageNet-1k lacks", 1)[1].split("\n## ", 1)[0]
    lacking = re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE)
    assert "person" in lacking and "car" in lacking and len(lacking) >= 10
    synonyms = {s.strip().lower() for name in IMAGENET_NAMES for s in name.split(",")}
    assert not set(lacking) & synonyms


def test_group_anchors_match_imagenet_names():
    for class_id, word in IMAGENET_COARSE.anchors.items():
        assert IMAGENET_NAMES[class_id].lower().startswith(word.lower())


# -- sinks --------------------------------------------------------------------------------


class OldSink:
    """A sink from before change events: no send_change."""

    name = "old"
    lossless = True

    def __init__(self) -> None:
        self.events: list[LabelEvent] = []

    def send(self, event: LabelEvent, frame: Frame) -> None:
        self.events.append(event)

    def send_status(self, status: StreamStatus) -> None:
        pass

    def close(self) -> None:
        pass


def test_a_sink_without_send_change_still_gets_its_events():
    sink = OldSink()
    worker = SinkWorker(sink)  # type: ignore[arg-type]
    worker.start()
    event = LabelEvent("p", "r1", "door", 1, 0.0, T0, 1.0, (), ModelInfo("m", None, "fp32"), 0)
    frame = Frame("door", 0, 0.0, T0, np.zeros((2, 2, 3), dtype=np.uint8))
    worker.put(event, frame)
    worker.put_change(
        ChangeEvent("p", "r1", "door", "start", "cat", None, 0.9, T0, 0.0, 1),
        LabelState("p", "door", "cat", 0.9, T0),
    )
    worker.put(event, frame)
    assert worker.close(timeout=5)
    assert sink.events == [event, event] and worker.counters.failed == 0


# -- end to end ---------------------------------------------------------------------------


def replay(events: list[dict[str, Any]], min_dwell_s: float, min_frames: int) -> list[tuple]:
    """The dwell rule, applied to the top labels of label events (smoothing method none)."""
    state: str | None = None
    state_pts = events[0]["pts"]
    pending: tuple[str | None, dict[str, Any]] | None = None
    frames = 0
    result = []
    for event in events:
        top = event["labels"][0] if event["labels"] else None
        candidate = top["label"] if top else None
        if candidate == state:
            pending = None
            continue
        if pending is None or pending[0] != candidate:
            pending, frames = (candidate, event), 0
        frames += 1
        first = pending[1]
        if frames >= min_frames and event["pts"] - first["pts"] >= min_dwell_s - 1e-6:
            kind = "start" if state is None else "end" if candidate is None else "change"
            score = top["score"] if top else None
            duration = pytest.approx(first["pts"] - state_pts, abs=1e-5)
            result.append(
                (kind, state, candidate, score, first["captured_at"], duration, event["seq"])
            )
            state, state_pts, pending = candidate, first["pts"], None
    if state is not None:  # the pipeline ends every labelled stream at its last frame
        last = events[-1]
        duration = pytest.approx(last["pts"] - state_pts, abs=1e-5)
        result.append(("end", state, None, None, last["captured_at"], duration, last["seq"]))
    return result


@pytest.fixture(scope="module")
def smoothed_run(tiny_model, clips, tmp_path_factory) -> dict[str, Any]:
    # Given the 20 s slideshow at 2 fps, raw scores that must lead 1 s and 2 frames,
    # a min_score, and "coffee mug" filtered out (so the last photo has no label)
    folder = tmp_path_factory.mktemp("labels")
    with_changes, without = folder / "with.jsonl", folder / "without.jsonl"
    parsed = parse_config(
        json.dumps(
            {
                "name": "gw",
                "model": {"id": str(tiny_model)},
                "sources": [
                    {"id": "door", "type": "file", "path": str(clips["long"]), "sample": {"fps": 2}}
                ],
                "labels": {"top_k": 1, "min_score": 0.5, "exclude": ["coffee mug"]},
                "smoothing": {"method": "none", "min_dwell_s": 1.0, "min_frames": 2},
                "sinks": [
                    {"type": "log", "path": str(with_changes), "events": True},
                    {"type": "log", "path": str(without)},
                ],
            }
        )
    )
    received: list[tuple[ChangeEvent, LabelState]] = []
    # When it runs to the end
    pipeline = Pipeline(parsed, on_change=lambda change, state: received.append((change, state)))
    pipeline.run()
    return {
        "lines": read_events(with_changes),
        "plain": read_events(without),
        "received": received,
        "states": pipeline.label_states,
    }


def test_change_events_follow_the_label_events_they_summarise(smoothed_run):
    lines = smoothed_run["lines"]
    events = [line for line in lines if line["schema"] == "labelcast.label/1"]
    changes = [line for line in lines if line["schema"] == "labelcast.change/1"]
    assert len(events) == 40 and events == smoothed_run["plain"]
    # Then the changes are exactly what the dwell rule makes of the events' top labels
    expected = replay(events, min_dwell_s=1.0, min_frames=2)
    assert [
        (c["type"], c["previous"], c["label"], c["score"], c["since"], c["duration_s"], c["seq"])
        for c in changes
    ] == expected
    # and there is a start and a change or end, not just the final end
    assert changes[0]["type"] == "start" and len(changes) >= 2
    # and each change line comes right after the label event that confirmed it
    for index, line in enumerate(lines):
        if line["schema"] == "labelcast.change/1":
            before = lines[index - 1]
            assert before["seq"] == line["seq"]
            assert line["id"] == f"gw/door/{line['run']}/{line['seq']}/{line['type']}"


def test_the_api_gets_the_same_changes_with_states_that_match_them(smoothed_run):
    logged = [c for c in smoothed_run["lines"] if c["schema"] == "labelcast.change/1"]
    received = smoothed_run["received"]
    assert [change.to_dict() for change, _ in received] == logged
    for change, state in received:
        assert state.to_dict() == {
            "label": change.to_dict()["label"],
            "score": change.to_dict()["score"],
            "since": change.to_dict()["since"],
        }
    # after the run every stream has ended: the current state is no label
    assert smoothed_run["states"]["door"].label is None


def make_tiny_imagenet_beit(directory: Path) -> Path:
    """A small random BEiT with the 1000 ImageNet-1k classes."""
    import torch
    from transformers import BeitConfig, BeitForImageClassification

    torch.manual_seed(0)
    model = BeitForImageClassification(
        BeitConfig(
            image_size=224,
            patch_size=16,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            use_mean_pooling=True,
            id2label=IMAGENET_ID2LABEL,
            label2id={label: i for i, label in enumerate(IMAGENET_NAMES)},
        )
    ).eval()
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    return directory


def test_groups_end_to_end_with_an_imagenet_checkpoint(clips, tmp_path):
    # Given an ImageNet-1k checkpoint and the coarse groups, ungrouped classes dropped
    model = make_tiny_imagenet_beit(tmp_path / "model")
    parsed = parse_config(
        json.dumps(
            {
                "model": {"id": str(model)},
                "sources": [
                    {"id": "a", "type": "file", "path": str(clips["short"]), "sample": {"fps": 2}}
                ],
                "labels": {"groups": "imagenet-coarse", "ungrouped": "drop", "top_k": 3},
                "smoothing": {"min_dwell_s": 0, "min_frames": 1},
                "sinks": [],
            }
        )
    )
    events: list[LabelEvent] = []
    changes: list[ChangeEvent] = []
    Pipeline(parsed, on_event=events.append, on_change=lambda c, s: changes.append(c)).run()
    # Then every label is a group, and the state follows the groups
    assert len(events) == 8
    assert {label.label for e in events for label in e.labels} <= set(IMAGENET_COARSE.groups)
    assert all(sum(label.score for label in e.labels) <= 1.0 + 1e-5 for e in events)
    assert changes and changes[0].type == "start"
    assert changes[0].label in IMAGENET_COARSE.groups


def test_a_group_map_that_does_not_fit_the_model_fails_at_start(tiny_model, clips):
    parsed = parse_config(
        json.dumps(
            {
                "model": {"id": str(tiny_model)},
                "sources": [{"id": "a", "type": "file", "path": str(clips["short"])}],
                "labels": {"groups": "imagenet-coarse"},
                "sinks": [],
            }
        )
    )
    with pytest.raises(ConfigError, match=r"labels\.groups: imagenet-coarse"):
        Pipeline(parsed).start()


def test_check_reports_a_group_map_that_does_not_fit_the_model(tiny_model, clips, tmp_path):
    path = write_config(
        tmp_path,
        {
            "model": {"id": str(tiny_model)},
            "sources": [{"id": "a", "type": "file", "path": str(clips["short"])}],
            "labels": {"groups": "imagenet-coarse"},
        },
    )
    result = run_cli("check", str(path))
    assert result.returncode == 2, result.stderr
    assert "labels.groups: imagenet-coarse is for checkpoints with 1000" in result.stderr
    assert "Traceback" not in result.stderr
