"""Reloads (SIGHUP, POST /reload, ``Pipeline.reconfigure``): removed streams with queued
frames, changed MQTT sinks against a real broker, and the memory of replaced models."""

from __future__ import annotations

import gc
import json
import logging
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Subscriber, retained
from conftest import PREPROCESSOR_CONFIG, TINY_LABELS
from helpers import require, write_config
from media import photo

from labelcast import LabelEvent, Pipeline, SinkError, load_config
from labelcast.frames import ChangeEvent, LabelState
from labelcast.sinks.outbox import Outbox, hand_over

# -- a removed stream with queued frames ---------------------------------------------------


def test_removing_a_stream_with_queued_frames_classifies_or_counts_each_of_them(
    tiny_model: Path, clips: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given two file streams classifying every frame, "lobby" with a deep queue, and a
    # shutdown_timeout_s far too short for a reload to wait until that queue has drained
    path = write_config(
        tmp_path,
        {
            "name": "removal",
            "model": {"id": str(tiny_model), "device": "cpu", "batch": {"max_size": 4}},
            "sources": [
                {"id": "door", "type": "file", "path": str(clips["long"]), "sample": {"every": 5}},
                {
                    "id": "lobby",
                    "type": "file",
                    "path": str(clips["long"]),
                    "sample": {"every": 1},
                    "queue_size": 256,
                },
            ],
            "labels": {"min_score": 0.0},
            "smoothing": {"method": "none", "min_dwell_s": 0, "min_frames": 1},
            "sinks": [],
            "shutdown_timeout_s": 0.05,
        },
    )
    events: list[LabelEvent] = []
    ends: list[ChangeEvent] = []

    def on_change(change: ChangeEvent, state: LabelState) -> None:
        if change.type == "end":
            ends.append(change)

    pipeline = Pipeline(load_config(path), on_event=events.append, on_change=on_change)
    pipeline.start()
    lobby = pipeline.stats["lobby"]
    try:
        deadline = time.monotonic() + 30
        while pipeline.queue_depth("lobby") < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipeline.queue_depth("lobby") >= 100
        # when a reload removes "lobby" while ~100+ of its frames wait for the classifier
        later = load_config(path)
        later.sources = [source for source in later.sources if source.id == "door"]
        with caplog.at_level(logging.WARNING, logger="labelcast.pipeline.runner"):
            result = pipeline.reconfigure(later)
            # then the pipeline goes on to the end of "door" without a crash or a hang
            assert pipeline.wait(60)
    finally:
        pipeline.abort()
        pipeline.wait(30)

    assert result.removed == ("lobby",)
    assert not pipeline.failed_streams
    door = [e.seq for e in events if e.stream == "door"]
    assert door == list(range(1, 121))
    # and every frame "lobby" queued was classified under its own rules or dropped and
    # counted: none vanished
    classified = [e.seq for e in events if e.stream == "lobby"]
    assert classified == list(range(1, len(classified) + 1))
    counted = sum(
        int(match.group(1))
        for record in caplog.records
        if (match := re.search(r"stream lobby: dropped (\d+) frame", record.getMessage()))
    )
    assert lobby.ended and lobby.sampled == len(classified) + counted
    assert counted > 0  # the reload could not wait for all of them
    # and "lobby" ended its label state once, after its last event
    assert [end.stream for end in ends].count("lobby") == 1


# -- a changed MQTT sink -------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop(signal.SIGKILL)


def _received_seqs(subscriber: Subscriber) -> list[int]:
    """The seqs of the label events received, first occurrence of each id, in order."""
    seen: set[str] = set()
    seqs: list[int] = []
    for message in subscriber.received("/labels"):
        event = message.json()
        if event["id"] not in seen:
            seen.add(event["id"])
            seqs.append(event["seq"])
    return seqs


def test_reloads_that_change_the_mqtt_sink_lose_no_event_and_keep_seq_order(
    tiny_model: Path, clips: dict[str, Path], broker: Broker, tmp_path: Path
) -> None:
    # given a stream of 100 frames played in real time (4 s), each published to a real
    # broker through an outbox (QoS 1), and a subscriber whose session outlives a broker
    # restart
    prefix = f"lc-{uuid.uuid4().hex[:10]}"
    subscriber = Subscriber(broker, [f"{prefix}/#"], persistent=True)
    first_outbox = str(tmp_path / "outbox.sqlite")

    def config(**mqtt: Any) -> Any:
        sink = broker.sink_config(prefix, drain_timeout_s=3, **mqtt)
        source = {"id": "door", "type": "file", "path": str(clips["short"]), "realtime": True}
        return load_config(
            write_config(
                tmp_path,
                {
                    "name": "gw",
                    "model": {"id": str(tiny_model), "device": "cpu"},
                    "sources": [{**source, "sample": {"every": 1}}],
                    "labels": {"min_score": 0.0},
                    "sinks": [sink],
                },
            )
        )

    def received() -> int:
        return len(_received_seqs(subscriber))

    pipeline = Pipeline(config(outbox={"path": first_outbox}))
    pipeline.start()
    door = pipeline.stats["door"]
    try:
        assert subscriber.wait_for(lambda _: received() >= 10, 60)
        # when a reload changes the sink but keeps its outbox (it is handed over) while
        # the broker is away, so the old sink cannot drain its outbox before it closes
        broker.stop(signal.SIGTERM)
        handed = pipeline.reconfigure(config(outbox={"path": first_outbox}, keepalive=31))
        at_first = door.classified
        time.sleep(0.3)
        broker.start()
        assert subscriber.wait_for(lambda _: received() >= at_first + 10, 30)
        # then the pipeline is online, not "stopped" by the sink that left
        assert retained(broker, f"{prefix}/gw/available") == b"online"
        # and when another reload moves the sink to another outbox (both are open a while)
        moved = pipeline.reconfigure(
            config(outbox={"path": str(tmp_path / "other.sqlite")}, keepalive=32)
        )
        at_second = door.classified
        assert pipeline.wait(60)
    finally:
        pipeline.abort()
        pipeline.wait(30)
    assert (handed.sinks_added, handed.sinks_removed) == (1, 1)
    assert (moved.sinks_added, moved.sinks_removed) == (1, 1)
    # (both reloads came while the stream still had frames to classify)
    assert at_first < at_second < door.classified

    # then every event reached the broker, in seq order, none lost across either reload
    subscriber.wait_for(lambda _: received() >= door.classified, 30)
    subscriber.close()
    assert _received_seqs(subscriber) == list(range(1, door.classified + 1))
    assert retained(broker, f"{prefix}/gw/available") == b"stopped"


def test_an_outbox_handed_over_keeps_order_and_republishes_what_was_in_flight(
    tmp_path: Path,
) -> None:
    # given an outbox with two messages handed out (in flight) and one acknowledged
    path = tmp_path / "outbox.sqlite"
    old = Outbox(path, max_bytes=1 << 20, max_age_s=0)
    for n in range(3):
        old.put("t/labels", f"{n}".encode(), qos=1)
    taken = old.take(3)
    old.remove([taken[0].id])
    # when a reload opens a new outbox on the same file, which writes from another thread
    with hand_over():
        new = Outbox(path, max_bytes=1 << 20, max_age_s=0)
        assert old.handing_over and new.take(10) == []
        writer = threading.Thread(target=new.put, args=("t/labels", b"new"), kwargs={"qos": 1})
        writer.start()
        time.sleep(0.2)
        old.put("t/labels", b"3", qos=1)  # the old sink still writes what it was given
        assert writer.is_alive()  # the new one waits for it
        old.close()
        writer.join(5)
    # then the new one owns the file, and hands out everything not acknowledged, in order
    assert [m.payload for m in new.take(10)] == [b"1", b"2", b"3", b"new"]
    assert new.pending == 4
    new.close()

    # and an outbox opened for a reload on a file whose holder stays open refuses writes
    holder = Outbox(path, max_bytes=1 << 20, max_age_s=0)
    with hand_over():
        second = Outbox(path, max_bytes=1 << 20, max_age_s=0)
    with pytest.raises(SinkError, match="in use by another sink"):
        second.put("t/labels", b"x", qos=1)
    assert not holder.handing_over
    holder.put("t/labels", b"kept", qos=1)
    second.close()
    # (outside a reload a second outbox on a held file is refused at once)
    with pytest.raises(SinkError, match="in use"):
        Outbox(path, max_bytes=1 << 20, max_age_s=0)
    holder.close()


# -- replaced models leave memory ----------------------------------------------------------


def _make_large_beit(directory: Path) -> int:
    """Save a BEiT checkpoint of about 170 MB of fp32 weights; return the weights' bytes.

    Its patches are large (4 per picture), so it holds a lot but computes little.
    """
    import torch
    from transformers import BeitConfig, BeitForImageClassification

    torch.manual_seed(0)
    config = BeitConfig(
        image_size=224,
        patch_size=112,
        hidden_size=768,
        num_hidden_layers=2,
        num_attention_heads=12,
        intermediate_size=3072,
        use_mean_pooling=True,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    model = BeitForImageClassification(config).eval()
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    gc.collect()
    return size


@pytest.fixture(scope="module")
def large_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """One large checkpoint under two ids (a directory and a link to it): each load is new."""
    directory = tmp_path_factory.mktemp("large-beit") / "model"
    directory.mkdir()
    size = _make_large_beit(directory)
    link = directory.parent / "same-model"
    link.symlink_to(directory, target_is_directory=True)
    return directory, link, size


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _model_reload_config(tmp_path: Path, model: Path, clip: Path, device: str) -> Any:
    return load_config(
        write_config(
            tmp_path,
            {
                "name": "models",
                "model": {"id": str(model), "device": device, "precision": "fp32"},
                "sources": [
                    {
                        "id": "cam",
                        "type": "file",
                        "path": str(clip),
                        "realtime": True,
                        "loop": True,
                        "sample": {"fps": 5},
                    }
                ],
                "sinks": [],
            },
        )
    )


def test_ten_model_reloads_leave_one_model_in_memory(
    large_model: tuple[Path, Path, int], clips: dict[str, Path], tmp_path: Path
) -> None:
    # given a pipeline running a checkpoint of ~170 MB on the CPU
    directory, link, size = large_model
    events: list[LabelEvent] = []

    def config(model: Path) -> Any:
        return _model_reload_config(tmp_path, model, clips["long"], "cpu")

    def settled_rss() -> int:
        """The least RSS seen over the next five events (frames in flight come and go)."""
        samples = []
        for _ in range(5):
            wanted = len(events) + 1
            deadline = time.monotonic() + 30
            while len(events) < wanted and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(events) >= wanted
            gc.collect()
            samples.append(_rss_bytes())
        return min(samples)

    pipeline = Pipeline(config(directory), on_event=events.append)
    pipeline.start()
    try:
        one_model = settled_rss()
        # when the model is reloaded ten times (alternating two ids of one checkpoint
        # makes each reload load it), classifying on
        for round_ in range(10):
            assert pipeline.reconfigure(config((link, directory)[round_ % 2])).model_reloaded
        after = settled_rss()
    finally:
        pipeline.stop()
        assert pipeline.wait(30)
    # then the memory is back to that of one model, within 10 % of its size
    assert after - one_model < 0.1 * size, f"{(after - one_model) / size:.2f} models more"
    # and the pipeline (and its ``classifier``) ran the last model loaded
    assert pipeline.classifier is not None and pipeline.classifier.info.id == str(directory)
    assert events[-1].model.id == str(directory)


@pytest.mark.gpu
def test_ten_model_reloads_on_cuda_leave_one_model_and_no_copy_threads(
    large_model: tuple[Path, Path, int], clips: dict[str, Path], tmp_path: Path
) -> None:
    import torch

    require("cuda", torch.cuda.is_available(), "no CUDA device")
    from labelcast.model.staging import MAX_COPY_THREADS

    # given a pipeline running a checkpoint of ~170 MB (fp32) on CUDA
    directory, link, size = large_model
    config = _model_reload_config(tmp_path, directory, clips["long"], "cuda")
    pipeline = Pipeline(config)
    pipeline.start()
    # a batch large enough that staging copies it with several threads
    big = [photo("chelsea", (720, 1280))] * 16
    try:
        assert pipeline.classifier is not None
        pipeline.classifier.classify(big)
        torch.cuda.synchronize()
        one_model = torch.cuda.memory_allocated()
        # when the model is reloaded ten times, each one staging a large batch
        for round_ in range(10):
            model = (directory, link)[(round_ + 1) % 2]
            pipeline.reconfigure(_model_reload_config(tmp_path, model, clips["long"], "cuda"))
            assert pipeline.classifier is not None
            pipeline.classifier.classify(big)
        torch.cuda.synchronize()
        after = torch.cuda.memory_allocated()
        copiers = [t for t in threading.enumerate() if t.name.startswith("staging-copy")]
    finally:
        pipeline.stop()
        assert pipeline.wait(30)
    # then the device holds one model (within 10 % of its size), and one stager's threads
    assert after - one_model < 0.1 * size, (after - one_model) / size
    assert len(copiers) <= MAX_COPY_THREADS
