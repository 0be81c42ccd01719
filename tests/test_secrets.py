"""Secrets in source URLs and FFmpeg options never reach logs, `check`, `/readyz`,
`/metrics` or MQTT: a table of malformed and tricky URLs, through the CLI and a real broker."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, Subscriber
from cli_process import start_cli
from helpers import free_port, run_cli, wait_until, write_config

from labelcast.redact import Redactor, redact

# {host} is filled in: "cam.local" for the text checks, a closed loopback port for the
# daemon (so every source fails at once, and its error names the URL).
# Each URL comes with the fragments of its secrets that must never be shown.
NASTY: list[tuple[str, tuple[str, ...]]] = [
    ("rtsp://admin:Zq9/w0rd@{host}/cam", ("Zq9/w0rd", "w0rd")),
    ("rtsp://admin:Xk7 pw9@[::1/cam", ("Xk7 pw9", "Xk7", "pw9")),
    ("rtsp://admin:p@ss:w%rd/1@{host}/stream1", ("p@ss", "w%rd")),
    ("rtsp://admin:p%40ss%3Aw%25rd%2F1@{host}/s", ("p%40ss", "w%25rd", "p@ss")),
    ("rtsp://T0kenOnly@{host}/s", ("T0kenOnly",)),
    ("rtsp://:Empt7User@{host}/s", ("Empt7User",)),
    ("rtsp://admin:Qf#rag9@{host}/s", ("Qf#rag9", "rag9")),
    ("rtsp://admin:Qm?x=Y17@{host}/s", ("Qm?x", "Y17")),
    ('rtsp://admin:pa"Qu0te@{host}/s', ('pa"Qu0te', "Qu0te")),
    ("rtsp://admin:Dbl@@{host}/s", ("Dbl@",)),
    ("RTSP://Admin:Upp3rCase@{host}/s", ("Upp3rCase",)),
    ("rtsp://ad min:Sp4ceUser@{host}/s", ("Sp4ceUser",)),
    ("rtsp://admin:a://b9Q@{host}/s", ("a://b9Q", "b9Q")),
    ("http://{host}/mjpg?token=Tk3n9&res=hd", ("Tk3n9",)),
    (
        "https://{host}/l.m3u8?X-Amz-Signature=Abc123def&X-Amz-Credential=AKIA9XYZ",
        ("Abc123def", "AKIA9XYZ"),
    ),
    ("srt://{host}?passphrase=LongPass123&latency=200", ("LongPass123",)),
    ("rtmp://{host}/live?key=StreamKey77", ("StreamKey77",)),
    ("http://{host}/s?auth=Au7hz&password=Pw9Pw9&apiKey=Ap1k3y", ("Au7hz", "Pw9Pw9", "Ap1k3y")),
    ("http://{host}/s?sig=S1gnat&expires=1", ("S1gnat",)),
]
# FFmpeg options that hold secrets (HTTP headers, an SRT passphrase, a proxy password).
OPTIONS: dict[str, Any] = {
    "headers": "Authorization: Bearer H3aderTok\r\nX-Api-Key: Hdr4piKey\r\n",
    "passphrase": "OptPassphrase9",
    "http_proxy": "http://proxy:Pr0xyPw@127.0.0.1:9",
}
OPTION_LEAKS = ("H3aderTok", "Hdr4piKey", "OptPassphrase9", "Pr0xyPw")


def leaks_in(text: str, fragments: tuple[str, ...]) -> list[str]:
    return [fragment for fragment in fragments if fragment in text]


@pytest.mark.parametrize(("template", "secrets"), NASTY, ids=[u for u, _ in NASTY])
def test_redaction_masks_nasty_urls_everywhere_they_are_quoted(
    template: str, secrets: tuple[str, ...]
) -> None:
    # Given a URL whose user-info or query holds a secret
    url = template.format(host="cam.local")
    # When it is shown bare, in an error message, in JSON, or by a redactor made for it
    shown = [
        redact(url),
        redact(f"[Errno 111] Connection refused: '{url}'"),
        redact(json.dumps({"reason": f"cannot open {url}"})),
        Redactor.for_url(url).text(f"cannot open {url}"),
    ]
    # Then no part of the secret is left, and the host still is
    for text in shown:
        assert not leaks_in(text, secrets), text
        assert "cam.local" in text or "[::1" in text, text


def test_redaction_keeps_harmless_urls_and_the_user_of_clean_ones() -> None:
    assert redact("rtsp://cam.local:554/stream1?fps=5") == "rtsp://cam.local:554/stream1?fps=5"
    assert redact("rtsp://admin:pw@[::1]:554/s") == "rtsp://admin:***@[::1]:554/s"
    assert redact("http://h/s?keyframes=1&token=abc") == "http://h/s?keyframes=1&token=***"


def test_redactor_masks_secrets_of_ffmpeg_options() -> None:
    # Given a redactor for a URL opened with secret-holding options
    redactor = Redactor.for_url("rtsp://cam.local/s", options=OPTIONS)
    # When an error quotes the option values
    text = redactor.text(f"bad option values: {OPTIONS!r} and {OPTIONS['headers']}")
    # Then none of them is shown
    assert not leaks_in(text, OPTION_LEAKS), text


# ------------------------------------------------------------------ through the daemon


def http(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path / "broker")
    broker.start()
    yield broker
    broker.stop(signal.SIGKILL)


def test_secrets_never_reach_check_logs_readyz_metrics_or_mqtt(
    tiny_model: Path, tmp_path: Path, broker: Broker
) -> None:
    # Given one stream per nasty URL, all on a closed loopback port, with secret
    # options, an MQTT sink on a real broker and the operations endpoint
    closed = free_port()
    prefix = f"lc-{uuid.uuid4().hex[:10]}"
    sources = [
        {
            "id": f"s{number}",
            "type": "stream",
            "url": template.format(host=f"127.0.0.1:{closed}"),
            "options": OPTIONS,
            "open_timeout_s": 1,
            "reconnect": {"min_s": 0.2, "max_s": 0.5},
        }
        for number, (template, _) in enumerate(NASTY)
    ]
    leaks = tuple(s for _, secrets in NASTY for s in secrets) + OPTION_LEAKS
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(
        tmp_path,
        {
            "name": "secrets",
            "model": {"id": str(tiny_model), "device": "cpu"},
            "sources": sources,
            "sinks": [broker.sink_config(prefix)],
            "server": {"bind": f"127.0.0.1:{port}"},
        },
    )
    # When `labelcast check` opens every source
    check = run_cli("check", str(config), timeout=120)
    # Then it reports the failures without a secret
    assert check.returncode == 2, check.stderr
    assert "s0" in check.stdout + check.stderr
    assert not leaks_in(check.stdout + check.stderr, leaks), check.stdout + check.stderr
    # When the daemon runs and every stream has failed at least twice
    subscriber = Subscriber(broker, [f"{prefix}/#"])
    stderr_path = tmp_path / "daemon.stderr"
    with stderr_path.open("w") as stderr:
        process = start_cli(["run", str(config), "--no-progress"], stderr=stderr)
        try:
            statuses = wait_until(
                lambda: (lambda found: found if len(found) == len(NASTY) else None)(
                    {m.topic for m in subscriber.messages if m.topic.endswith("/status")}
                ),
                60,
                "a status of every stream",
            )
            _, readyz = wait_until(
                lambda: (lambda r: r if r[0] == 503 and "reasons" in r[1] else None)(
                    http(f"{base}/readyz")
                ),
                30,
                "readiness",
            )
            metrics = http(f"{base}/metrics")[1]
            time.sleep(0.5)  # a few reconnects more, logged and published
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    subscriber.client.disconnect()
    # Then logs, readiness, metrics and MQTT payloads name the streams, never a secret
    logs = stderr_path.read_text()
    payloads = "\n".join(m.payload.decode(errors="replace") for m in subscriber.messages)
    assert len(statuses) == len(NASTY)
    assert "s0" in readyz and "labelcast_" in metrics and "reconnecting" in payloads
    assert "127.0.0.1" in logs and "127.0.0.1" in payloads  # the URLs are shown, masked
    for where, text in {
        "logs": logs,
        "/readyz": readyz,
        "/metrics": metrics,
        "mqtt": payloads,
    }.items():
        assert not leaks_in(text, leaks), f"{where} shows {leaks_in(text, leaks)}"
