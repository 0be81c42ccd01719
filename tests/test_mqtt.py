"""The MQTT sink against a real Mosquitto: outages, crashes, Last Will, TLS, bounds, discovery."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from broker import Broker, Subscriber, TlsFiles, make_tls_files, retained
from cli_process import CliProcess, start_cli
from conftest import TINY_LABELS

from labelcast import ConfigError, LabelEvent, Pipeline, SinkError, parse_config
from labelcast.frames import Frame, Label, ModelInfo
from labelcast.sinks.mqtt import MqttSink, MqttSinkConfig
from labelcast.sinks.outbox import Outbox

# `labelcast run`'s last lines: "stream door: 600 frames decoded, [...,] 300 classified, ..."
SUMMARY = re.compile(r"stream (\S+): \d+ frames decoded, (?:[^,\n]+, )*?(\d+) classified")


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """A topic prefix no other test uses."""
    return f"lc-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def pipeline_config(
    model: Path,
    sources: dict[str, Path],
    sinks: list[dict[str, Any]],
    *,
    every: int = 1,
    name: str = "gw",
    top_k: int = 3,
) -> dict[str, Any]:
    return {
        "name": name,
        "model": {"id": str(model), "device": "cpu", "batch": {"max_size": 8, "max_wait_ms": 20}},
        "sources": [
            {"id": stream, "type": "file", "path": str(path), "sample": {"every": every}}
            for stream, path in sources.items()
        ],
        "labels": {"top_k": top_k, "min_score": 0.0},
        "sinks": sinks,
    }


class Labelcast:
    """``python -m labelcast run CONFIG`` as a child process, output in files."""

    def __init__(self, folder: Path, config: dict[str, Any], *, env: dict[str, str] | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.config_path = folder / f"pipeline-{uuid.uuid4().hex[:6]}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.stdout_path = folder / f"{self.config_path.stem}.out"
        self.stderr_path = folder / f"{self.config_path.stem}.err"
        self.env = {**os.environ, **(env or {})}
        self.process: CliProcess | subprocess.Popen[bytes] | None = None

    def start(self, command: str = "run") -> Labelcast:
        args = [command, str(self.config_path)]
        if command == "run":
            args.append("--no-progress")
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = start_cli(args, stdout=out, stderr=err, env=self.env)
        return self

    def wait(self, timeout: float = 120) -> int:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"labelcast did not exit in {timeout} s:\n{self.stderr}") from None

    def run(self, command: str = "run", timeout: float = 120) -> int:
        return self.start(command).wait(timeout)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def classified(self) -> dict[str, int]:
        return {m.group(1): int(m.group(2)) for m in SUMMARY.finditer(self.stderr)}

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.kill()
            self.process.wait()


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    assert condition(), f"timed out after {timeout} s waiting for {what}"


def first_occurrences(subscriber: Subscriber) -> dict[str, list[int]]:
    """Per stream, the seqs of the label events received, duplicates (by id) removed."""
    seen: set[str] = set()
    seqs: dict[str, list[int]] = {}
    for message in subscriber.received("/labels"):
        event = message.json()
        if event["id"] in seen:
            continue
        seen.add(event["id"])
        seqs.setdefault(event["stream"], []).append(event["seq"])
    return seqs


# -- delivery across a broker outage and a crash -------------------------------------------


def test_four_streams_lose_nothing_while_the_broker_is_away_10_s(
    tmp_path: Path, broker: Broker, prefix: str, tiny_model: Path, clips: dict[str, Path]
) -> None:
    # Given a persistent-session subscriber and four file streams publishing with QoS 1
    subscriber = Subscriber(broker, [f"{prefix}/#"], persistent=True)
    events_log = tmp_path / "events.jsonl"
    streams = {name: clips["long"] for name in ("door", "lobby", "yard", "dock")}
    mqtt = broker.sink_config(
        prefix, outbox={"path": str(tmp_path / "outbox.sqlite")}, drain_timeout_s=90
    )
    config = pipeline_config(
        tiny_model, streams, [mqtt, {"type": "log", "path": str(events_log)}], every=3
    )
    labelcast = Labelcast(tmp_path / "run", config).start()
    try:
        # When the broker is stopped once events flow, kept away 10 s, and started again.
        # (SIGTERM: mosquitto saves its persistence, so the subscriber's session and what
        # the broker acknowledged survive. A broker SIGKILLed between autosaves loses
        # what it had acknowledged, which no publisher can prevent: see docs/mqtt.md.)
        subscriber.wait_for(lambda m: any(x.topic.endswith("/labels") for x in m), 60)
        assert labelcast.alive, labelcast.stderr
        broker.stop(signal.SIGTERM)
        produced_before = lines(events_log)
        time.sleep(10.5)
        produced_during = lines(events_log) - produced_before
        broker.start()
        assert labelcast.wait(120) == 0, labelcast.stderr
    finally:
        labelcast.kill()
    classified = labelcast.classified()
    total = sum(classified.values())
    subscriber.wait_for(
        lambda _: sum(map(len, first_occurrences(subscriber).values())) >= total, 30
    )
    subscriber.close()

    # Then the pipeline went on classifying while the broker was away,
    assert produced_during > 0
    # and every event id arrived, in seq order per stream, as many as frames classified
    seqs = first_occurrences(subscriber)
    assert set(seqs) == set(streams)
    for stream, received in seqs.items():
        assert received == list(range(1, classified[stream] + 1)), stream
    assert sum(map(len, seqs.values())) == total == lines(events_log)
    assert "connection lost" in labelcast.stderr
    assert retained(broker, f"{prefix}/gw/available") == b"stopped"


def test_sigkill_and_restart_with_the_same_outbox_delivers_every_outboxed_event(
    tmp_path: Path, prefix: str, tiny_model: Path, clips: dict[str, Path]
) -> None:
    # Given labelcast running while its broker is down, so events pile up in the outbox
    broker = Broker(tmp_path / "broker")
    outbox_path = tmp_path / "outbox.sqlite"
    events_log = tmp_path / "events.jsonl"
    mqtt = broker.sink_config(prefix, outbox={"path": str(outbox_path)})
    config = pipeline_config(
        tiny_model,
        {"door": clips["long"], "yard": clips["long"]},
        [mqtt, {"type": "log", "path": str(events_log)}],
    )
    first = Labelcast(tmp_path / "first", config).start()
    try:
        wait_until(lambda: lines(events_log) >= 80, 60, "80 events")
        # When it is SIGKILLed mid-stream
        assert first.alive, first.stderr
        first.kill()
    finally:
        first.kill()
    outbox = Outbox(outbox_path, max_bytes=1 << 30, max_age_s=0)
    outboxed = [m for m in outbox.peek() if m.topic.endswith("/labels")]
    outbox.close()
    assert len(outboxed) >= 40
    assert "connection refused" in first.stderr

    # and restarted with the same outbox once the broker is up
    broker.start()
    try:
        subscriber = Subscriber(broker, [f"{prefix}/#"])
        second = Labelcast(tmp_path / "second", config).start()
        try:
            wanted = {m.payload for m in outboxed}
            assert subscriber.wait_for(lambda got: wanted <= {m.payload for m in got}, 60), (
                second.stderr
            )
            second.signal(signal.SIGTERM)
            assert second.wait(60) == 0, second.stderr
        finally:
            second.kill()
        subscriber.close()
    finally:
        broker.stop(signal.SIGKILL)

    # Then every outboxed event arrived, byte for byte, in seq order per stream,
    # before any event of the new run of that stream
    received = [m.payload for m in subscriber.received("/labels")]
    assert wanted <= set(received)
    for stream in ("door", "yard"):
        # Exact payloads tell the first run's events from the second run's (same ids).
        firsts = list(dict.fromkeys(p for p in received if json.loads(p)["stream"] == stream))
        old = [p for p in firsts if p in wanted]
        assert len(old) == sum(json.loads(p)["stream"] == stream for p in wanted) > 0
        seqs = [json.loads(p)["seq"] for p in old]
        assert seqs == sorted(seqs)
        assert firsts[: len(old)] == old


def test_last_will_offline_on_sigkill_online_on_restart_stopped_on_clean_exit(
    tmp_path: Path, broker: Broker, prefix: str, tiny_model: Path, clips: dict[str, Path]
) -> None:
    available = f"{prefix}/gw/available"
    watcher = Subscriber(broker, [available])
    outbox = {"path": str(tmp_path / "outbox.sqlite")}
    config = pipeline_config(
        tiny_model, {"door": clips["long"]}, [broker.sink_config(prefix, outbox=outbox)]
    )
    # Given labelcast connected: available is online
    first = Labelcast(tmp_path / "first", config).start()
    try:
        assert watcher.wait_for(lambda m: any(x.payload == b"online" for x in m), 60), first.stderr
        # When it is SIGKILLed, the broker publishes the Last Will, retained
        first.kill()
        assert watcher.wait_for(lambda m: bool(m) and m[-1].payload == b"offline", 10)
    finally:
        first.kill()
    assert retained(broker, available) == b"offline"

    # When it starts again: online; and when it ends cleanly: stopped
    config["sources"] = [{"id": "door", "type": "file", "path": str(clips["short"])}]
    second = Labelcast(tmp_path / "second", config).start()
    try:
        assert watcher.wait_for(lambda m: m[-1].payload == b"online", 60), second.stderr
        assert retained(broker, available) == b"online"
        assert second.wait(60) == 0, second.stderr
    finally:
        second.kill()
    assert retained(broker, available) == b"stopped"
    assert [m.payload for m in watcher.received()][-3:] == [b"offline", b"online", b"stopped"]
    watcher.close()


# -- TLS and logins ------------------------------------------------------------------------


@pytest.fixture
def tls_broker(tmp_path: Path, tls_files: TlsFiles) -> Iterator[tuple[Broker, str]]:
    password = f"pw-{uuid.uuid4().hex}"
    broker = Broker(tmp_path / "tls-broker", tls=tls_files, users={"cam": password})
    broker.start()
    yield broker, password
    broker.stop(signal.SIGKILL)


def tls_sink(broker: Broker, prefix: str, ca: Path, tmp_path: Path) -> dict[str, Any]:
    return broker.sink_config(
        prefix,
        username="cam",
        password="${MQTT_PASSWORD}",
        tls={"ca": str(ca)},
        outbox={"path": str(tmp_path / "outbox.sqlite")},
    )


def test_tls_with_the_right_ca_and_password_delivers_and_never_shows_the_password(
    tmp_path: Path,
    tls_broker: tuple[Broker, str],
    tls_files: TlsFiles,
    prefix: str,
    tiny_model: Path,
    clips: dict[str, Path],
) -> None:
    broker, password = tls_broker
    subscriber = Subscriber(
        broker, [f"{prefix}/#"], tls_ca=tls_files.ca, username="cam", password=password
    )
    sink = tls_sink(broker, prefix, tls_files.ca, tmp_path)
    config = pipeline_config(tiny_model, {"door": clips["short"]}, [sink])
    # `labelcast check`'s hook finds the broker reachable and the login accepted
    os.environ["MQTT_PASSWORD"] = password
    try:
        sink_config = parse_config(yaml.safe_dump(config)).sinks[0]
    finally:
        del os.environ["MQTT_PASSWORD"]
    assert isinstance(sink_config, MqttSinkConfig)
    assert MqttSink.check(sink_config) == []

    labelcast = Labelcast(tmp_path / "run", config, env={"MQTT_PASSWORD": password})
    assert labelcast.run() == 0, labelcast.stderr
    classified = labelcast.classified()["door"]
    assert subscriber.wait_for(
        lambda _: len(first_occurrences(subscriber).get("door", [])) >= classified, 10
    )
    assert first_occurrences(subscriber)["door"] == list(range(1, classified + 1))
    subscriber.close()
    assert password not in labelcast.stderr + labelcast.stdout


@pytest.mark.parametrize("problem", ["wrong CA", "wrong password"])
def test_tls_wrong_ca_or_wrong_password_is_one_clear_error_without_the_password(
    problem: str,
    tmp_path: Path,
    tls_broker: tuple[Broker, str],
    tls_files: TlsFiles,
    prefix: str,
    tiny_model: Path,
    clips: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, password = tls_broker
    ca = tls_files.other_ca if problem == "wrong CA" else tls_files.ca
    used_password = password if problem == "wrong CA" else f"{password}-not"
    sink = tls_sink(broker, prefix, ca, tmp_path)
    config = pipeline_config(tiny_model, {"door": clips["short"]}, [sink])

    def clear(message: str) -> bool:
        if problem == "wrong CA":
            return "certificate is not trusted" in message and "tls.ca" in message
        return "refused" in message and "password" in message and "'cam'" in message

    # When a pipeline starts with it (embedded), it fails closed with one clear SinkError
    os.environ["MQTT_PASSWORD"] = used_password
    try:
        pipeline = Pipeline(parse_config(yaml.safe_dump(config)))
    finally:
        del os.environ["MQTT_PASSWORD"]
    with pytest.raises(SinkError) as error:
        pipeline.start()
    assert clear(str(error.value)), str(error.value)
    assert used_password not in str(error.value) + caplog.text

    # and the command line (`run` for one problem, `check` for the other) prints one
    # error line saying what to fix, exits non-zero, and shows no password anywhere
    labelcast = Labelcast(tmp_path / "run", config, env={"MQTT_PASSWORD": used_password})
    command, expected_code = ("run", 1) if problem == "wrong CA" else ("check", 2)
    assert labelcast.run(command, timeout=60) == expected_code, labelcast.stderr
    output = labelcast.stderr + labelcast.stdout
    errors = [line for line in output.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and clear(errors[0]), output
    assert used_password not in output and password not in output
    assert "labelcast.label/1" not in output


# -- bounds --------------------------------------------------------------------------------


def test_outbox_bound_drops_the_oldest_counts_them_and_keeps_the_file_small(
    tmp_path: Path, prefix: str, tiny_model: Path, clips: dict[str, Path]
) -> None:
    # Given a broker that is away for longer than a 16 KiB outbox can cover (with a
    # persistent subscriber, so it misses nothing published right after the restart)
    broker = Broker(tmp_path / "broker")
    broker.start()
    subscriber = Subscriber(broker, [f"{prefix}/#"], persistent=True)
    broker.stop()
    outbox_path = tmp_path / "outbox.sqlite"
    events_log = tmp_path / "events.jsonl"
    mqtt = broker.sink_config(
        prefix, outbox={"path": str(outbox_path), "max_bytes": "16KiB"}, drain_timeout_s=60
    )
    config = pipeline_config(
        tiny_model,
        {"door": clips["long"]},
        [mqtt, {"type": "log", "path": str(events_log)}],
        top_k=10,
    )
    labelcast = Labelcast(tmp_path / "run", config).start()
    sizes: list[tuple[int, int]] = []  # (events classified so far, outbox files' bytes)
    files = [outbox_path, Path(f"{outbox_path}-wal"), Path(f"{outbox_path}-shm")]
    try:
        while labelcast.alive and lines(events_log) < 500:
            size = sum(f.stat().st_size for f in files if f.exists())
            sizes.append((lines(events_log), size))
            time.sleep(0.05)
        # When the broker comes back
        broker.start()
        assert labelcast.wait(90) == 0, labelcast.stderr
    finally:
        labelcast.kill()
        broker.stop(signal.SIGKILL)
    total = labelcast.classified()["door"]
    payload_bytes = (tmp_path / "events.jsonl").stat().st_size
    burst = re.findall(r"dropped (\d+) event\(s\) from the outbox in this burst", labelcast.stderr)

    # Then the oldest events were dropped, counted and logged once for the burst,
    assert labelcast.stderr.count("dropping the oldest events") == 1
    assert len(burst) == 1
    dropped = int(burst[0])
    assert dropped > 0
    assert f"{dropped} dropped by the outbox bounds" in labelcast.stderr
    # the newest ones all arrived,
    subscriber.wait_for(
        lambda _: sum(map(len, first_occurrences(subscriber).values())) >= total - dropped, 10
    )
    # (change events share the bound with label events, so the labels dropped are the
    # oldest up to some seq and number at most what the log says)
    received = first_occurrences(subscriber)["door"]
    assert received == list(range(received[0], total + 1))
    assert 1 < received[0] <= dropped + 1
    subscriber.close()
    # and the outbox files stopped growing once the bound was reached (a WAL of at
    # least 256 KiB comes on top of the data), while the outage produced far more
    early = max(size for n, size in sizes if n < 200)
    late = max(size for n, size in sizes if n >= 200)
    assert payload_bytes > 450_000
    assert late <= early + 64 * 1024, sizes
    assert late < 512 * 1024, sizes


def make_event(stream: str, seq: int) -> LabelEvent:
    labels = tuple(Label(name, 0.1, i) for i, name in enumerate(TINY_LABELS))
    return LabelEvent(
        "gw", "r1", stream, seq, seq / 2, time.time(), 1.0, labels, ModelInfo("m", None, "fp32"), 0
    )


def test_outbox_bound_keeps_memory_flat_while_the_broker_is_unreachable(
    tmp_path: Path, prefix: str
) -> None:
    # Given a sink whose broker never answers and a 64 KiB outbox
    port = Broker(tmp_path / "never-started").port
    config = MqttSinkConfig.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "topic_prefix": prefix,
            "outbox": {"path": str(tmp_path / "outbox.sqlite"), "max_bytes": 65536},
            "drain_timeout_s": 0,
        }
    )
    sink = MqttSink(config)
    frame = Frame("door", 0, 0.0, 0.0, np.zeros((2, 2, 3), np.uint8))
    try:
        # When 2000 events (about 1.4 MB) are sent
        tracemalloc.start()
        for seq in range(1, 501):
            sink.send(make_event("door", seq), frame)
        after_500 = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        for seq in range(501, 2001):
            sink.send(make_event("door", seq), frame)
        per_event_ms = (time.perf_counter() - started) / 1500 * 1000
        after_2000 = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        waiting = sink.outbox.pending_bytes
    finally:
        sink.close()
    # Then Python memory grew by well under the data sent, the outbox stayed in bounds,
    # and send() stayed a fast local write
    assert after_2000 - after_500 < 200_000, after_2000 - after_500
    assert waiting <= 65536
    assert sink.outbox.counters.dropped > 1800
    assert per_event_ms < 20


def test_events_older_than_max_age_are_dropped_not_published(tmp_path: Path, prefix: str) -> None:
    # Given a broker that is away, and a persistent subscriber waiting for it
    broker = Broker(tmp_path / "broker")
    broker.start()
    subscriber = Subscriber(broker, [f"{prefix}/#"], persistent=True)
    broker.stop()
    config = MqttSinkConfig.model_validate(
        {
            **broker.sink_config(prefix, outbox={"path": str(tmp_path / "o.sqlite")}),
            "outbox": {"path": str(tmp_path / "o.sqlite"), "max_age_s": 1.0},
        }
    )
    sink = MqttSink(config)
    frame = Frame("door", 0, 0.0, 0.0, np.zeros((2, 2, 3), np.uint8))
    try:
        # When five events wait longer than max_age_s, and five more are fresh
        for seq in range(1, 6):
            sink.send(make_event("door", seq), frame)
        time.sleep(1.5)
        for seq in range(6, 11):
            sink.send(make_event("door", seq), frame)
        broker.start()
        # Then only the fresh ones are published, and the old ones are counted
        assert subscriber.wait_for(lambda m: len(m) >= 5, 20)
        wait_until(lambda: sink.outbox.pending == 0, 10, "the outbox to drain")
    finally:
        sink.close()
        subscriber.close()
        broker.stop(signal.SIGKILL)
    assert first_occurrences(subscriber) == {"door": [6, 7, 8, 9, 10]}
    assert sink.outbox.counters.dropped_expired == 5


# -- Home Assistant, listen, MQTT 3.1.1, config ----------------------------------------


def test_home_assistant_discovery_publishes_a_sensor_per_stream_that_shows_the_label(
    broker: Broker, prefix: str, tiny_model: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    from jinja2 import Environment

    ha_prefix = f"{prefix}-ha"
    subscriber = Subscriber(broker, [f"{prefix}/#", f"{ha_prefix}/#"])
    sink = broker.sink_config(
        prefix,
        outbox={"path": str(tmp_path / "outbox.sqlite")},
        homeassistant={"discovery": True, "prefix": ha_prefix},
    )
    config = pipeline_config(tiny_model, {"door": clips["short"], "yard": clips["short"]}, [sink])
    pipeline = Pipeline(parse_config(yaml.safe_dump(config)))
    pipeline.run()
    total = sum(stats.classified for stats in pipeline.stats.values())
    subscriber.wait_for(lambda m: sum(x.topic.endswith("/labels") for x in m) >= total, 10)
    subscriber.close()

    configs = {}
    for stream in ("door", "yard"):
        payload = retained(broker, f"{ha_prefix}/sensor/{prefix}_gw/{stream}/config")
        assert payload is not None, stream
        configs[stream] = json.loads(payload)
    assert configs["door"]["unique_id"] != configs["yard"]["unique_id"]
    for stream, discovery in configs.items():
        assert {"name", "state_topic", "unique_id", "availability_topic", "device"} <= set(
            discovery
        )
        assert discovery["availability_topic"] == f"{prefix}/gw/available"
        assert discovery["device"]["identifiers"] and discovery["device"]["name"]
        # The state topic carries the label: retained, and HA's value_template reads it
        assert discovery["state_topic"] == f"{prefix}/gw/{stream}/state"
        states = [m.json() for m in subscriber.received(f"/gw/{stream}/state")]
        labelled = [state for state in states if state["label"] is not None]
        assert labelled, states
        template = Environment().from_string(discovery["value_template"])
        for state in labelled:
            assert template.render(value_json=state) == state["label"]
            assert state["label"] in TINY_LABELS
        # (the pipeline ended, so the last state, retained, is "no label")
        last = json.loads(retained(broker, discovery["state_topic"]) or b"{}")
        assert last == states[-1]
        assert template.render(value_json=last) == (last["label"] or "none")
        changes = [m.json() for m in subscriber.received(f"/gw/{stream}/events")]
        assert [c["label"] for c in changes] == [state["label"] for state in states]
        assert discovery["json_attributes_topic"] == discovery["state_topic"]
        availability = Environment().from_string(discovery["availability_template"])
        assert availability.render(value="stopped") == discovery["payload_not_available"]
        assert availability.render(value="online") == discovery["payload_available"]


def test_listen_prints_the_label_events_of_a_running_pipeline(
    tmp_path: Path, broker: Broker, prefix: str, tiny_model: Path, clips: dict[str, Path]
) -> None:
    sink = broker.sink_config(prefix, outbox={"path": str(tmp_path / "outbox.sqlite")})
    config = pipeline_config(tiny_model, {"door": clips["short"]}, [sink])
    listener = Labelcast(tmp_path / "listen", config)
    listener.config_path.write_text(yaml.safe_dump(config))
    args = ["listen", str(listener.config_path), "--count", "5"]
    with listener.stdout_path.open("wb") as out, listener.stderr_path.open("wb") as err:
        listener.process = start_cli(args, stdout=out, stderr=err)
    try:
        wait_until(lambda: "listening on" in listener.stderr, 60, "listen to subscribe")
        Pipeline(parse_config(yaml.safe_dump(config))).run()
        assert listener.wait(30) == 0, listener.stderr
    finally:
        listener.kill()
    events = [json.loads(line) for line in listener.stdout.splitlines()]
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert {e["schema"] for e in events} == {"labelcast.label/1"}


def test_mqtt_3_1_1_delivers_events_status_and_availability(
    broker: Broker, prefix: str, tiny_model: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    subscriber = Subscriber(broker, [f"{prefix}/#"])
    sink = broker.sink_config(
        prefix, protocol="3.1.1", outbox={"path": str(tmp_path / "outbox.sqlite")}
    )
    config = pipeline_config(tiny_model, {"door": clips["short"]}, [sink])
    pipeline = Pipeline(parse_config(yaml.safe_dump(config)))
    pipeline.run()
    classified = pipeline.stats["door"].classified
    assert subscriber.wait_for(
        lambda _: len(first_occurrences(subscriber).get("door", [])) >= classified, 10
    )
    subscriber.close()
    assert first_occurrences(subscriber)["door"] == list(range(1, classified + 1))
    statuses = [m.json()["state"] for m in subscriber.received("/gw/door/status")]
    assert statuses == ["online", "offline"]
    assert retained(broker, f"{prefix}/gw/door/status") is not None
    assert json.loads(retained(broker, f"{prefix}/gw/door/status") or b"{}")["state"] == "offline"
    assert retained(broker, f"{prefix}/gw/available") == b"stopped"


def test_check_hook_reports_an_unreachable_broker(tmp_path: Path) -> None:
    port = Broker(tmp_path / "never-started").port
    problems = MqttSink.check(MqttSinkConfig(host="127.0.0.1", port=port))
    assert len(problems) == 1 and "connection refused" in problems[0]


def test_config_errors_name_the_field_and_never_echo_the_password() -> None:
    base = "sources: [{id: a, type: file, path: a.mp4}]\nsinks:\n  - {type: mqtt, %s}\n"
    cases = {
        "password: hunter2-secret": "sinks[mqtt]: password: set username too",
        "qos: 3": "sinks[mqtt].qos",
        "topic_prefix: 'a/#'": "sinks[mqtt].topic_prefix",
        "tls: {cert: c.pem}": "set both cert and key",
        "reconnect: {min_s: 5, max_s: 1}": "max_s must be at least min_s",
        "outbox: {max_bytes: lots}": "sinks[mqtt].outbox.max_bytes",
        "hots: x": "sinks[mqtt].hots: unknown key; did you mean sinks[mqtt].host?",
    }
    for snippet, expected in cases.items():
        with pytest.raises(ConfigError) as error:
            parse_config(base % snippet)
        assert expected in str(error.value), (snippet, str(error.value))
        assert "hunter2" not in str(error.value)
    config = parse_config(base % "username: u, password: hunter2-secret, protocol: 5")
    sink = config.sinks[0]
    assert isinstance(sink, MqttSinkConfig)
    assert sink.protocol == "5" and "hunter2" not in repr(sink)


def test_a_second_process_cannot_share_an_outbox(tmp_path: Path) -> None:
    port = Broker(tmp_path / "never-started").port
    config = MqttSinkConfig.model_validate(
        {"port": port, "outbox": {"path": str(tmp_path / "o.sqlite")}, "drain_timeout_s": 0}
    )
    sink = MqttSink(config)
    try:
        with pytest.raises(SinkError, match="in use by another labelcast process"):
            MqttSink(config)
    finally:
        sink.close()


def test_change_events_and_state_agree_between_the_log_sink_and_mqtt(
    broker: Broker, prefix: str, tiny_model: Path, clips: dict[str, Path], tmp_path: Path
) -> None:
    # Given one run with both a log sink (events: true) and an MQTT sink
    log_path = tmp_path / "events.jsonl"
    subscriber = Subscriber(broker, [f"{prefix}/#"])
    sinks = [
        {"type": "log", "path": str(log_path), "events": True},
        broker.sink_config(prefix, outbox={"path": str(tmp_path / "outbox.sqlite")}),
    ]
    config = pipeline_config(tiny_model, {"door": clips["long"]}, sinks, every=15)
    config["smoothing"] = {"method": "none", "min_dwell_s": 0, "min_frames": 1}
    pipeline = Pipeline(parse_config(yaml.safe_dump(config)))
    pipeline.run()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    logged_changes = [line for line in lines if line["schema"] == "labelcast.change/1"]
    subscriber.wait_for(
        lambda m: len([x for x in m if x.topic.endswith("/events")]) >= len(logged_changes), 10
    )
    subscriber.close()
    # Then the slideshow's label changes are the same events in both, in the same order
    mqtt_changes = [m.json() for m in subscriber.received("/gw/door/events")]
    assert len(logged_changes) >= 2  # at least a start and the end at the end of the file
    assert mqtt_changes == logged_changes
    # And each retained state published follows the change that led to it
    states = [m.json() for m in subscriber.received("/gw/door/state")]
    assert [s["label"] for s in states] == [c["label"] for c in logged_changes]
    last = json.loads(retained(broker, f"{prefix}/gw/door/state") or b"{}")
    assert last == states[-1] and last["label"] is None and logged_changes[-1]["type"] == "end"
