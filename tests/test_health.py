"""Health tells the truth: /readyz and /metrics follow the MQTT sink's broker and publisher,
and `labelcast check` reports every problem it finds — through the CLI and a real Mosquitto."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker
from helpers import free_port, run_cli, write_config
from test_daemon import Daemon, http, metric_values, wait_until

from labelcast.sinks.outbox import Outbox


@pytest.fixture
def daemon_runs(tmp_path: Path) -> Iterator[list[Daemon]]:
    """`labelcast run` processes started by a test, killed at its end."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A Mosquitto on a reserved port, not started: the test starts (and kills) it."""
    broker = Broker(tmp_path / "broker")
    yield broker
    broker.stop(signal.SIGKILL)


def live_config(
    model: Path, clip: Path, sink: dict[str, Any], port: int, name: str
) -> dict[str, Any]:
    """A pipeline that runs until stopped: a clip replayed like a camera, ops endpoint on."""
    return {
        "name": name,
        "model": {"id": str(model), "device": "cpu", "batch": {"max_size": 4, "max_wait_ms": 20}},
        "sources": [
            {
                "id": "cam",
                "type": "file",
                "path": str(clip),
                "realtime": True,
                "loop": True,
                "sample": {"fps": 4},
            }
        ],
        "sinks": [sink],
        "server": {"bind": f"127.0.0.1:{port}"},
    }


def error_lines(daemon: Daemon, word: str) -> list[str]:
    """The daemon's ERROR log lines that contain ``word``."""
    return [line for line in daemon.stderr.splitlines() if " ERROR " in line and word in line]


def sink_metric(metrics: dict[Any, float], metric: str, pipeline: str, sink: str) -> float | None:
    return metrics.get((metric, (("pipeline", pipeline), ("sink", sink))))


def test_readyz_and_metrics_follow_the_broker_down_then_up(
    tiny_model: Path, clips: dict[str, Path], tmp_path: Path, broker: Broker, daemon_runs: list
) -> None:
    # Given labelcast running a camera-like stream into an mqtt sink whose broker is down
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sink = broker.sink_config(
        f"lc-{uuid.uuid4().hex[:10]}",
        outbox={"path": str(tmp_path / "outbox.sqlite")},
        drain_timeout_s=1,  # it stops with the broker away: don't wait for it
    )
    name = f"mqtt:127.0.0.1:{broker.port}"
    config = write_config(tmp_path, live_config(tiny_model, clips["short"], sink, port, "health"))
    daemon = Daemon(config)
    daemon_runs.append(daemon)

    def depth() -> float | None:
        metrics = metric_values(http(f"{base}/metrics")[1])
        return sink_metric(metrics, "labelcast_sink_outbox_depth", "health", name)

    # When events pile up in the outbox
    wait_until(lambda: (depth() or 0) >= 3, 90, "events waiting in the outbox")
    # Then it is not ready, says why, and the metrics say the sink is not connected
    status, body = http(f"{base}/readyz")
    assert status == 503, body
    reasons = json.loads(body)["reasons"]
    assert any(f"sink {name} is not connected" in r and "refused" in r for r in reasons), reasons
    assert json.loads(body)["sinks"] == {name: False}
    metrics = metric_values(http(f"{base}/metrics")[1])
    assert sink_metric(metrics, "labelcast_sink_connected", "health", name) == 0.0
    assert metrics[("labelcast_ready", (("pipeline", "health"),))] == 0.0

    # When the broker comes up
    broker.start()
    # Then it becomes ready, the sink is connected and its outbox drains
    wait_until(lambda: http(f"{base}/readyz")[0] == 200, 30, "ready once the broker is up")
    wait_until(lambda: depth() == 0, 30, "the outbox drained")
    metrics = metric_values(http(f"{base}/metrics")[1])
    assert sink_metric(metrics, "labelcast_sink_connected", "health", name) == 1.0
    assert json.loads(http(f"{base}/readyz")[1])["sinks"] == {name: True}

    # And when the broker goes away again, it is not ready again
    broker.stop(signal.SIGKILL)
    status, body = wait_until(
        lambda: (lambda r: r if r[0] == 503 else None)(http(f"{base}/readyz")), 30, "not ready"
    )
    assert any(f"sink {name} is not connected" in r for r in json.loads(body)["reasons"])
    assert daemon.stop() == 0


def test_a_dead_publisher_is_not_ready_with_its_reason_and_an_error_log(
    tiny_model: Path, clips: dict[str, Path], tmp_path: Path, broker: Broker, daemon_runs: list
) -> None:
    # Given an outbox left with a message the publisher cannot send (a damaged topic)
    outbox_path = tmp_path / "outbox.sqlite"
    outbox = Outbox(outbox_path, max_bytes=1 << 20, max_age_s=0)
    outbox.put("lc/damaged/#", b"{}", qos=1)
    outbox.close()
    broker.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sink = broker.sink_config(f"lc-{uuid.uuid4().hex[:10]}", outbox={"path": str(outbox_path)})
    name = f"mqtt:127.0.0.1:{broker.port}"
    config = write_config(tmp_path, live_config(tiny_model, clips["short"], sink, port, "dead"))
    # When labelcast runs with it, and its publisher dies on that message
    daemon = Daemon(config)
    daemon_runs.append(daemon)
    wait_until(lambda: error_lines(daemon, "publisher"), 90, "the publisher's failure logged")
    # Then readiness says the sink is not connected because its publisher died
    status, body = wait_until(
        lambda: (lambda r: r if r[0] != 0 else None)(http(f"{base}/readyz")), 30, "an answer"
    )
    assert status == 503, body
    reasons = json.loads(body)["reasons"]
    assert any(
        f"sink {name} is not connected" in r and "publisher" in r and "wildcard" in r
        for r in reasons
    ), reasons
    metrics = metric_values(http(f"{base}/metrics")[1])
    assert sink_metric(metrics, "labelcast_sink_connected", "dead", name) == 0.0
    # And it stays so (it does not come back by itself)
    status, _ = http(f"{base}/readyz")
    assert status == 503
    # And the failure is an error in the log
    assert any("wildcard" in line for line in error_lines(daemon, "publisher")), daemon.stderr
    assert daemon.stop() == 0


def test_check_reports_every_missing_file(tiny_model: Path, tmp_path: Path) -> None:
    # Given a config whose two streams name files that do not exist
    config = {
        "model": {"id": str(tiny_model), "device": "cpu"},
        "sources": [
            {"id": "door", "type": "file", "path": str(tmp_path / "door.mp4")},
            {"id": "yard", "type": "file", "path": str(tmp_path / "yard.mp4")},
        ],
        "sinks": [],
    }
    # When it is checked
    result = run_cli("check", str(write_config(tmp_path, config)), timeout=120)
    # Then both are reported, each once
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("door.mp4") == 1, result.stderr
    assert result.stderr.count("yard.mp4") == 1, result.stderr
