"""Live sources against real servers on loopback: RTSP (GStreamer), WHIP (aiortc), V4L2."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import free_port, needs, require, require_module
from rtsp_server import RtspServer, missing_requirements

import labelcast
from labelcast.errors import SourceError
from labelcast.model.classifier import Classifier, ModelConfig
from labelcast.redact import Redactor, redact, redact_url
from labelcast.sources.camera import CameraSource, CameraSourceConfig
from labelcast.sources.file import FileSource, FileSourceConfig
from labelcast.sources.stream import RtspSource, RtspSourceConfig
from labelcast.util.backoff import Backoff, ReconnectConfig

PASSWORD = "p@ss:w%rd/1"
ENCODED = quote(PASSWORD, safe="")  # p%40ss%3Aw%25rd%2F1
# Every form the password could leak in, and fragments of it.
LEAKS = (PASSWORD, ENCODED, "p@ss", "w%rd", "%40ss", "ss%3Aw")
# Speeds up RTSP opens: FFmpeg otherwise probes the stream for ~2 s.
FAST_OPEN = "{analyzeduration: 500000}"

needs_rtsp = needs("gstreamer-rtsp", missing_requirements())


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def classifier(tiny_model: Path) -> Classifier:
    """One loaded model shared by every pipeline of this file."""
    return Classifier.load(ModelConfig(id=str(tiny_model), device="cpu"))


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port whose listen queue is full: connections hang like a dead host's."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for sock in (*fillers, listener):
        sock.close()


@dataclass
class Status:
    at: float
    stream: str
    state: str
    reason: str | None


@dataclass(eq=False)
class Recorder(logging.Handler):
    """Collects every log line (for leak checks) and the runner's status changes."""

    lines: list[str] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    records: list[logging.LogRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        logging.Handler.__init__(self, logging.DEBUG)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)
        if record.name == "labelcast.pipeline.runner" and record.msg.startswith("stream %s: "):
            args = record.args if isinstance(record.args, tuple) else ()
            if record.msg == "stream %s: online":
                self.statuses.append(Status(time.monotonic(), str(args[0]), "online", None))
            elif record.msg == "stream %s: %s (%s)":
                stream, state, reason = args
                self.statuses.append(Status(time.monotonic(), stream, state, reason))

    def states(self, stream: str, since: float = 0.0) -> list[str]:
        return [s.state for s in self.statuses if s.stream == stream and s.at >= since]

    def first(self, stream: str, state: str, since: float = 0.0) -> Status | None:
        return next(
            (s for s in self.statuses if s.stream == stream and s.state == state and s.at >= since),
            None,
        )


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    handler = Recorder()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@dataclass
class Run:
    pipeline: labelcast.Pipeline
    events: list[tuple[float, labelcast.LabelEvent]]

    def of(
        self, stream: str, since: float = 0.0, until: float = float("inf")
    ) -> list[labelcast.LabelEvent]:
        """The events of ``stream`` that arrived between ``since`` and ``until`` (monotonic)."""
        return [e for at, e in list(self.events) if e.stream == stream and since <= at <= until]


@contextlib.contextmanager
def running(config_text: str, classifier: Any, stop_within: float = 5.0) -> Iterator[Run]:
    """Run a pipeline from YAML; stop it at the end and check it stopped in time."""
    config = labelcast.parse_config(config_text)
    events: list[tuple[float, labelcast.LabelEvent]] = []
    pipeline = labelcast.Pipeline(
        config, on_event=lambda e: events.append((time.monotonic(), e)), classifier=classifier
    )
    pipeline.start()
    try:
        yield Run(pipeline, events)
    finally:
        started = time.monotonic()
        pipeline.stop()
        stopped = pipeline.wait(stop_within + 5)
        took = time.monotonic() - started
        assert stopped, "the pipeline did not stop"
        assert took < stop_within, f"stopping took {took:.1f} s"


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def assert_no_gaps(events: list[labelcast.LabelEvent]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


def config(model: str, sources: str, name: str = "live") -> str:
    return f"name: {name}\nmodel: {{id: '{model}', device: cpu}}\nsources:\n{sources}\nsinks: []\n"


def rtsp(stream: str, url: str, extra: str = "", kind: str = "rtsp") -> str:
    return (
        f"  - {{id: {stream}, type: {kind}, url: '{url}', sample: {{fps: 2}}, "
        f"options: {FAST_OPEN}, {extra}}}\n"
    )


# ------------------------------------------------------------------------ unit behaviour


def test_redaction_masks_passwords_and_keeps_the_host() -> None:
    # Given URLs whose passwords hold @ : % / (encoded, and raw as users paste them)
    encoded = f"rtsp://admin:{ENCODED}@cam.local:554/stream1"
    raw = "rtsp://admin:p@ss:w@cam.local/stream1"
    # When they are redacted, inside text too
    message = f"[Errno 111] Connection refused: '{encoded}'"
    # Then the password is gone, user and host stay
    assert redact_url(encoded) == "rtsp://admin:***@cam.local:554/stream1"
    assert redact_url(raw) == "rtsp://admin:***@cam.local/stream1"
    assert (
        redact(message)
        == "[Errno 111] Connection refused: 'rtsp://admin:***@cam.local:554/stream1'"
    )
    # And a known secret is masked in every form, even outside a URL
    redactor = Redactor.for_url(encoded)
    for form in (PASSWORD, ENCODED):
        assert form not in redactor.text(f"auth with {form} failed")
    assert redact_url("rtsp://cam.local:554/stream1") == "rtsp://cam.local:554/stream1"


def test_backoff_grows_jittered_to_the_cap_and_resets() -> None:
    backoff = Backoff(ReconnectConfig(min_s=1, max_s=60), random.Random(4))
    delays = [backoff.next_delay() for _ in range(12)]
    bases = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60, 60]
    for delay, base in zip(delays, bases, strict=True):
        assert 0.75 * base <= delay <= base
    assert len({round(d, 6) for d in delays[6:]}) > 1, "the jitter spreads capped delays"
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_live_config_validation_names_the_field_and_hides_the_url() -> None:
    with pytest.raises(labelcast.ConfigError, match=r"sources\[a\]\.url") as info:
        labelcast.parse_config(f"sources: [{{id: a, type: rtsp, url: 'http://u:{ENCODED}@h/x'}}]")
    assert ENCODED not in str(info.value)
    with pytest.raises(labelcast.ConfigError, match="min_s"):
        labelcast.parse_config(
            "sources: [{id: a, type: rtsp, url: 'rtsp://h/x', reconnect: {min_s: 9, max_s: 1}}]"
        )
    with pytest.raises(labelcast.ConfigError, match="width and height"):
        labelcast.parse_config("sources: [{id: c, type: camera, width: 640}]")
    parsed = labelcast.parse_config(
        f"sources: [{{id: a, type: rtsp, url: 'rtsp://u:{ENCODED}@h/x'}}]"
    )
    assert ENCODED not in repr(parsed)
    assert parsed.sources[0].transport == "tcp"  # type: ignore[union-attr]


def test_file_source_keyframes_decodes_only_key_frames(clips: dict[str, Path]) -> None:
    # Given the 20 s, 30 fps clip with a key frame every second
    def decode(mode: str) -> tuple[int, list[float]]:
        cfg = FileSourceConfig(id="f", path=str(clips["long"]), decode=mode, sample={"fps": 1})
        with FileSource(cfg) as source:
            pts = [frame.pts for frame in source.frames()]
            return source.frames_decoded, pts

    # When it is decoded in full and key frames only
    full_count, full_pts = decode("all")
    key_count, key_pts = decode("keyframes")
    # Then key frames only decodes 20 frames instead of 600, and samples the same seconds
    assert full_count == 600
    assert key_count == 20
    assert key_pts == pytest.approx(full_pts, abs=0.05)


def test_file_source_keyframes_warns_no_truncation(
    clips: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = FileSourceConfig(id="f", path=str(clips["long"]), decode="keyframes")
    with caplog.at_level(logging.WARNING), FileSource(cfg) as source:
        assert sum(1 for _ in source.frames()) > 0
    assert "truncated" not in caplog.text


# ----------------------------------------------------------------------------- RTSP


@needs_rtsp
def test_server_restart_reconnects_without_seq_gap_other_stream_keeps_rate(
    rtsp_server: Callable[..., RtspServer],
    classifier: Classifier,
    tiny_model: Path,
    recorder: Recorder,
) -> None:
    # Given two streams from two RTSP servers, one as type rtsp, one as type stream
    lobby, door = rtsp_server(), rtsp_server()
    watch = "stall_timeout_s: 3, reconnect: {min_s: 0.3, max_s: 1}"
    text = config(
        str(tiny_model),
        rtsp("lobby", lobby.url, watch) + rtsp("door", door.url, watch, kind="stream"),
    )
    with running(text, classifier) as run:
        wait_until(lambda: len(run.of("lobby")) >= 3 and len(run.of("door")) >= 3, 20, "events")
        # When the lobby server is killed for 5 s and restarted
        killed = time.monotonic()
        lobby.kill()
        time.sleep(5)
        restarted = time.monotonic()
        lobby.start()
        wait_until(lambda: len(run.of("lobby", since=restarted)) >= 3, 20, "events after restart")
        door_during = run.of("door", since=killed + 0.5, until=restarted)
        lobby_events = run.of("lobby")
    # Then the lobby went reconnecting, then online (each once)
    assert recorder.states("lobby", since=killed) == ["reconnecting", "online", "offline"]
    reconnecting = recorder.first("lobby", "reconnecting", since=killed)
    assert reconnecting is not None and "127.0.0.1" in (reconnecting.reason or "")
    online = recorder.first("lobby", "online", since=killed)
    assert online is not None and online.at >= restarted
    # And its events resumed with seq going on without a gap
    assert_no_gaps(lobby_events)
    # And the door stream kept its 2 fps while the lobby was down (4.5 s window)
    assert len(door_during) >= 7, f"door had {len(door_during)} events while lobby was down"
    assert "reconnecting" not in recorder.states("door")


@needs_rtsp
def test_frozen_server_is_a_stall_detected_in_time_and_recovers(
    rtsp_server: Callable[..., RtspServer],
    classifier: Classifier,
    tiny_model: Path,
    recorder: Recorder,
) -> None:
    # Given a stream with a 2 s stall watchdog and a read timeout far longer than that
    server = rtsp_server()
    extra = (
        "stall_timeout_s: 2, read_timeout_s: 30, open_timeout_s: 1, "
        "reconnect: {min_s: 0.3, max_s: 1}"
    )
    with running(config(str(tiny_model), rtsp("cam", server.url, extra)), classifier) as run:
        wait_until(lambda: len(run.of("cam")) >= 3, 20, "first events")
        # When the server is frozen (SIGSTOP): the connection stays up, nothing flows
        frozen = time.monotonic()
        server.freeze()
        wait_until(lambda: recorder.first("cam", "reconnecting", frozen), 6, "stall")
        time.sleep(1)
        # And thawed (SIGCONT)
        thawed = time.monotonic()
        server.thaw()
        wait_until(lambda: len(run.of("cam", since=thawed)) >= 3, 20, "events after thaw")
        events = run.of("cam")
    # Then the stall was detected within stall_timeout_s + 1 s
    stall = recorder.first("cam", "reconnecting", frozen)
    assert stall is not None and "stalled" in (stall.reason or "")
    assert stall.at - frozen <= 3.0
    # And the stream came back online, seq without a gap
    online = recorder.first("cam", "online", since=thawed)
    assert online is not None
    assert recorder.states("cam", since=frozen)[:2] == ["reconnecting", "online"]
    assert_no_gaps(events)


@needs_rtsp
def test_udp_transport_and_keyframes_only_decoding_deliver_events(
    rtsp_server: Callable[..., RtspServer], classifier: Classifier, tiny_model: Path
) -> None:
    # Given one stream over UDP, and one decoding key frames only (one a second here)
    server = rtsp_server()
    sources = rtsp("udp", server.url, "transport: udp") + rtsp(
        "keys", server.url, "decode: keyframes"
    )
    # When both run for a few seconds
    with running(config(str(tiny_model), sources), classifier) as run:
        wait_until(lambda: len(run.of("udp")) >= 3 and len(run.of("keys")) >= 3, 20, "events")
        time.sleep(1)
        udp_decoded = run.pipeline.stats["udp"].decoded
        keys_decoded = run.pipeline.stats["keys"].decoded
    # Then both classify, and key frames only decodes a fraction of the frames
    assert_no_gaps(run.of("keys"))
    assert 0 < keys_decoded * 5 < udp_decoded


def test_unreachable_hosts_attempts_end_in_time_and_backoff_reaches_cap(
    blackhole: int, classifier: Classifier, tiny_model: Path, recorder: Recorder
) -> None:
    # Given a closed loopback port and a "dead host" (a port whose listen queue is full)
    closed = free_port()
    extra = "open_timeout_s: 1, reconnect: {min_s: 0.2, max_s: 0.8}"
    sources = rtsp("refused", f"rtsp://127.0.0.1:{closed}/cam", extra) + rtsp(
        "dead", f"rtsp://127.0.0.1:{blackhole}/cam", extra
    )
    started = time.time()  # log records carry wall-clock times
    # When the pipeline runs for a while
    with running(config(str(tiny_model), sources), classifier):
        time.sleep(7)
    # Then each stream reported reconnecting once, naming the host and the cause
    for stream, cause in (("refused", "refused"), ("dead", "no answer within 1 s")):
        assert recorder.states(stream) == ["reconnecting", "offline"]
        status = recorder.first(stream, "reconnecting")
        assert status is not None and "127.0.0.1" in (status.reason or "")
        assert cause in (status.reason or "").lower()
    # And every attempt ended within its timeout, the delays growing to the 0.8 s cap
    for stream, attempt_limit in (("refused", 0.5), ("dead", 1.0 + 0.5)):
        attempts = [
            (r.created, float(r.args[-1]))  # type: ignore[index]
            for r in recorder.records
            if r.name == "labelcast.sources.live" and r.args and r.args[0] == stream  # type: ignore[index]
        ]
        assert len(attempts) >= 4, f"{stream}: {len(attempts)} attempts"
        delays = [delay for _, delay in attempts]
        assert delays[0] <= 0.2
        assert delays[0] < delays[1] < delays[2], delays
        assert all(d <= 0.8 for d in delays)
        assert 0.6 <= delays[-1] <= 0.8, delays
        ends = [at for at, _ in attempts]
        first_start = started
        for index, end in enumerate(ends):
            begin = first_start if index == 0 else ends[index - 1] + delays[index - 1]
            assert end - begin <= attempt_limit + (1.0 if index == 0 else 0.3), (stream, index)


def test_sigterm_stops_labelcast_within_5s_while_connecting_and_backing_off(
    blackhole: int, tiny_model: Path, tmp_path: Path
) -> None:
    # Given labelcast run with one source mid-attempt (30 s open timeout against a dead
    # host) and one waiting out a long backoff after a refused connection
    closed = free_port()
    sources = rtsp(
        "dead", f"rtsp://admin:{ENCODED}@127.0.0.1:{blackhole}/cam", "open_timeout_s: 30"
    ) + rtsp(
        "refused",
        f"rtsp://admin:{ENCODED}@127.0.0.1:{closed}/cam",
        "reconnect: {min_s: 30, max_s: 60}",
    )
    path = tmp_path / "live.yaml"
    path.write_text(config(str(tiny_model), sources))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "labelcast", "run", str(path), "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(process.stderr.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        wait_until(
            lambda: any("refused: reconnecting" in line for line in lines), 90, "backing off"
        )
        # When SIGTERM arrives
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(10)
        took = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(5)
    output = "".join(lines) + (process.stdout.read() if process.stdout else "")
    # Then labelcast exits cleanly within 5 s, and the password never showed
    assert took < 5.0, f"shutdown took {took:.1f} s"
    assert code == 0, output
    assert "dead: offline (stopped)" in output
    for leak in LEAKS:
        assert leak not in output


@needs_rtsp
def test_credentials_never_leak_on_any_error_path(
    rtsp_server: Callable[..., RtspServer],
    blackhole: int,
    classifier: Classifier,
    tiny_model: Path,
    recorder: Recorder,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Given a server that wants user admin with a password holding @ : % /
    server = rtsp_server(user="admin", password=PASSWORD)
    port, closed = server.port, free_port()

    def url(user: str, where: str) -> str:
        return f"rtsp://{user}:{ENCODED}@127.0.0.1:{where}"

    extra = "stall_timeout_s: 1.5, open_timeout_s: 1, reconnect: {min_s: 0.2, max_s: 0.5}"
    sources = (
        rtsp("good", url("admin", f"{port}/cam"), extra)
        + rtsp("intruder", url("intruder", f"{port}/cam"), extra)  # 401
        + rtsp("nopath", url("admin", f"{port}/nope"), extra)  # 404
        + rtsp("refused", url("admin", f"{closed}/cam"), extra)
        + rtsp("dead", url("admin", f"{blackhole}/cam"), extra)
    )
    # When the pipeline runs, and the good stream stalls (server frozen) and comes back
    with running(config(str(tiny_model), sources), classifier) as run:
        wait_until(lambda: len(run.of("good")) >= 2, 20, "events with the right password")
        frozen = time.monotonic()
        server.freeze()
        wait_until(lambda: recorder.first("good", "reconnecting", frozen), 6, "stall")
        server.thaw()
        wait_until(lambda: recorder.first("good", "online", frozen), 15, "recovery")
        events = [e.to_json() for _, e in run.events]
    # And each failing URL is also opened once the way `labelcast check` does it
    errors = []
    failing = (
        ("intruder", f"{port}/cam"),
        ("admin", f"{port}/nope"),
        ("admin", f"{closed}/cam"),
        ("admin", f"{blackhole}/cam"),
    )
    for user, where in failing:
        cfg = RtspSourceConfig(id="probe", url=url(user, where), open_timeout_s=1)
        with pytest.raises(SourceError) as info, RtspSource(cfg):
            pass
        errors.append(f"{info.value} {info.value.__cause__!r}")
    # Then the streams failed for the right reasons, naming the host, never the password
    reasons = {s.stream: s.reason or "" for s in recorder.statuses if s.state == "reconnecting"}
    assert "401" in reasons["intruder"]
    assert "404" in reasons["nopath"]
    assert "refused" in reasons["refused"].lower()
    assert "no answer" in reasons["dead"]
    assert "stalled" in reasons["good"]
    assert all("127.0.0.1" in reason for reason in reasons.values())
    assert all("admin:***@127.0.0.1" in e or "intruder:***@" in e for e in errors), errors
    captured = capfd.readouterr()
    everything = "\n".join(
        [*recorder.lines, *reasons.values(), *events, *errors, captured.out, captured.err]
    )
    for leak in LEAKS:
        assert leak not in everything, f"{leak!r} leaked"


@needs_rtsp
def test_overload_drops_oldest_and_keeps_frames_fresh(
    rtsp_server: Callable[..., RtspServer], classifier: Classifier, tiny_model: Path
) -> None:
    # Given a 15 fps stream, every frame sampled, and a classifier at ~4 frames/s
    class Slow:
        def __init__(self, inner: Classifier) -> None:
            self.inner = inner
            self.id2label = inner.id2label
            self.info = inner.info

        def classify(self, images: Any) -> Any:
            time.sleep(0.25)
            return self.inner.classify(images)

    server = rtsp_server()
    source = (
        f"  - {{id: cam, type: rtsp, url: '{server.url}', sample: {{every: 1}}, "
        f"queue_size: 3, options: {FAST_OPEN}}}\n"
    )
    text = config(str(tiny_model), source).replace(
        "device: cpu}", "device: cpu, batch: {max_size: 1, max_wait_ms: 0}}"
    )
    depths: list[int] = []
    with running(text, Slow(classifier)) as run:
        wait_until(lambda: len(run.of("cam")) >= 1, 20, "first event")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            depths.append(run.pipeline.queue_depth("cam"))
            time.sleep(0.02)
    # Read once stopped: by then every classified frame's event was delivered.
    stats = run.pipeline.stats["cam"]
    events = run.of("cam")
    # Then the queue never held more than its 3 frames, and drops were counted
    assert max(depths) <= 3
    assert sum(e.dropped for e in events) > 10
    assert stats.dropped == sum(e.dropped for e in events)
    assert stats.classified + stats.dropped <= stats.decoded
    # And frames were fresh when classified: at most a queue's worth of classifier time old
    steady = events[3:]
    assert steady and max(e.latency_ms for e in steady) < (3 + 1) * 250 + 500
    assert_no_gaps(events)


# --------------------------------------------------------------------------- WebRTC


async def publish(url: str, token: str, clip: Path, until: Callable[[], bool]) -> list[int]:
    """Push ``clip`` to a WHIP endpoint as an aiortc peer; return the HTTP statuses seen."""
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    statuses = []
    player = MediaPlayer(str(clip))
    pc = RTCPeerConnection()
    pc.addTrack(player.video)
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    async with aiohttp.ClientSession() as http:
        sdp = {"Content-Type": "application/sdp"}
        async with http.post(url, data=offer, headers=sdp) as response:
            statuses.append(response.status)  # no token
        auth = {**sdp, "Authorization": f"Bearer {token}"}
        async with http.post(url, data=offer, headers=auth) as response:
            statuses.append(response.status)
            answer = await response.text()
            location = response.headers["Location"]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        deadline = time.monotonic() + 30
        while not until() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        resource = url.split("/whip/")[0] + location
        async with http.delete(resource, headers=auth) as response:
            statuses.append(response.status)
    await pc.close()
    player.video.stop()
    return statuses


def test_webrtc_whip_publisher_pushes_a_clip_and_events_arrive(
    clips: dict[str, Path],
    classifier: Classifier,
    tiny_model: Path,
    recorder: Recorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_module("aiortc", "pip install labelcast[webrtc]")
    import aioice.ice

    # ICE on loopback only (aioice leaves 127.0.0.1 out of its host candidates).
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    port = free_port()
    token = "whip-tok3n-secret"
    source = (
        f"  - {{id: phone, type: webrtc, port: {port}, token: '{token}', "
        "sample: {fps: 2}, stall_timeout_s: 5}\n"
    )
    url = f"http://127.0.0.1:{port}/whip/phone"
    with running(config(str(tiny_model), source), classifier) as run:
        wait_until(lambda: recorder.first("phone", "reconnecting"), 10, "the endpoint")
        # When an aiortc peer publishes the clip over WHIP
        statuses = asyncio.run(
            publish(url, token, clips["long"], until=lambda: len(run.of("phone")) >= 4)
        )
        wait_until(lambda: len(recorder.states("phone")) >= 3, 10, "hang-up")
        events = run.of("phone")
    # Then the offer without the token was refused, the one with it answered
    assert statuses == [401, 201, 200]
    # And events arrived for the stream, without gaps
    assert len(events) >= 4
    assert_no_gaps(events)
    # And the states went waiting -> online -> waiting again after the hang-up
    assert recorder.states("phone")[:3] == ["reconnecting", "online", "reconnecting"]
    waiting = recorder.first("phone", "reconnecting")
    assert waiting is not None and url in (waiting.reason or "")
    assert not any(token in line for line in recorder.lines)


# --------------------------------------------------------------------------- cameras


def test_webrtc_port_in_use_is_a_clear_error() -> None:
    require_module("aiortc", "pip install labelcast[webrtc]")
    from labelcast.sources.webrtc import WebRTCSource, WebRTCSourceConfig

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        source = WebRTCSource(WebRTCSourceConfig(id="phone", port=port))
        with pytest.raises(SourceError, match=f"cannot listen on http://127.0.0.1:{port}"):
            source.__enter__()


def _loopback_devices() -> list[str]:
    found = []
    for name_file in glob.glob("/sys/class/video4linux/video*/name"):
        name = Path(name_file).read_text().strip().lower()
        if "loopback" in name or "dummy" in name:
            found.append("/dev/" + Path(name_file).parent.name)
    return found


def test_camera_device_missing_is_a_clear_error(recorder: Recorder) -> None:
    # Given a camera path that does not exist
    device = "/dev/video97"
    assert not os.path.exists(device)
    # When it is opened the way `labelcast check` does
    missing = re.escape(f"camera {device} not found")
    with (
        pytest.raises(SourceError, match=missing),
        CameraSource(CameraSourceConfig(id="cam", device=device)),
    ):
        pass
    # And an index maps to its device node
    assert CameraSourceConfig(id="cam", device=97).device_path == device


def test_camera_device_missing_in_a_pipeline_retries_and_stops(
    classifier: Classifier, tiny_model: Path, recorder: Recorder
) -> None:
    source = "  - {id: cam, type: camera, device: 97, reconnect: {min_s: 0.2, max_s: 0.4}}\n"
    with running(config(str(tiny_model), source), classifier):
        wait_until(lambda: recorder.first("cam", "reconnecting"), 5, "reconnecting")
    status = recorder.first("cam", "reconnecting")
    assert status is not None and "/dev/video97 not found" in (status.reason or "")


def test_camera_v4l2loopback_delivers_frames(classifier: Classifier, tiny_model: Path) -> None:
    devices = _loopback_devices()
    require(
        "v4l2loopback",
        bool(devices),
        "no /dev/video* with a loopback driver (the v4l2loopback kernel module is not loaded)",
    )
    device = devices[0]
    import av
    import numpy as np

    # A writer thread feeds the loopback device, as a camera would.
    stop = threading.Event()

    def feed() -> None:
        with av.open(device, mode="w", format="v4l2") as output:
            stream = output.add_stream("rawvideo", rate=15)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            picture = np.full((240, 320, 3), 128, np.uint8)
            while not stop.is_set():
                frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                for packet in stream.encode(frame):
                    output.mux(packet)
                time.sleep(1 / 15)

    writer = threading.Thread(target=feed, name="v4l2-feed", daemon=True)
    writer.start()
    try:
        source = f"  - {{id: cam, type: camera, device: {device}, sample: {{fps: 2}}}}\n"
        with running(config(str(tiny_model), source), classifier) as run:
            wait_until(lambda: len(run.of("cam")) >= 2, 20, "camera events")
    finally:
        stop.set()
        writer.join(5)
