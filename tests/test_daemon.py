"""Daemon operations: health, readiness and metrics endpoints, systemd notify and watchdog,
graceful stop, and hot reload — through the CLI, the HTTP endpoint and real servers."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_process import start_cli
from helpers import by_stream, free_port, needs, read_events, run_cli, wait_until, write_config
from prometheus_client.parser import text_string_to_metric_families
from rtsp_server import missing_requirements

from labelcast import Pipeline, parse_config
from labelcast.model.classifier import Classifier, ModelConfig
from labelcast.systemd import Notifier, Watchdog

needs_rtsp = needs("gstreamer-rtsp", missing_requirements())


def http(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


class Daemon:
    """A `labelcast run` subprocess with its stderr collected in a file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.stderr_path = config.with_suffix(".stderr")
        self._stderr = self.stderr_path.open("w")
        import os

        self.process = start_cli(
            ["run", str(config), "--no-progress"],
            stderr=self._stderr,
            env={**os.environ, **(env or {})},
        )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def stop(self, timeout: float = 30) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(config: Path, env: dict[str, str] | None = None) -> Daemon:
        daemon = Daemon(config, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


def rtsp_source(stream: str, url: str) -> dict[str, Any]:
    return {
        "id": stream,
        "type": "rtsp",
        "url": url,
        "sample": {"fps": 2},
        "reconnect": {"min_s": 0.2, "max_s": 1.0},
        "stall_timeout_s": 3,
    }


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


@needs_rtsp
def test_readiness_follows_a_source_and_metrics_grow(tiny_model, rtsp_server, tmp_path, daemons):
    # Given labelcast running an RTSP stream with its local endpoint on
    server = rtsp_server()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out = tmp_path / "events.jsonl"
    config = write_config(
        tmp_path,
        {
            "name": "ops",
            "model": {"id": str(tiny_model)},
            "sources": [rtsp_source("cam", server.url)],
            "sinks": [{"type": "log", "path": str(out)}],
            "server": {"bind": f"127.0.0.1:{port}"},
        },
    )
    daemon = daemons(config)
    # Then it becomes ready and healthy
    wait_until(lambda: http(f"{base}/readyz")[0] == 200, 60, "ready")
    status, body = http(f"{base}/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    wait_until(lambda: out.exists() and len(read_events(out)) >= 3, 30, "events")
    first = metric_values(http(f"{base}/metrics")[1])
    key = ("labelcast_frames_classified_total", (("pipeline", "ops"), ("stream", "cam")))
    assert first[key] >= 3
    assert first[("labelcast_latency_seconds_count", ())] >= 3
    assert first[("labelcast_batch_size_count", ())] >= 1
    assert first[("labelcast_ready", (("pipeline", "ops"),))] == 1.0
    # When the camera goes away, readiness turns 503 and names the stream
    server.kill()
    status, body = wait_until(
        lambda: (lambda r: r if r[0] == 503 else None)(http(f"{base}/readyz")), 20, "not ready"
    )
    reasons = json.loads(body)["reasons"]
    assert any("stream cam is reconnecting" in reason for reason in reasons)
    # And when it is back, readiness returns, and the counters have grown
    server.start()
    wait_until(lambda: http(f"{base}/readyz")[0] == 200, 30, "ready again")
    wait_until(
        lambda: metric_values(http(f"{base}/metrics")[1])[key] > first[key] + 2,
        30,
        "more classified frames",
    )
    later = metric_values(http(f"{base}/metrics")[1])
    reconnects = ("labelcast_source_reconnects_total", (("pipeline", "ops"), ("stream", "cam")))
    assert later[reconnects] >= 1
    assert (
        later[("labelcast_latency_seconds_count", ())]
        > first[("labelcast_latency_seconds_count", ())]
    )
    assert daemon.stop() == 0


def notify_socket(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.settimeout(0.2)
    return receiver, path


def collect(receiver: socket.socket, seconds: float) -> list[tuple[float, str]]:
    messages = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = receiver.recv(4096).decode()
        except TimeoutError:
            continue
        messages.extend((time.monotonic(), line) for line in data.splitlines())
    return messages


def test_systemd_gets_ready_watchdog_pings_and_stopping(tiny_model, clips, tmp_path, daemons):
    # Given a real notify socket and a watchdog of 0.4 s (pings every 0.2 s)
    receiver, path = notify_socket(tmp_path)
    config = write_config(
        tmp_path,
        {
            "model": {"id": str(tiny_model)},
            # Three streams of every frame: busy for well over the seconds watched.
            "sources": [
                {"id": s, "type": "file", "path": str(clips["long"]), "sample": {"every": 1}}
                for s in ("a", "b", "c")
            ],
            "sinks": [{"type": "log", "path": str(tmp_path / "events.jsonl")}],
        },
    )
    daemon = daemons(config, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
    # When it runs, READY=1 comes once the model is loaded and the sources started
    wait_until(lambda: "READY=1" in [line for _, line in collect(receiver, 0.2)], 60, "READY=1")
    # Then watchdog pings follow while it classifies
    after_ready = [line for _, line in collect(receiver, 1.5)]
    assert after_ready.count("WATCHDOG=1") >= 4, daemon.stderr
    # And a stop says STOPPING=1
    assert daemon.stop() == 0
    assert "STOPPING=1" in [line for _, line in collect(receiver, 0.5)]


class HangingClassifier(Classifier):
    """The real classifier, which hangs (like a stuck GPU call) once `hang` is set."""

    def __init__(self, inner: Classifier) -> None:
        self.__dict__.update(inner.__dict__)
        self.hang = threading.Event()
        self.release = threading.Event()

    def classify(self, images):  # type: ignore[no-untyped-def]
        if self.hang.is_set():
            self.release.wait(30)
        return super().classify(images)


def test_watchdog_pings_stop_when_the_classifier_hangs(tiny_model, clips, tmp_path):
    # Given a pipeline whose classifier can be made to hang, and the systemd watchdog pinger
    receiver, path = notify_socket(tmp_path)
    classifier = HangingClassifier(Classifier.load(ModelConfig(id=str(tiny_model))))
    config = parse_config(
        json.dumps(
            {
                "model": {"id": str(tiny_model)},
                "classifier_stall_s": 0.5,
                "sinks": [],
                "sources": [
                    {"id": "a", "type": "file", "path": str(clips["long"]), "sample": {"every": 1}}
                ],
            }
        )
    )
    pipeline = Pipeline(config, classifier=classifier)
    notifier = Notifier(path)
    watchdog = Watchdog(notifier, pipeline.liveness, 0.1)
    pipeline.start()
    watchdog.start()
    try:
        # While it classifies, pings flow
        assert sum(line == "WATCHDOG=1" for _, line in collect(receiver, 1.0)) >= 5
        # When the classifier hangs, pings stop within classifier_stall_s (+ one interval)
        classifier.hang.set()
        hung_at = time.monotonic()
        pings = [t for t, line in collect(receiver, 2.5) if line == "WATCHDOG=1"]
        assert pings and max(pings) - hung_at < 0.5 + 0.5
        assert pipeline.liveness()[0] is False
        assert "no progress" in pipeline.liveness()[1]
    finally:
        classifier.release.set()
        pipeline.stop()
        assert pipeline.wait(30)
        watchdog.stop()
        notifier.close()


def test_sigterm_classifies_every_sampled_frame_and_exits_in_time(
    tiny_model, clips, tmp_path, daemons
):
    # Given a run sampling every frame of a 20 s clip
    out = tmp_path / "events.jsonl"
    config = write_config(
        tmp_path,
        {
            "model": {"id": str(tiny_model)},
            "shutdown_timeout_s": 20,
            "sources": [
                {
                    "id": "a",
                    "type": "file",
                    "path": str(clips["long"]),
                    "sample": {"every": 1},
                    "queue_size": 16,
                }
            ],
            "sinks": [{"type": "log", "path": str(out)}],
        },
    )
    daemon = daemons(config)
    wait_until(lambda: out.exists() and len(read_events(out)) >= 10, 60, "events")
    # When SIGTERM comes mid-run
    started = time.monotonic()
    code = daemon.stop()
    # Then it exits 0 within shutdown_timeout_s, and every sampled frame has its event
    assert code == 0, daemon.stderr
    assert time.monotonic() - started < 20
    summary = re.search(
        r"stream a: (\d+) frames decoded, (\d+) sampled, (\d+) classified", daemon.stderr
    )
    assert summary, daemon.stderr
    sampled, classified = int(summary.group(2)), int(summary.group(3))
    events = read_events(out)
    assert len(events) == sampled == classified < 600
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


@needs_rtsp
def test_reload_adds_and_removes_streams_while_the_others_run(
    tiny_model, rtsp_server, tmp_path, daemons
):
    # Given three streams running (one RTSP server per camera)
    cameras = {name: rtsp_server() for name in ("keep", "drop", "add")}
    port = free_port()
    out = tmp_path / "events.jsonl"

    def config(streams: list[str]) -> dict[str, Any]:
        return {
            "name": "reload",
            "model": {"id": str(tiny_model)},
            "sources": [rtsp_source(s, cameras[s].url) for s in streams],
            "sinks": [{"type": "log", "path": str(out)}],
            "server": {"bind": f"127.0.0.1:{port}"},
        }

    path = write_config(tmp_path, config(["keep", "drop"]))
    daemon = daemons(path)

    def count(stream: str) -> int:
        return len(by_stream(read_events(out)).get(stream, [])) if out.exists() else 0

    wait_until(lambda: count("keep") >= 3 and count("drop") >= 3, 60, "both streams")
    # When the config changes (drop removed, add added) and labelcast gets SIGHUP
    write_config(tmp_path, config(["keep", "add"]))
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded:" in daemon.stderr, 30, "the reload")
    dropped_then = count("drop")
    wait_until(lambda: count("add") >= 3, 30, "the added stream")
    kept_then = count("keep")
    # And an invalid config, on SIGHUP and over HTTP (labelcast reload), is rejected
    path.write_text("name: reload\nsources: [{id: x, type: nope}]\n")
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: daemon.stderr.count("reload rejected") == 1, 30, "a rejection")
    result = run_cli("reload", str(write_config(tmp_path, config(["keep"]), "client.yaml")))
    assert result.returncode == 1
    assert daemon.stderr.count("reload rejected") == 2
    assert "sources[x].type" in daemon.stderr.split("reload rejected")[1]
    wait_until(lambda: count("keep") >= kept_then + 3, 30, "keep running on")
    # Then the kept stream ran throughout without a gap, the removed one stopped
    assert daemon.stop() == 0, daemon.stderr
    streams = by_stream(read_events(out))
    assert [e["seq"] for e in streams["keep"]] == list(range(1, len(streams["keep"]) + 1))
    assert len(streams["drop"]) == dropped_then
    assert [e["seq"] for e in streams["add"]] == list(range(1, len(streams["add"]) + 1))
    assert "stream keep: offline" not in daemon.stderr.split("reloaded:")[0]


def test_json_logs_name_pipeline_and_stream_and_repeats_are_counted(tiny_model, clips, tmp_path):
    # Given JSON logs and a stream whose file is missing
    config = write_config(
        tmp_path,
        {
            "name": "logs",
            "model": {"id": str(tiny_model)},
            "log": {"format": "json"},
            "sources": [{"id": "gone", "type": "file", "path": str(tmp_path / "nope.mp4")}],
            "sinks": [],
        },
    )
    result = run_cli("run", str(config))
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    # Then every line is JSON naming the pipeline, and the stream's error names its stream
    assert all(line["pipeline"] == "logs" for line in lines)
    errors = [line for line in lines if line["level"] == "ERROR" and "nope.mp4" in line["message"]]
    assert errors and errors[0]["stream"] == "gone"


def test_repeated_warnings_are_rate_limited_with_a_count(capsys):
    import logging

    from labelcast.logs import LogConfig, apply_log_config

    root = logging.getLogger()
    saved = root.handlers[:]
    apply_log_config(LogConfig(repeat_window_s=0.3), "rl")
    try:
        logger = logging.getLogger("labelcast.test")
        for _ in range(5):
            logger.warning("camera %s unreachable", "door")
        time.sleep(0.35)
        logger.warning("camera %s unreachable", "door")
    finally:
        root.handlers[:] = saved
    lines = [line for line in capsys.readouterr().err.splitlines() if "unreachable" in line]
    assert len(lines) == 2
    assert "[rl]" in lines[0] and "and 4 more like it" in lines[1]
