"""The webhook sink against a real HTTP server on 127.0.0.1: order, payloads and signature,
outages, a SIGKILL, retries (500, 429, timeouts), permanent rejections, config and secrets."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from broker import TlsFiles, make_tls_files
from cli_process import CliProcess, start_cli
from helpers import by_stream, free_port, read_events, wait_until
from webhook_server import Answer, WebhookServer

from labelcast import ConfigError, LabelEvent, Pipeline, SinkError, parse_config
from labelcast.frames import Frame, Label, ModelInfo
from labelcast.sinks.outbox import Outbox
from labelcast.sinks.webhook import WebhookSink, WebhookSinkConfig

FRAME = Frame("door", 0, 0.0, 0.0, np.zeros((2, 2, 3), np.uint8))


@pytest.fixture
def server() -> Iterator[WebhookServer]:
    server = WebhookServer().start()
    yield server
    server.stop()


def webhook(server: WebhookServer, tmp_path: Path, **settings: Any) -> dict[str, Any]:
    """A webhook sink config for ``server`` with an outbox of this test and fast retries."""
    return {
        "type": "webhook",
        "url": f"{server.url}/hook",
        "outbox": {"path": str(tmp_path / "outbox.sqlite")},
        "retry": {"min_s": 0.05, "max_s": 0.2},
        **settings,
    }


def make_sink(server: WebhookServer, tmp_path: Path, **settings: Any) -> WebhookSink:
    settings.setdefault("events", ["labels"])
    return WebhookSink(WebhookSinkConfig.model_validate(webhook(server, tmp_path, **settings)))


def make_event(stream: str, seq: int) -> LabelEvent:
    labels = (Label("cup", 0.5, 4),)
    model = ModelInfo("m", None, "fp32")
    return LabelEvent("gw", "r1", stream, seq, seq / 2, time.time(), 1.0, labels, model, 0)


def pipeline_config(
    model: Path, sources: dict[str, Path], sinks: list[dict[str, Any]], **sample: Any
) -> dict[str, Any]:
    return {
        "name": "gw",
        "model": {"id": str(model), "device": "cpu", "batch": {"max_size": 8, "max_wait_ms": 20}},
        "sources": [
            {"id": stream, "type": "file", "path": str(path), "sample": sample or {"every": 5}}
            for stream, path in sources.items()
        ],
        "labels": {"top_k": 3, "min_score": 0.0},
        # Every change of the top label is a change event: a short clip has several.
        "smoothing": {"method": "none", "min_dwell_s": 0, "min_frames": 1},
        "sinks": sinks,
    }


def first_seqs(events: list[dict[str, Any]], schema: str = "labelcast.label/1") -> dict:
    """Per stream, the seqs of the events of ``schema`` in arrival order, repeats removed."""
    seen: set[str] = set()
    seqs: dict[str, list[int]] = {}
    for event in events:
        if event.get("schema") != schema or event["id"] in seen:
            continue
        seen.add(event["id"])
        seqs.setdefault(event["stream"], []).append(event["seq"])
    return seqs


# -- payloads, order, signature ------------------------------------------------------------


def test_events_arrive_in_order_as_the_log_sink_writes_them_signed_with_keep_alive(
    tmp_path: Path,
    server: WebhookServer,
    tiny_model: Path,
    clips: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a pipeline of two streams with a log sink (changes too) and a webhook sink
    # sending every kind of event, signed, with a bearer token from the environment
    monkeypatch.setenv("HOOK_TOKEN", "token-3f9a")
    monkeypatch.setenv("HOOK_SECRET", "secret-77c1")
    log_path = tmp_path / "events.jsonl"
    sinks = [
        {"type": "log", "path": str(log_path), "events": True},
        webhook(
            server,
            tmp_path,
            events=["labels", "change", "status"],
            headers={"Authorization": "Bearer ${HOOK_TOKEN}"},
            secret="${HOOK_SECRET}",
        ),
    ]
    config = pipeline_config(tiny_model, {"door": clips["short"], "yard": clips["short"]}, sinks)
    # When it runs to the end (closing the sink waits for the outbox to drain)
    Pipeline(parse_config(yaml.safe_dump(config))).run()

    requests = server.requests()
    logged = log_path.read_bytes().splitlines()
    events = [r for r in requests if r.headers["X-Labelcast-Event"] != "status"]
    # Then each label and change event is one request whose body is the log sink's line,
    # in the same order, each answered 200 once
    assert len(logged) > 20
    assert [r.body for r in events] == logged
    assert {r.status for r in requests} == {200}
    kinds = {"labelcast.label/1": "labels", "labelcast.change/1": "change"}
    assert {"labels", "change"} == {kinds[r.json()["schema"]] for r in events}
    for request in events:
        body = request.json()
        assert request.headers["X-Labelcast-Event"] == kinds[body["schema"]]
        assert request.headers["X-Labelcast-Id"] == body["id"]
        assert request.headers["Content-Type"] == "application/json"
        assert request.path == "/hook"
    # and each stream's status went online then offline, with an id of its own
    statuses = [r for r in requests if r.headers["X-Labelcast-Event"] == "status"]
    for stream in ("door", "yard"):
        mine = [r.json() for r in statuses if r.json()["stream"] == stream]
        assert [s["state"] for s in mine] == ["online", "offline"]
    assert len({r.headers["X-Labelcast-Id"] for r in statuses}) == 4
    # and every request carries the token and a signature that the secret verifies
    for request in requests:
        assert request.headers["Authorization"] == "Bearer token-3f9a"
        expected = hmac.new(b"secret-77c1", request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Labelcast-Signature"] == f"sha256={expected}"
    # and the client kept its connection alive rather than opening one per request
    assert len({r.client for r in requests}) <= 3 < len(requests)


def test_batches_are_json_arrays_of_the_same_events_with_first_last_and_count(
    tmp_path: Path, server: WebhookServer, tiny_model: Path, clips: dict[str, Path]
) -> None:
    # Given batches of up to 8 events, waiting up to 300 ms to fill one
    log_path = tmp_path / "events.jsonl"
    sinks = [
        {"type": "log", "path": str(log_path)},
        webhook(server, tmp_path, events=["labels"], batch={"max_events": 8, "max_wait_ms": 300}),
    ]
    config = pipeline_config(tiny_model, {"door": clips["short"]}, sinks)
    Pipeline(parse_config(yaml.safe_dump(config))).run()
    requests = server.requests()
    # Then every body is a JSON array, together the log sink's events in order
    assert all(isinstance(r.json(), list) for r in requests)
    assert [e for r in requests for e in r.events()] == read_events(log_path)
    assert max(len(r.events()) for r in requests) > 1
    assert all(len(r.events()) <= 8 for r in requests)
    for request in requests:
        ids = [e["id"] for e in request.events()]
        assert request.headers["X-Labelcast-Id"] == ids[0]
        assert request.headers["X-Labelcast-Last-Id"] == ids[-1]
        assert request.headers["X-Labelcast-Count"] == str(len(ids))
        assert request.headers["X-Labelcast-Event"] == "labels"


def test_the_docs_signature_check_accepts_signed_bodies_and_refuses_changed_ones(
    tmp_path: Path, server: WebhookServer
) -> None:
    # Given the verification function docs/webhook.md shows, run as written
    text = (Path(__file__).resolve().parents[1] / "docs" / "webhook.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    verified = namespace["verified"]
    # When a sink with a secret sends an event
    sink = make_sink(server, tmp_path, secret="s3cret")
    try:
        sink.send(make_event("door", 1), FRAME)
        wait_until(lambda: sink.backlog == 0, 10, "the outbox to drain")
    finally:
        sink.close()
    (request,) = server.requests()
    signature = request.headers["X-Labelcast-Signature"]
    # Then the body verifies with the secret, and not changed, or with another secret
    assert verified(request.body, signature, b"s3cret")
    assert not verified(request.body.replace(b'"seq":1', b'"seq":2'), signature, b"s3cret")
    assert not verified(request.body, signature, b"other")
    assert not verified(request.body, None, b"s3cret")


# -- outages and crashes -------------------------------------------------------------------


def test_endpoint_away_10_s_mid_run_loses_nothing_and_keeps_seq_order(
    tmp_path: Path,
    server: WebhookServer,
    tiny_model: Path,
    clips: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given two streams played at their own rate (a 20 s clip), sending label events
    log_path = tmp_path / "events.jsonl"
    sinks = [
        {"type": "log", "path": str(log_path)},
        webhook(server, tmp_path, events=["labels"], drain_timeout_s=60),
    ]
    streams = {"door": clips["long"], "yard": clips["long"]}
    config = pipeline_config(tiny_model, streams, sinks, fps=4)
    for source in config["sources"]:
        source["realtime"] = True
    pipeline = Pipeline(parse_config(yaml.safe_dump(config)))
    caplog.set_level(logging.INFO, logger="labelcast")
    pipeline.start()
    try:
        # When the endpoint goes away once events flow, for 10 s, and comes back
        wait_until(lambda: len(server.delivered()) >= 6, 60, "the first events")
        server.stop()
        produced_before = len(read_events(log_path))
        time.sleep(10)
        produced_during = len(read_events(log_path)) - produced_before
        server.start()
        # (and the run is stopped soon after: the sink's close drains the outbox)
        wait_until(lambda: len(server.delivered()) > produced_before + 6, 30, "delivery again")
        pipeline.stop()
        assert pipeline.wait(90)
    finally:
        pipeline.stop()
        pipeline.wait(30)
    logged = read_events(log_path)

    # Then the pipeline went on while the endpoint was away,
    assert produced_during >= 20
    # and every event arrived, in seq order per stream, as many as were classified
    seqs = first_seqs(server.delivered())
    classified = {stream: len(events) for stream, events in by_stream(logged).items()}
    assert set(seqs) == set(streams)
    for stream, received in seqs.items():
        assert received == list(range(1, classified[stream] + 1)), stream
    # and the outage was logged once as a warning, the return as info
    assert "connection refused" in caplog.text or "request failed" in caplog.text
    assert "delivering" in caplog.text


def run_labelcast(
    config_path: Path, folder: Path, name: str
) -> CliProcess | subprocess.Popen[bytes]:
    args = ["run", str(config_path), "--no-progress"]
    with (folder / f"{name}.out").open("wb") as out, (folder / f"{name}.err").open("wb") as err:
        return start_cli(args, stdout=out, stderr=err)


def test_sigkill_and_restart_with_the_same_outbox_delivers_every_outboxed_event(
    tmp_path: Path, tiny_model: Path, clips: dict[str, Path]
) -> None:
    # Given labelcast running while its endpoint is down, so events pile up in the outbox
    server = WebhookServer()
    outbox_path = tmp_path / "outbox.sqlite"
    log_path = tmp_path / "events.jsonl"
    sinks = [
        {"type": "log", "path": str(log_path)},
        webhook(server, tmp_path, events=["labels"], outbox={"path": str(outbox_path)}),
    ]
    config = pipeline_config(tiny_model, {"door": clips["long"], "yard": clips["long"]}, sinks)
    config_path = tmp_path / "pipeline.yaml"
    config_path.write_text(yaml.safe_dump(config))
    first = run_labelcast(config_path, tmp_path, "first")
    try:
        wait_until(lambda: log_path.exists() and len(read_events(log_path)) >= 40, 60, "40 events")
        # When it is SIGKILLed mid-stream
        assert first.poll() is None, (tmp_path / "first.err").read_text()
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    outbox = Outbox(outbox_path, max_bytes=1 << 30, max_age_s=0)
    outboxed = [json.loads(message.payload) for message in outbox.peek()]
    outbox.close()
    assert len(outboxed) >= 30
    assert "connection refused" in (tmp_path / "first.err").read_text()

    # and restarted with the same outbox once the endpoint is up
    server.start()
    try:
        config["sources"] = [{"id": "door", "type": "file", "path": str(clips["short"])}]
        config_path.write_text(yaml.safe_dump(config))
        second = run_labelcast(config_path, tmp_path, "second")
        try:
            assert second.wait(90) == 0, (tmp_path / "second.err").read_text()
        finally:
            second.kill()
    finally:
        server.stop()

    # Then every outboxed event arrived, as it was, in seq order per stream,
    # before any event of the new run
    received = server.delivered()
    assert received[: len(outboxed)] == outboxed
    old_run = outboxed[0]["run"]
    assert {e["run"] for e in outboxed} == {old_run}
    for stream, seqs in first_seqs(outboxed).items():
        assert seqs == list(range(1, len(seqs) + 1)), stream
    assert any(e["run"] != old_run for e in received)


# -- answers: retried, rejected, slow ------------------------------------------------------


def test_500_is_retried_until_200_and_readiness_reports_it(
    tmp_path: Path, server: WebhookServer
) -> None:
    # Given an endpoint that answers 500 for a while
    server.default = Answer(500)
    sink = make_sink(server, tmp_path)
    try:
        for seq in (1, 2, 3):
            sink.send(make_event("door", seq), FRAME)
        # Then the sink is not connected, says why, and keeps the events
        wait_until(lambda: not sink.connected, 10, "the sink to report the 500s")
        assert sink.problem is not None and "500" in sink.problem
        assert sink.backlog == 3
        # (and has been retried at least once: the sender backs off up to 0.2 s)
        retried = lambda: len([r for r in server.requests() if r.status == 500]) >= 2  # noqa: E731
        wait_until(retried, 10, "a retry of the refused event")
        assert sink.backlog == 3
        # When the endpoint answers 200 again
        server.default = Answer(200)
        wait_until(lambda: sink.backlog == 0, 10, "the outbox to drain")
        assert sink.connected and sink.problem is None
    finally:
        sink.close()
    # Then the first event was sent until taken, and none overtook it
    answered = [(r.json()["seq"], r.status) for r in server.requests()]
    failures = [a for a in answered if a[1] == 500]
    assert len(failures) >= 2 and {seq for seq, _ in failures} == {1}
    assert answered[len(failures) :] == [(1, 200), (2, 200), (3, 200)]
    assert (sink.delivered, sink.rejected) == (3, 0)


def test_400_is_dropped_counted_and_logged_without_blocking_the_queue(
    tmp_path: Path, server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an endpoint that rejects the second event with 400
    server.script(Answer(200), Answer(400))
    sink = make_sink(server, tmp_path)
    try:
        # When three events are sent
        for seq in (1, 2, 3):
            sink.send(make_event("door", seq), FRAME)
        wait_until(lambda: sink.backlog == 0, 10, "the outbox to drain")
    finally:
        sink.close()
    # Then each was sent once, the rejected one dropped and counted, and the third delivered
    assert [(r.json()["seq"], r.status) for r in server.requests()] == [
        (1, 200),
        (2, 400),
        (3, 200),
    ]
    assert (sink.delivered, sink.rejected) == (2, 1)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "400" in errors[0] and "gw/door/r1/2" in errors[0] and "dropped 1 event" in errors[0]


def test_429_waits_as_long_as_retry_after_says(tmp_path: Path, server: WebhookServer) -> None:
    # Given an endpoint that answers 429 with Retry-After: 1, and a retry backoff of 50 ms
    server.script(Answer(429, headers={"Retry-After": "1"}))
    sink = make_sink(server, tmp_path)
    try:
        sink.send(make_event("door", 1), FRAME)
        wait_until(lambda: sink.backlog == 0, 10, "the outbox to drain")
    finally:
        sink.close()
    # Then the event was sent again after a second, not after the backoff
    first, second = server.requests()
    assert (first.status, second.status) == (429, 200)
    assert first.body == second.body
    assert second.at - first.at >= 0.9


def test_a_slow_endpoint_times_out_and_the_event_is_sent_again(
    tmp_path: Path, server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an endpoint that takes 1.5 s to answer the first request, and timeout_s 0.3
    server.script(Answer(200, delay_s=1.5))
    sink = make_sink(server, tmp_path, timeout_s=0.3)
    try:
        sink.send(make_event("door", 1), FRAME)
        sink.send(make_event("door", 2), FRAME)
        wait_until(lambda: sink.backlog == 0, 10, "the outbox to drain")
        time.sleep(1.5)  # the slow answer is recorded once it is given
    finally:
        sink.close()
    # Then the timed-out event was sent again (at least once), before the next one
    seqs = [r.json()["seq"] for r in sorted(server.requests(), key=lambda r: r.at)]
    assert seqs.count(1) >= 2 and seqs[-1] == 2 and seqs.count(2) == 1
    assert "no answer within 0.3 s" in caplog.text
    assert sink.delivered == 2


# -- config, check, secrets ----------------------------------------------------------------


def test_config_errors_name_the_field_and_never_echo_secrets() -> None:
    base = "sources: [{id: a, type: file, path: a.mp4}]\nsinks:\n  - {type: webhook, %s}\n"
    url = "url: 'https://hooks.lan/h'"
    cases = {
        "url: 'ftp://user:hunter2@hooks.lan/x'": "must start with http:// or https://",
        "url: 'http://hooks.lan:99999/hunter2'": "sinks[webhook].url",
        "url: 'http://hooks.lan/h', tls: {insecure: true}": "only an https:// URL uses TLS",
        f"{url}, events: [labels, labels]": "sinks[webhook].events",
        f"{url}, events: [frames]": "sinks[webhook].events",
        f"{url}, headers: {{'X-Labelcast-Id': hunter2}}": "labelcast sets this header",
        f"{url}, headers: {{'Bad Name': hunter2}}": "not a valid header name",
        f"{url}, batch: {{max_events: 0}}": "sinks[webhook].batch.max_events",
        f"{url}, timeot_s: 5": "did you mean sinks[webhook].timeout_s?",
        "events: [change]": "sinks[webhook].url",
    }
    for snippet, expected in cases.items():
        with pytest.raises(ConfigError) as error:
            parse_config(base % snippet)
        assert expected in str(error.value), (snippet, str(error.value))
        assert "hunter2" not in str(error.value), snippet
    config = parse_config(
        base % f"{url}, headers: {{Authorization: 'Bearer hunter2'}}, secret: hunter2-s"
    )
    sink = config.sinks[0]
    assert isinstance(sink, WebhookSinkConfig)
    assert sink.events == ["change"] and sink.batch.max_events == 1
    assert "hunter2" not in repr(sink)


def test_secrets_in_the_url_headers_and_secret_are_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an endpoint that is down, with a login and a webhook id in its URL
    port = free_port()
    url = f"http://cam:pw-hunter2@127.0.0.1:{port}/api/webhook/id-hunter3?token=hunter4"
    config = WebhookSinkConfig.model_validate(
        {
            "url": url,
            "events": ["labels"],
            "headers": {"X-Api-Key": "hunter5"},
            "secret": "hunter6",
            "outbox": {"path": str(tmp_path / "outbox.sqlite")},
            "retry": {"min_s": 0.05, "max_s": 0.1},
            "drain_timeout_s": 0.3,
        }
    )
    caplog.set_level(logging.DEBUG)
    # When events are sent and retried, the sink checked and closed
    sink = WebhookSink(config)
    try:
        sink.send(make_event("door", 1), FRAME)
        wait_until(lambda: sink.problem is not None, 10, "a failed attempt")
        problem = sink.problem
    finally:
        sink.close()
    problems = WebhookSink.check(config)
    # Then the messages say what failed, naming the host, and no secret
    text = caplog.text + str(problem) + str(problems) + sink.name
    assert "connection refused" in text and f"127.0.0.1:{port}" in text
    for secret in ("hunter2", "hunter3", "hunter4", "hunter5", "hunter6"):
        assert secret not in text, secret
    assert "/api/webhook" not in text


def test_check_hook_reports_a_reachable_and_an_unreachable_endpoint(
    tmp_path: Path, server: WebhookServer
) -> None:
    up = WebhookSinkConfig(url=f"{server.url}/hook")
    down = WebhookSinkConfig(url=f"http://127.0.0.1:{free_port()}/hook")
    assert WebhookSink.check(up) == []
    problems = WebhookSink.check(down)
    assert len(problems) == 1 and "connection refused" in problems[0]
    # and a check sends nothing: a webhook may act on any request
    assert server.requests() == []


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_https_delivers_with_the_right_ca_and_fails_closed_with_another(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    server = WebhookServer(tls=(tls_files.cert, tls_files.key)).start()
    try:
        # Given an https endpoint whose certificate chains to tls.ca_file: events arrive
        trusted = make_sink(server, tmp_path / "a", tls={"ca_file": str(tls_files.ca)})
        try:
            trusted.send(make_event("door", 1), FRAME)
            wait_until(lambda: trusted.backlog == 0, 10, "the outbox to drain")
        finally:
            trusted.close()
        assert [r.json()["seq"] for r in server.requests()] == [1]
        # When the CA is another one, making the sink fails closed with one clear message
        other = {"ca_file": str(tls_files.other_ca)}
        with pytest.raises(SinkError, match="certificate is not trusted"):
            make_sink(server, tmp_path / "b", tls=other)
        # and a CA file that is no certificate at all is named
        bogus = tmp_path / "ca.pem"
        bogus.write_text("not a certificate\n")
        with pytest.raises(SinkError, match=r"tls\.ca_file"):
            make_sink(server, tmp_path / "c", tls={"ca_file": str(bogus)})
    finally:
        server.stop()
    assert len(server.requests()) == 1
