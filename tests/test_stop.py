"""Stopping and failing: a model that fails at inference, a stop past shutdown_timeout_s, a
stop during start-up, and a sink that never returns; through the CLI and the Pipeline API."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PREPROCESSOR_CONFIG, TINY_LABELS
from helpers import read_events, run_cli, write_config

from labelcast import LabelEvent, Pipeline, parse_config
from labelcast.model.classifier import Classifier, ModelConfig


def make_four_channel_beit(directory: Path) -> Path:
    """A tiny BEiT made for 4-channel pictures (RGB-D): it loads, and fails on RGB frames."""
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(
        image_size=224,
        patch_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_channels=4,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    BeitForImageClassification(config).eval().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    return directory


@pytest.fixture(scope="module")
def four_channel_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_four_channel_beit(tmp_path_factory.mktemp("beit-rgbd"))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line]


def file_source(stream: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"id": stream, "type": "file", "path": str(path), "sample": {"every": 1}, **extra}


def test_a_model_failing_at_inference_ends_the_run_with_one_error_and_exit_1(
    four_channel_model, clips, tmp_path
):
    # Given a model that loads but fails on every batch, and file sources whose small
    # queues fill at once (their producers then wait for room)
    out = tmp_path / "events.jsonl"
    config = write_config(
        tmp_path,
        {
            "model": {"id": str(four_channel_model), "device": "cpu"},
            "sources": [
                file_source("door", clips["long"], queue_size=2),
                file_source("lobby", clips["short"], queue_size=2),
            ],
            "sinks": [{"type": "log", "path": str(out)}],
            "shutdown_timeout_s": 5,
        },
    )
    # When it runs
    started = time.monotonic()
    result = run_cli("run", str(config), "--no-progress", timeout=120)
    # Then it stops by itself, exits 1, and one error line names the cause
    assert result.returncode == 1, result.stderr
    errors = error_lines(result.stderr)
    assert len(errors) == 1, result.stderr
    assert "channel dimension" in errors[0] and "Expected 4 but got 3" in errors[0]
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 90
    # And the sink was closed cleanly (nothing was classified, so it holds no event)
    assert out.exists() and read_events(out) == []


class FailsOnThirdBatch(Classifier):
    """The real tiny model, whose forward pass fails on its third batch (as a device fault)."""

    batches = 0

    def forward(self, pixel_values: torch.Tensor, stop: threading.Event | None = None) -> Any:
        type(self).batches += 1
        if type(self).batches == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return super().forward(pixel_values, stop)


def test_a_batch_that_fails_stops_the_pipeline_and_its_sinks_keep_earlier_events(tiny_model, clips):
    # Given a pipeline whose model fails on its third batch; two file streams fill their
    # queues (2 frames) long before that
    config = parse_config(
        json.dumps(
            {
                "model": {"id": str(tiny_model), "device": "cpu", "batch": {"max_size": 2}},
                "sources": [
                    file_source("door", clips["long"], queue_size=2),
                    file_source("lobby", clips["long"], queue_size=2),
                ],
                "sinks": [],
                "shutdown_timeout_s": 5,
            }
        )
    )
    FailsOnThirdBatch.batches = 0
    classifier = FailsOnThirdBatch.load(ModelConfig(id=str(tiny_model), device="cpu"))
    received: list[LabelEvent] = []
    pipeline = Pipeline(config, on_event=received.append, classifier=classifier)
    # When it runs, then it finishes in time and wait() raises the model's error
    pipeline.start()
    with pytest.raises(RuntimeError, match="illegal memory access"):
        assert pipeline.wait(timeout=30), "the pipeline did not finish"
    # And the events of the two batches before reached the sink
    classified = sum(stats.classified for stats in pipeline.stats.values())
    assert 2 <= classified == len(received) <= 4


def test_abort_ends_a_pipeline_whose_sink_never_returns(tiny_model, clips):
    # Given a pipeline whose callback sink blocks forever on its first event
    config = parse_config(
        json.dumps(
            {
                "model": {"id": str(tiny_model), "device": "cpu"},
                "sources": [file_source("door", clips["long"])],
                "sinks": [],
            }
        )
    )
    entered, release = threading.Event(), threading.Event()

    def stuck(event: LabelEvent) -> None:
        entered.set()
        release.wait()

    pipeline = Pipeline(config, on_event=stuck)
    try:
        pipeline.start()
        assert entered.wait(60), "no event reached the sink"
        # When a graceful stop can't finish (the sink's lossless queue fills), and abort() comes
        pipeline.stop()
        assert not pipeline.wait(timeout=1.0)
        started = time.monotonic()
        pipeline.abort()
        # Then the pipeline ends promptly anyway
        assert pipeline.wait(timeout=15), "abort() did not end the pipeline"
        assert time.monotonic() - started < 5
    finally:
        release.set()


class Run:
    """A `labelcast run` subprocess; stderr goes to a file, stdout to a pipe."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.stderr_path = config.with_suffix(".stderr")
        with self.stderr_path.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "labelcast", "run", str(config), "--no-progress"],
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, **(env or {})},
            )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        run.close()


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def make_slow_beit(directory: Path) -> Path:
    """A BEiT large enough that a batch of 16 takes a while on a CPU (about 20 MB)."""
    from transformers import BeitConfig, BeitForImageClassification

    config = BeitConfig(
        image_size=224,
        patch_size=16,
        hidden_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        intermediate_size=1024,
        id2label=dict(enumerate(TINY_LABELS)),
        label2id={label: i for i, label in enumerate(TINY_LABELS)},
    )
    BeitForImageClassification(config).eval().save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR_CONFIG))
    return directory


def test_a_stop_past_shutdown_timeout_exits_1_in_time_without_aborting(
    tmp_path_factory, clips, tmp_path, runs
):
    # Given a run of a model slow enough that a batch is on the CPU when the stop gives
    # up, many frames queued, a sink on stdout that nobody reads (its pipe holds 4 KiB),
    # and one to a file that shows how far the run got
    model = make_slow_beit(tmp_path_factory.mktemp("slow-beit"))
    out = tmp_path / "events.jsonl"
    config = write_config(
        tmp_path,
        {
            "model": {"id": str(model), "device": "cpu", "batch": {"max_size": 16}},
            "sources": [file_source("door", clips["long"], queue_size=256)],
            "sinks": [{"type": "log", "path": str(out)}, {"type": "log", "path": "-"}],
            "shutdown_timeout_s": 1,
        },
    )
    run = Run(config)
    runs.append(run)
    assert run.process.stdout is not None
    fcntl.fcntl(run.process.stdout.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    # Once 32 events are out, the stdout sink holds events its full pipe can't take (an
    # event is over 200 bytes): it is stuck in a write for good, and no stop can finish
    wait_for(lambda: out.exists() and len(read_events(out)) >= 32, 120, "32 events")
    # When SIGINT asks for a graceful stop
    run.process.send_signal(signal.SIGINT)
    started = time.monotonic()
    returncode = run.process.wait(timeout=60)
    # Then labelcast gives up after shutdown_timeout_s, says so, and exits 1 (no abort)
    assert returncode == 1, run.stderr
    assert time.monotonic() - started < 1 + 10
    assert "shutdown took over shutdown_timeout_s" in run.stderr
    assert "terminate called" not in run.stderr and "Fatal Python error" not in run.stderr


@pytest.fixture
def silent_hub() -> Iterator[socket.socket]:
    """A loopback "hub" that takes connections and never answers (a stalled download)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(90)
    yield server
    server.close()


def notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    return receiver, path


def received(receiver: socket.socket) -> list[str]:
    lines: list[str] = []
    while True:
        try:
            lines.extend(receiver.recv(4096).decode().splitlines())
        except BlockingIOError:
            return lines


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_model_load_stops_start_up_at_once(
    clips, tmp_path, runs, silent_hub, signum
):
    # Given a run whose model download has stalled, under systemd (a notify socket)
    receiver, notify_path = notify_socket(tmp_path)
    out = tmp_path / "events.jsonl"
    config = write_config(
        tmp_path,
        {
            "model": {"id": "acme/tiny-beit", "revision": "0" * 40, "device": "cpu"},
            "sources": [file_source("door", clips["short"])],
            "sinks": [{"type": "log", "path": str(out)}],
            "shutdown_timeout_s": 60,
        },
    )
    port = silent_hub.getsockname()[1]
    run = Run(
        config,
        env={
            "HF_ENDPOINT": f"http://127.0.0.1:{port}",
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf"),
            "HF_HUB_ETAG_TIMEOUT": "300",
            "HF_HUB_DOWNLOAD_TIMEOUT": "300",
            "NOTIFY_SOCKET": notify_path,
        },
    )
    runs.append(run)
    connection, _ = silent_hub.accept()  # labelcast is now loading the model
    try:
        # When a stop signal comes
        run.process.send_signal(signum)
        started = time.monotonic()
        returncode = run.process.wait(timeout=30)
    finally:
        connection.close()
    # Then start-up stops at once (not after shutdown_timeout_s), exit 0, no source opened
    assert returncode == 0, run.stderr
    assert time.monotonic() - started < 10
    assert "stopped during start-up" in run.stderr
    assert "online" not in run.stderr
    assert not out.exists() or read_events(out) == []
    messages = received(receiver)
    assert "STOPPING=1" in messages and "READY=1" not in messages
