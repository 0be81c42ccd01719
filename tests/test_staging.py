"""Overlapping a batch's staging with the previous batch's compute (staging.py, runner).

On CUDA the classifier's ``submit`` returns while the device still works, and the
pipeline forms and submits the next batch before it publishes the one in flight. The
runner's side of that is tested here on the CPU, with a classifier whose ``submit``
also returns before its scores exist (they are computed when ``result()`` is called,
after a pause standing in for the device's time); the CUDA side is tested on a GPU.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import require, write_config
from media import photo

from labelcast import LabelEvent, Pipeline, load_config
from labelcast.frames import ChangeEvent, LabelState
from labelcast.model.classifier import Classifier, ModelConfig

# Seconds a deferred batch "computes": long enough for the sources to queue the next one.
DEVICE_TIME_S = 0.02


class _Later:
    """A batch's result, computed only when asked for (as a device finishes later)."""

    def __init__(self, compute: Callable[[], np.ndarray], owner: DeferredClassifier) -> None:
        self._compute = compute
        self._owner = owner

    def result(self) -> np.ndarray:
        time.sleep(DEVICE_TIME_S)
        probs = self._compute()
        with self._owner.lock:
            self._owner.outstanding -= 1
        return probs


class DeferredClassifier(Classifier):
    """The CPU classifier, made to behave as the CUDA one does: ``submit`` returns at once."""

    def __init__(self, inner: Classifier) -> None:
        self.__dict__.update(inner.__dict__)
        self.lock = threading.Lock()
        self.outstanding = 0  # submitted, result not yet taken
        self.most_outstanding = 0
        self.submitted = 0

    @property
    def overlaps(self) -> bool:
        return True

    def submit(self, images: Sequence[np.ndarray], stop: Any = None) -> Any:
        frames = list(images)
        with self.lock:
            self.outstanding += 1
            self.submitted += 1
            self.most_outstanding = max(self.most_outstanding, self.outstanding)

        def compute() -> np.ndarray:
            with torch.inference_mode():
                return self.forward(self.preprocess(frames)).float().softmax(dim=-1).numpy()

        return _Later(compute, self)


def _config(tmp_path: Path, tiny_model: Path, clips: dict[str, Path], **extra: Any) -> Path:
    return write_config(
        tmp_path,
        {
            "model": {"id": str(tiny_model), "device": "cpu", "batch": {"max_size": 4}},
            "sources": [
                {"id": "door", "type": "file", "path": str(clips["long"]), "sample": {"fps": 5}},
                {"id": "lobby", "type": "file", "path": str(clips["short"]), "sample": {"fps": 5}},
            ],
            "sinks": [],
            **extra,
        },
    )


def _summary(events: list[LabelEvent]) -> list[tuple[str, int, str, float]]:
    return sorted((e.stream, e.seq, e.labels[0].label, round(e.labels[0].score, 5)) for e in events)


def test_a_batch_in_flight_overlaps_the_next_and_every_event_is_the_plain_runs(
    tiny_model: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    # given two file streams, classified once plainly and once by a classifier whose
    # submit returns before its scores exist
    config = load_config(_config(tmp_path, tiny_model, clips))
    plain: list[LabelEvent] = []
    Pipeline(config, on_event=plain.append).run()
    deferred = DeferredClassifier(Classifier.load(config.model))
    overlapped: list[LabelEvent] = []
    pipeline = Pipeline(config, on_event=overlapped.append, classifier=deferred)

    # when it runs
    pipeline.run()

    # then the next batch was submitted while one was in flight, never more than one
    assert deferred.most_outstanding == 2
    # and every submitted batch was completed, none left behind at the end
    assert deferred.outstanding == 0 and deferred.submitted == pipeline.batch_stats.batches
    # and the events are exactly the plain run's: same frames, order, labels and scores
    assert len(overlapped) == len(plain) == 100 + 20
    for stream in ("door", "lobby"):
        seqs = [e.seq for e in overlapped if e.stream == stream]
        assert seqs == list(range(1, len(seqs) + 1))
    assert _summary(overlapped) == _summary(plain)


def test_a_reload_publishes_the_batch_in_flight_under_the_rules_it_was_classified_with(
    tiny_model: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    # given the overlapping classifier on two streams classifying every frame, with
    # events and label changes recorded in the order the sinks get them
    # (no score threshold and no smoothing, so every stream has a state to end)
    path = _config(
        tmp_path,
        tiny_model,
        clips,
        labels={"min_score": 0.0},
        smoothing={"method": "none", "min_dwell_s": 0, "min_frames": 1},
    )
    every = ["sources.door.sample={every: 1}", "sources.lobby.sample={every: 1}"]
    config = load_config(path, every)
    deferred = DeferredClassifier(Classifier.load(config.model))
    log: list[tuple[str, str, int, str]] = []  # (kind, stream, seq, change type)
    first_events = threading.Event()

    def on_event(event: LabelEvent) -> None:
        log.append(("event", event.stream, event.seq, ""))
        if len(log) >= 10:
            first_events.set()

    def on_change(change: ChangeEvent, state: LabelState) -> None:
        log.append(("change", change.stream, change.seq, change.type))

    pipeline = Pipeline(config, on_event=on_event, on_change=on_change, classifier=deferred)
    pipeline.start()
    try:
        assert first_events.wait(30)
        # when the config is reloaded mid-run with "lobby" removed
        later = load_config(path, every)
        later.sources = [source for source in later.sources if source.id == "door"]
        pipeline.reconfigure(later)
        seen = len(log)
        deadline = time.monotonic() + 30
        while len(log) < seen + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pipeline.stop()
        assert pipeline.wait(30)

    # then no event was lost or doubled: each stream's seqs run 1, 2, 3, ... with no gap
    for stream in ("door", "lobby"):
        seqs = [seq for kind, name, seq, _ in log if kind == "event" and name == stream]
        assert seqs == list(range(1, len(seqs) + 1)), stream
    # and "lobby" ended once, at its last event, after which nothing of it came
    lobby = [entry for entry in log if entry[1] == "lobby"]
    ends = [i for i, (kind, _, _, type_) in enumerate(lobby) if type_ == "end"]
    assert ends == [len(lobby) - 1]
    assert lobby[-1][2] == max(seq for kind, _, seq, _ in lobby if kind == "event")
    # and every batch submitted was completed
    assert deferred.outstanding == 0
    assert not pipeline.failed_streams


@pytest.mark.gpu
def test_cuda_staging_of_many_mixed_batches_gives_the_cpu_preprocessing(tiny_model: Path) -> None:
    # given the classifier on CUDA in fp32, and batches of photos of different sizes
    require("cuda", torch.cuda.is_available(), "no CUDA device (this test is marked gpu)")
    gpu = Classifier.load(ModelConfig(id=str(tiny_model), device="cuda", precision="fp32"))
    cpu = Classifier.load(ModelConfig(id=str(tiny_model), device="cpu", precision="fp32"))
    photos = [
        photo(name, size)
        for name in ("chelsea", "coffee", "astronaut", "rocket")
        for size in (None, (150, 200), (480, 640))
    ]
    batches = [
        [photos[(start + i) % len(photos)] for i in range(1 + start % 5)] for start in range(12)
    ]
    # and two batches of 720p frames large enough to be copied by several threads
    big = [photo(name, (720, 1280)) for name in ("chelsea", "coffee", "astronaut", "rocket")]
    batches += [big * 5, big[::-1] * 5]
    assert gpu.overlaps

    # when all are submitted before any result is taken (the pinned slots are reused)
    pending = [gpu.submit(batch) for batch in batches]
    results = [p.result() for p in pending]

    # then each batch's scores are those of the CPU for the same frames
    for batch, probs in zip(batches, results, strict=True):
        reference = cpu.classify(batch)
        assert probs.shape == reference.shape
        assert np.abs(probs - reference).max() < 1e-3
        assert (probs.argmax(axis=1) == reference.argmax(axis=1)).all()
    # and the staged input is the CPU's preprocessing, to the last uint8 level
    staged = gpu.preprocess(batches[3]).cpu()
    assert torch.allclose(staged, cpu.preprocess(batches[3]), atol=1.01 / 255 / 0.5)


@pytest.mark.gpu
def test_a_pipeline_on_cuda_overlaps_batches_and_labels_frames_as_the_cpu_does(
    tiny_model: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    # given two file streams, classified in fp32 on the CPU and on CUDA
    require("cuda", torch.cuda.is_available(), "no CUDA device (this test is marked gpu)")
    path = _config(tmp_path, tiny_model, clips)
    runs: dict[str, list[LabelEvent]] = {}
    for device in ("cpu", "cuda"):
        config = load_config(path, [f"model.device={device}", "model.precision=fp32"])
        classifier = Classifier.load(config.model)
        assert classifier.overlaps is (device == "cuda")
        runs[device] = []
        Pipeline(config, on_event=runs[device].append, classifier=classifier).run()

    # then CUDA, with a batch in flight while the next is staged, gives every event the
    # CPU gives, in order, with the same top label and nearly the same score
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert len(cuda) == len(cpu) == 100 + 20
    for stream in ("door", "lobby"):
        ours = [e for e in cuda if e.stream == stream]
        theirs = [e for e in cpu if e.stream == stream]
        assert [e.seq for e in ours] == list(range(1, len(ours) + 1))
        for a, b in zip(ours, theirs, strict=True):
            assert a.labels[0].label == b.labels[0].label
            assert abs(a.labels[0].score - b.labels[0].score) < 1e-3
