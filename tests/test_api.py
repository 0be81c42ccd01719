"""The Python API: load_config, Pipeline, events as an iterator or through a callback."""

from __future__ import annotations

import threading

import pytest
from helpers import write_config

from labelcast import LabelEvent, Pipeline, load_config


@pytest.fixture
def config_path(tiny_model, clips, tmp_path):
    return write_config(
        tmp_path,
        {
            "name": "api",
            "model": {"id": str(tiny_model)},
            "sources": [
                {"id": "door", "type": "file", "path": str(clips["long"]), "sample": {"fps": 2}},
                {"id": "lobby", "type": "file", "path": str(clips["short"]), "sample": {"fps": 2}},
            ],
            "sinks": [],
        },
    )


def test_iterating_events_yields_every_event_of_every_stream(config_path):
    # Given a config loaded from YAML, when its events are iterated
    events = list(Pipeline(load_config(config_path)).events())
    # Then they are LabelEvents of both streams, 40 + 8, in per-stream order
    assert all(isinstance(e, LabelEvent) for e in events)
    door = [e.seq for e in events if e.stream == "door"]
    lobby = [e.seq for e in events if e.stream == "lobby"]
    assert door == list(range(1, 41)) and lobby == list(range(1, 9))
    first = events[0].to_dict()
    assert first["id"] == f"api/{first['stream']}/{first['run']}/{first['seq']}"
    assert len({e.run for e in events}) == 1


def test_breaking_out_of_the_iterator_stops_the_pipeline(config_path):
    before = {t.name for t in threading.enumerate()}
    pipeline = Pipeline(load_config(config_path, ["sources.door.sample={every: 1}"]))
    taken = []
    for event in pipeline.events():
        taken.append(event)
        if len(taken) == 3:
            break
    # The pipeline has finished and its threads are gone.
    assert pipeline.wait(timeout=10)
    leftover = {t.name for t in threading.enumerate()} - before
    assert not {n for n in leftover if n.startswith(("source:", "sink:", "classifier"))}
    assert pipeline.stats["door"].classified < 600


def test_callback_receives_each_event(config_path):
    received: list[LabelEvent] = []
    pipeline = Pipeline(load_config(config_path), on_event=received.append)
    pipeline.run()
    assert len(received) == 48
    assert pipeline.stats["door"].classified == 40 and pipeline.stats["door"].decoded == 600
    assert not pipeline.failed_streams
