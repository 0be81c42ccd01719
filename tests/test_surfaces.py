"""Exposed surfaces: bind validation, the operations endpoint's reload guard (CSRF, DNS
rebinding), request timeouts and header caps, IPv6 binds, and WHIP ingest's token and
origins."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_process import start_cli
from helpers import free_port, require_module, run_cli, wait_until, write_config

from labelcast import parse_config
from labelcast.errors import ConfigError
from labelcast.util.http import BoundedHTTPServer, BoundedRequestHandler, parse_bind


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "name": "surfaces",
        "model": {"id": "some/model", "revision": "0" * 40},
        "sources": [{"id": "cam", "type": "file", "path": "clip.mp4"}],
        "sinks": [{"type": "log", "path": "-"}],
        **extra,
    }


# ------------------------------------------------------------------------ bind addresses


def test_a_port_above_65535_is_one_clear_config_error_for_check_and_run(tmp_path: Path) -> None:
    # Given a config whose server.bind has a port that does not exist
    path = write_config(tmp_path, minimal(server={"bind": "127.0.0.1:70000"}))
    for command in ("check", "run"):
        # When it is checked, or run
        result = run_cli(command, str(path), timeout=60)
        # Then labelcast exits 2 with one line naming the field, never a traceback
        assert result.returncode == 2, result.stderr
        assert "server.bind: port 70000 is out of range" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("bind", "problem"),
    [
        ("127.0.0.1:99999999999999999999", "out of range"),
        ("127.0.0.1:-1", "must be a number"),
        ("127.0.0.1:", "must be a number"),
        ("127.0.0.1", "expected host:port"),
        ("::1:9090", "IPv6 address in brackets"),
        ("[::1:9090", "expected [ipv6-address]:port"),
        ("[not-v6]:9090", "is not an IPv6 address"),
        (":9090", "with a host"),
    ],
)
def test_a_bad_server_bind_names_the_field_and_the_problem(bind: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(json.dumps(minimal(server={"bind": bind})))
    assert "server.bind: " in str(info.value) and problem in str(info.value)


def test_binds_accept_ipv6_and_port_zero() -> None:
    assert parse_bind("[::1]:9090", "x") == ("::1", 9090)
    assert parse_bind("0.0.0.0:0", "x") == ("0.0.0.0", 0)
    assert parse_config(json.dumps(minimal(server={"bind": "[::1]:9090"}))).server is not None
    with pytest.raises(ValueError, match=r"^preview\.bind: port 65536"):
        parse_bind("localhost:65536", "preview.bind")
    with pytest.raises(ConfigError, match=r"server\.bind"):
        parse_config(json.dumps(minimal(server={"bind": "127.0.0.1:65536"})))


# ------------------------------------------------------------ bounded HTTP server helper


class _Hello(BoundedRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hello_server() -> Iterator[BoundedHTTPServer]:
    server = BoundedHTTPServer(("::1", 0), _Hello, thread_name="test-http", request_timeout_s=0.5)
    import threading

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_bounded_server_caps_headers_and_drops_silent_clients(
    hello_server: BoundedHTTPServer,
) -> None:
    port = hello_server.server_address[1]
    # Given an IPv6 server: a normal request is answered
    connection = http.client.HTTPConnection("::1", port, timeout=5)
    connection.request("GET", "/")
    assert connection.getresponse().read() == b"hi"
    connection.close()
    # When a client sends 20 KiB of headers, it gets 431
    connection = http.client.HTTPConnection("::1", port, timeout=5)
    connection.request("GET", "/", headers={f"X-Pad-{i}": "x" * 1000 for i in range(20)})
    assert connection.getresponse().status == 431
    connection.close()
    # And a client that sends half a request and waits is disconnected
    with socket.create_connection(("::1", port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < 3


# ------------------------------------------------------------------ the daemon's endpoint


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    connection = http.client.HTTPConnection("::1", port, timeout=30)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_reload_needs_its_header_refuses_cross_site_and_labelcast_reload_works(
    tiny_model: Path, tmp_path: Path
) -> None:
    # Given a daemon whose endpoint listens on IPv6 loopback (one stream that never opens)
    port = free_port()
    config = write_config(
        tmp_path,
        {
            "name": "surfaces",
            "model": {"id": str(tiny_model), "device": "cpu"},
            "sources": [
                {
                    "id": "cam",
                    "type": "rtsp",
                    "url": f"rtsp://127.0.0.1:{free_port()}/cam",
                    "reconnect": {"min_s": 1, "max_s": 2},
                }
            ],
            "sinks": [{"type": "log", "path": str(tmp_path / "events.jsonl")}],
            "server": {"bind": f"[::1]:{port}"},
        },
    )
    stderr_path = tmp_path / "daemon.stderr"
    with stderr_path.open("w") as stderr:
        process = start_cli(["run", str(config), "--no-progress"], stderr=stderr)
        try:
            wait_until(lambda: "operations endpoint" in stderr_path.read_text(), 60, "endpoint")
            assert request(port, "GET", "/healthz")[0] in (200, 503)
            host = f"[::1]:{port}"
            # When a web page posts a reload (a form: no custom header), it is refused
            refused = {
                "no header": {"Host": host},
                "cross-site": {
                    "Host": host,
                    "X-Labelcast-Reload": "1",
                    "Sec-Fetch-Site": "cross-site",
                },
                "other origin": {
                    "Host": host,
                    "X-Labelcast-Reload": "1",
                    "Origin": "http://evil.example",
                },
                "rebound name": {"Host": f"evil.example:{port}", "X-Labelcast-Reload": "1"},
            }
            for why, headers in refused.items():
                status, body = request(port, "POST", "/reload", headers)
                assert status == 403, (why, status, body)
            # And a same-origin request with the header, and `labelcast reload`, reload
            status, body = request(
                port,
                "POST",
                "/reload",
                {"Host": host, "X-Labelcast-Reload": "1", "Origin": f"http://{host}"},
            )
            assert status == 200, body
            result = run_cli("reload", str(config), timeout=60)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["ok"] is True
            # And oversized headers get 431
            big = {f"X-Pad-{i}": "x" * 1000 for i in range(20)}
            assert request(port, "GET", "/readyz", big)[0] == 431
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    logs = stderr_path.read_text()
    assert logs.count("refused POST /reload") == 4, logs


# ------------------------------------------------------------------------- WHIP ingest


def test_whip_needs_a_token_when_it_listens_beyond_loopback() -> None:
    # Given a webrtc source on every interface without a token
    for bind in ("0.0.0.0", "::", "192.0.2.10"):
        sources = [{"id": "phone", "type": "webrtc", "bind": bind}]
        # When the config is read, then it is refused, naming the token
        with pytest.raises(ConfigError, match=r"sources\[phone\]\.token: required when bind"):
            parse_config(json.dumps(minimal(sources=sources)))
    # And loopback without a token, or any address with one, is fine
    for source in (
        {"id": "phone", "type": "webrtc", "bind": "::1"},
        {"id": "phone", "type": "webrtc", "bind": "0.0.0.0", "token": "t0ken"},
    ):
        assert parse_config(json.dumps(minimal(sources=[source]))).sources


def test_whip_serves_only_configured_origins(tmp_path: Path) -> None:
    require_module("aiortc", "pip install labelcast[webrtc]")
    from labelcast.sources.webrtc import WebRTCSource, WebRTCSourceConfig

    # Given a WHIP endpoint on IPv6 loopback that lets one web page publish
    port = free_port()
    allowed = "https://studio.example.com"
    config = WebRTCSourceConfig(
        id="phone", bind="::1", port=port, token="t0ken", allow_origins=[allowed]
    )
    sdp = {"Content-Type": "application/sdp", "Authorization": "Bearer t0ken"}

    def ask(method: str, headers: dict[str, str]) -> tuple[int, str | None]:
        connection = http.client.HTTPConnection("::1", port, timeout=10)
        try:
            body = "v=0\r\n" if method == "POST" else None
            connection.request(method, "/whip/phone", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status, response.getheader("Access-Control-Allow-Origin")
        finally:
            connection.close()

    with WebRTCSource(config):
        # When another page asks (preflight, or a simple POST), it is refused
        evil = {"Origin": "http://evil.example"}
        assert ask("OPTIONS", evil) == (403, None)
        assert ask("POST", {**sdp, **evil}) == (403, None)
        # And the allowed page gets through to the token and SDP checks
        assert ask("OPTIONS", {"Origin": allowed}) == (204, allowed)
        assert ask("POST", {**sdp, "Origin": allowed}) == (400, allowed)
        assert ask("POST", {"Content-Type": "application/sdp", "Origin": allowed})[0] == 401
        # And an encoder (no Origin) is judged by its token alone
        assert ask("POST", sdp) == (400, None)


def test_basic_auth_helper_accepts_only_the_right_credentials() -> None:
    import base64

    from labelcast.util.http import check_basic_auth

    def header(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert check_basic_auth(header("labelcast:s3cret"), "labelcast", "s3cret")
    assert not check_basic_auth(header("labelcast:wrong"), "labelcast", "s3cret")
    assert not check_basic_auth(header("other:s3cret"), "labelcast", "s3cret")
    assert not check_basic_auth("Basic !!!", "labelcast", "s3cret")
    assert not check_basic_auth(None, "labelcast", "s3cret")
