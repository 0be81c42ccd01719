"""The overlay sink: annotated H.264 files and the live preview, checked in headless Chromium."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
from browser import CHROMIUM, HEADLESS_FLAGS, needs_chromium
from helpers import (
    basic,
    free_port,
    needs,
    read_events,
    run_cli,
    signal_mid_run,
    wait_until,
    write_config,
)
from rtsp_server import missing_requirements

from labelcast import Pipeline, load_config
from labelcast.frames import (
    ChangeEvent,
    Frame,
    Label,
    LabelEvent,
    LabelState,
    ModelInfo,
    UnsampledFrame,
)
from labelcast.sinks.overlay import OverlaySink, OverlaySinkConfig, describe_change, draw_overlay

needs_rtsp = needs("gstreamer-rtsp", missing_requirements())


def decode(path: Path) -> tuple[list[np.ndarray], list[float], float]:
    """Every frame of a file as RGB, their times (s), and the container's duration (s)."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        duration = (container.duration or 0) / 1e6
    return [f.to_ndarray(format="rgb24") for f in frames], [float(f.time) for f in frames], duration


def source_frames(path: Path) -> dict[float, np.ndarray]:
    """The clip's decoded frames by presentation time, rounded to ms."""
    with av.open(str(path)) as container:
        return {
            round(float(f.time), 3): f.to_ndarray(format="rgb24") for f in container.decode(video=0)
        }


def event(stream: str, seq: int, pts: float, label: str, score: float = 0.9) -> LabelEvent:
    return LabelEvent(
        pipeline="t",
        run="r",
        stream=stream,
        seq=seq,
        pts=pts,
        captured_at=1_764_300_000.0 + pts,
        latency_ms=1.0,
        labels=(Label(label, score, 0), Label("cup", 0.05, 4)),
        model=ModelInfo("tiny", None, "fp32"),
        dropped=0,
    )


def start_order(path: Path) -> tuple[str, int]:
    base, _, n = path.stem.partition("-")
    return base, int(n or 0)


def banner_height(image: np.ndarray, lines: int) -> int:
    """The banner's height for a frame with this many lines (as draw_overlay computes it)."""
    size = max(10, round(image.shape[0] / 24))
    pad = max(2, size // 3)
    return pad + lines * (size + pad)


def run_config(tiny_model, clip, output, log_path, **overlay):
    return {
        "name": "ov",
        "model": {"id": str(tiny_model)},
        "sources": [{"id": "door", "type": "file", "path": str(clip), "sample": {"fps": 2}}],
        "sinks": [
            {"type": "log", "path": str(log_path)},
            {"type": "overlay", "output": str(output), "lossless": True, **overlay},
        ],
    }


def test_annotated_file_has_one_frame_per_event_with_the_label_drawn(tiny_model, clips, tmp_path):
    # Given a pipeline over a 4 s, 25 fps clip sampled at 2 fps with an overlay file sink
    log_path = tmp_path / "events.jsonl"
    output = tmp_path / "out" / "{stream}" / "{date}.mp4"
    config = run_config(tiny_model, clips["short"], output, log_path, crf=12, highlight_s=0)
    config["sinks"][0]["events"] = True
    path = write_config(tmp_path, config)
    # When it runs to the end
    Pipeline(load_config(path)).run()
    # Then one file holds one frame per event, at the events' times, lasting as long
    records = read_events(log_path)
    events = [r for r in records if r["schema"] == "labelcast.label/1"]
    highlights = {r["seq"]: change_text(r) for r in records if r["schema"] == "labelcast.change/1"}
    files = sorted((tmp_path / "out" / "door").glob("*.mp4"))
    assert len(files) == 1 and len(events) == 8
    images, times, duration = decode(files[0])
    assert len(images) == len(events)
    first = events[0]["pts"]
    assert times == pytest.approx([e["pts"] - first for e in events], abs=0.002)
    assert duration == pytest.approx(len(events) * 0.5, abs=0.05)
    # And each frame is its event's source frame with a banner carrying the event's label
    sources = source_frames(clips["short"])
    for image, record in zip(images, events, strict=True):
        source = sources[round(record["pts"], 3)]
        highlight = highlights.get(record["seq"])
        top = banner_height(source, 2 if highlight is None else 3)
        inner = (slice(top + 4, -8), slice(8, -8))  # inside a change's border
        below = np.abs(image[inner].astype(int) - source[inner].astype(int)).mean()
        banner = np.abs(image[:top].astype(int) - source[:top].astype(int)).mean()
        assert below < 4 and banner > 30, (below, banner)
        labels = tuple(Label(x["label"], x["score"], x["class_id"]) for x in record["labels"])
        real = event("door", record["seq"], record["pts"], "x")
        real = dataclasses.replace(real, labels=labels, captured_at=_unix(record))
        wrong = dataclasses.replace(real, labels=(Label("space shuttle", 0.5, 6),))
        drawn = draw_overlay(source, real, highlight=highlight).astype(int)[:top]
        other = draw_overlay(source, wrong, highlight=highlight).astype(int)[:top]
        got = image[:top].astype(int)
        # Where the two labels' text differ, the frame looks like its own label's text.
        text = np.abs(drawn - other).max(axis=-1) > 60
        assert text.sum() > 50
        assert np.abs(got - drawn)[text].mean() < np.abs(got - other)[text].mean() / 3


def change_text(record: dict) -> str:
    """The line the overlay draws for a logged change event."""
    change = ChangeEvent(
        "t", "r", "door", record["type"], record["label"], record["previous"], None, 0, 0, 0
    )
    return describe_change(change)


def _unix(record: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(record["captured_at"].replace("Z", "+00:00")).timestamp()


def test_change_frames_are_highlighted_and_files_rotate(tmp_path):
    # Given an overlay sink rotating files every 2 s of stream time
    config = OverlaySinkConfig(
        output=str(tmp_path / "{stream}" / "{date}.mp4"),
        rotate={"max_seconds": 2.0},
        highlight_s=0.0,
    )
    sink = OverlaySink(config)
    grey = np.full((120, 160, 3), 128, np.uint8)
    # When 10 frames at 2 fps arrive and the 3rd confirms a change of label
    for seq in range(1, 11):
        pts = (seq - 1) * 0.5
        sink.send(event("cam", seq, pts, "tabby, tabby cat"), Frame("cam", seq, pts, 0.0, grey))
        if seq == 3:
            change = ChangeEvent("t", "r", "cam", "start", "tabby", None, 0.9, 1.0, 0.0, 3)
            sink.send_change(change, LabelState("t", "cam", "tabby", 0.9, 1.0))
    sink.close()
    # Then the frames are split over 3 playable files (2 s each) and only frame 3 is framed
    # Files are named by their start time (ms); one begun in the same ms gets a -1 suffix.
    files = sorted((tmp_path / "cam").glob("*.mp4"), key=start_order)
    decoded = [decode(f)[0] for f in files]
    assert [len(d) for d in decoded] == [4, 4, 2]
    frames = [image for images in decoded for image in images]
    border = [int(image[60, 0, 0]) - int(image[60, 0, 2]) for image in frames]
    assert border[2] > 100 and all(abs(b) < 20 for i, b in enumerate(border) if i != 2)


def test_a_file_plays_after_sigterm_mid_run(tiny_model, clips, tmp_path):
    # Given `labelcast run` over a long clip sampling every frame, writing an overlay file
    log_path = tmp_path / "events.jsonl"
    output = tmp_path / "out" / "{stream}" / "{date}.mp4"
    config = run_config(tiny_model, clips["long"], output, log_path)
    config["sources"][0]["sample"] = {"every": 1}
    path = write_config(tmp_path, config)
    # When it gets SIGTERM mid-run
    returncode, stderr = signal_mid_run(path, log_path, 20, signal.SIGTERM)
    # Then it exits 0 and the file is complete: every frame of every event decodes
    assert returncode == 0, stderr
    events = read_events(log_path)
    assert 20 <= len(events) < 600
    files = list((tmp_path / "out" / "door").glob("*.mp4"))
    assert len(files) == 1
    images, _, duration = decode(files[0])
    assert len(images) == len(events)
    assert duration == pytest.approx(len(events) / 30, abs=0.1)


def test_all_frames_mode_writes_every_decoded_frame_with_the_latest_label(
    tiny_model, clips, tmp_path
):
    # Given a 4 s, 25 fps clip sampled at 2 fps, and an overlay sink in all-frames mode
    log_path = tmp_path / "events.jsonl"
    output = tmp_path / "out" / "{stream}" / "{date}.mp4"
    config = run_config(
        tiny_model, clips["short"], output, log_path, mode="all-frames", crf=12, highlight_s=0
    )
    config["sinks"][0]["events"] = True
    pipeline = Pipeline(load_config(write_config(tmp_path, config)))
    # When it runs to the end
    pipeline.run()
    # Then the file holds every decoded frame, at the source's times, and 8 were classified
    records = read_events(log_path)
    events = [r for r in records if r["schema"] == "labelcast.label/1"]
    highlights = {r["seq"]: change_text(r) for r in records if r["schema"] == "labelcast.change/1"}
    sources = source_frames(clips["short"])
    files = list((tmp_path / "out" / "door").glob("*.mp4"))
    assert len(files) == 1 and len(events) == 8
    assert pipeline.stats["door"].decoded == len(sources) == 100
    images, times, duration = decode(files[0])
    assert len(images) == len(sources)
    assert times == pytest.approx([t - min(sources) for t in sorted(sources)], abs=0.002)
    assert duration == pytest.approx(4.0, abs=0.05)
    # And each frame is its own source frame, drawn with the label of the latest event at
    # or before it (not the next one): compare against both drawings where their text differs
    by_pts = sorted(events, key=lambda r: r["pts"])
    checked = 0
    for image, pts in zip(images, sorted(sources), strict=True):
        source = sources[pts]
        latest = [r for r in by_pts if r["pts"] <= pts + 1e-6][-1]
        later = [r for r in by_pts if r["pts"] > pts + 1e-6]
        highlight = highlights.get(latest["seq"]) if latest["pts"] == pytest.approx(pts) else None
        top = banner_height(source, 2 if highlight is None else 3)
        inner = (slice(top + 4, -8), slice(8, -8))
        assert np.abs(image[inner].astype(int) - source[inner].astype(int)).mean() < 4
        if not later:
            continue
        drawn, other = (
            draw_overlay(source, logged_event(r), highlight=highlight).astype(int)[:top]
            for r in (latest, later[0])
        )
        text = np.abs(drawn - other).max(axis=-1) > 60
        got = image[:top].astype(int)
        assert np.abs(got - drawn)[text].mean() < np.abs(got - other)[text].mean() / 3
        checked += 1
    assert checked > 80


def test_all_frames_from_a_file_keeps_every_frame_however_far_decoding_runs_ahead(
    tiny_model, clips, tmp_path
):
    # Given a 20 s, 30 fps file (600 frames, 15 per sampled one) and a lossless all-frames
    # sink whose buffer holds fewer frames than the file could decode ahead of its labels
    output = tmp_path / "out" / "{stream}" / "{date}.mp4"
    config = run_config(tiny_model, clips["long"], output, tmp_path / "e.jsonl", mode="all-frames")
    config["sinks"][1]["max_buffered_frames"] = 60
    pipeline = Pipeline(load_config(write_config(tmp_path, config)))
    # When it runs to the end
    pipeline.run()
    # Then the file holds all 600 frames and nothing was dropped anywhere
    (path,) = (tmp_path / "out" / "door").glob("*.mp4")
    images, times, _ = decode(path)
    (_, worker) = pipeline.sinks
    assert len(images) == pipeline.stats["door"].decoded == 600
    assert worker.counters.frames_dropped == worker.sink.unsampled_dropped == 0
    assert times == sorted(times)


def logged_event(record: dict) -> LabelEvent:
    """The LabelEvent a logged label event describes (for drawing it again)."""
    labels = tuple(Label(x["label"], x["score"], x["class_id"]) for x in record["labels"])
    real = event(record["stream"], record["seq"], record["pts"], "x")
    return dataclasses.replace(real, labels=labels, captured_at=_unix(record))


def unsampled(stream: str, index: int, after: int, image: np.ndarray) -> UnsampledFrame:
    picture = av.VideoFrame.from_ndarray(image, format="rgb24")
    return UnsampledFrame(stream, index, index / 10, 0.0, after, picture)


def test_all_frames_orders_early_frames_after_their_label_and_bounds_the_buffer(tmp_path):
    # Given an all-frames sink that buffers at most 4 unsampled frames per stream
    config = OverlaySinkConfig(
        output=str(tmp_path / "{stream}" / "{date}.mp4"),
        mode="all-frames",
        max_buffered_frames=4,
        highlight_s=0.0,
    )
    sink = OverlaySink(config)
    shades = [np.full((64, 96, 3), 20 * i, np.uint8) for i in range(12)]

    def sampled(seq: int, index: int) -> None:
        pts = index / 10
        sink.send(event("cam", seq, pts, "tabby"), Frame("cam", index, pts, 0.0, shades[index]))

    # When frames 1-2 (after sampled 0) arrive before frame 0's event, frame 3 is sampled,
    # 4-5 follow it, sampled frame 6 was dropped (its followers 7-8 still arrive), then
    # sampled frame 9 comes, and 10-11 follow it. Each event is held until the next one
    # (to highlight a change on it), so up to 4 unsampled frames wait at a time.
    for index in (1, 2):
        sink.send_unsampled(unsampled("cam", index, 0, shades[index]))
    sampled(1, 0)
    for index in (4, 5):
        sink.send_unsampled(unsampled("cam", index, 3, shades[index]))
    sampled(2, 3)
    for index in (7, 8):
        sink.send_unsampled(unsampled("cam", index, 6, shades[index]))
    sampled(3, 9)
    sink.send_unsampled(unsampled("cam", 10, 9, shades[10]))
    sink.send_unsampled(unsampled("cam", 11, 9, shades[11]))
    sink.close()
    # Then the file holds the frames in decode order, without the dropped sampled frame 6,
    # and nothing was dropped from the buffer (it never held more than 4)
    (path,) = (tmp_path / "cam").glob("*.mp4")
    images, times, _ = decode(path)
    body = [round(float(image[40:, :, 0].mean()) / 20) for image in images]
    assert body == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert times == sorted(times)
    assert sink.unsampled_dropped == 0
    # And with more waiting than the bound, the oldest is dropped and counted
    sink = OverlaySink(config.model_copy(update={"output": str(tmp_path / "b" / "{stream}.mp4")}))
    for index in (1, 2, 3, 4, 5, 6):
        sink.send_unsampled(unsampled("cam", index, 0, shades[index]))
    sampled(1, 0)
    sink.close()
    assert sink.unsampled_dropped == 2
    images, _, _ = decode(tmp_path / "b" / "cam.mp4")
    assert [round(float(image[40:, :, 0].mean()) / 20) for image in images] == [0, 3, 4, 5, 6]


@needs_rtsp
def test_all_frames_with_a_live_stream_writes_what_it_decodes_also_after_a_reload(
    tiny_model, rtsp_server, tmp_path
):
    # Given an RTSP stream (15 fps) sampled at 2 fps with an all-frames overlay sink
    server = rtsp_server()
    config = {
        "name": "ov",
        "model": {"id": str(tiny_model)},
        "sources": [{"id": "gate", "type": "rtsp", "url": server.url, "sample": {"fps": 2}}],
        "sinks": [
            {
                "type": "overlay",
                "output": str(tmp_path / "{stream}" / "{date}.mp4"),
                "mode": "all-frames",
                "max_buffered_frames": 1000,
            }
        ],
    }
    pipeline = Pipeline(load_config(write_config(tmp_path, config)))
    # When it runs for about 4 s
    pipeline.start()
    deadline = time.monotonic() + 30
    while pipeline.stats["gate"].classified < 8 and time.monotonic() < deadline:
        time.sleep(0.2)
    pipeline.stop()
    assert pipeline.wait(30)
    # Then the file has the decoded frames from the first classified one on, in order
    stats, (worker,) = pipeline.stats["gate"], pipeline.sinks
    assert stats.classified >= 8
    (path,) = (tmp_path / "gate").glob("*.mp4")
    images, times, _ = decode(path)
    lost = worker.counters.frames_dropped + worker.sink.unsampled_dropped
    assert lost == 0
    # Frames decoded before the first classified one are not written (there is no label yet).
    assert stats.decoded - 2 <= len(images) <= stats.decoded
    assert len(images) > 3 * stats.classified
    assert times == sorted(times) and len(set(times)) == len(times)
    # And a pipeline that starts without one gets every frame once a reload adds it
    log_only = dict(config, sinks=[{"type": "log", "path": str(tmp_path / "log.jsonl")}])
    pipeline = Pipeline(load_config(write_config(tmp_path, log_only)))
    pipeline.start()
    try:
        later = dict(config, sinks=[dict(config["sinks"][0])])
        later["sinks"][0]["output"] = str(tmp_path / "later" / "{stream}.mp4")
        pipeline.reconfigure(load_config(write_config(tmp_path, later)))
        classified = pipeline.stats["gate"].classified
        deadline = time.monotonic() + 30
        while pipeline.stats["gate"].classified < classified + 6 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        pipeline.stop()
        assert pipeline.wait(30)
    images, _, _ = decode(tmp_path / "later" / "gate.mp4")
    assert len(images) > 3 * 6


# --- the live preview ----------------------------------------------------------------------


class Feeder:
    """Feeds an overlay sink the frames of a clip at ~``fps`` on a thread, until stopped."""

    def __init__(
        self, sink: OverlaySink, clip: Path, streams: tuple[str, ...], fps: float = 10
    ) -> None:
        with av.open(str(clip)) as container:
            self.images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][::10]
        self.sink, self.streams, self.interval = sink, streams, 1 / fps
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-feeder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            seq += 1
            image = self.images[seq % len(self.images)]
            for stream in self.streams:
                pts = seq * 0.1
                self.sink.send(
                    event(stream, seq, pts, "tabby, tabby cat"), Frame(stream, seq, pts, 0.0, image)
                )
            time.sleep(self.interval)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sink.close()


def read_parts(url: str, count: int, auth: str | None = None) -> list[bytes]:
    """Read ``count`` JPEG parts of an MJPEG stream."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", auth)
    parts = []
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while len(parts) < count:
            line = response.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                response.readline()  # blank line
                parts.append(response.read(length))
    return parts


def count_parts(url: str, seconds: float, counts: list[int]) -> None:
    """Watch an MJPEG stream for ``seconds``; append the number of JPEG parts received."""
    parts = 0
    deadline = time.monotonic() + seconds
    with urllib.request.urlopen(url, timeout=10) as response:
        while time.monotonic() < deadline:
            line = response.readline()
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
                response.readline()  # blank line
                if response.read(length).startswith(b"\xff\xd8"):
                    parts += 1
    counts.append(parts)


def streams_summary(url: str) -> dict[str, dict]:
    """The preview's /api/streams, by stream id."""
    with urllib.request.urlopen(url + "api/streams", timeout=5) as response:
        return {entry["stream"]: entry for entry in json.load(response)}


def chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    return subprocess.run(
        [
            CHROMIUM,
            *HEADLESS_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1280,800",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def preview(clips, tmp_path):
    port = free_port()
    sink = OverlaySink(OverlaySinkConfig(preview={"bind": f"127.0.0.1:{port}"}))
    feeder = Feeder(sink, clips["long"], ("door", "lobby"))
    deadline = time.monotonic() + 10
    while sink._preview is not None and len(sink._preview.summary()) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    feeder.close()


@needs_chromium
def test_preview_page_in_headless_chromium_lists_streams_with_a_changing_picture(preview, tmp_path):
    # Given a preview fed two streams; when headless Chromium loads the index page
    dom = chromium(preview, tmp_path, "--dump-dom", "--virtual-time-budget=2000")
    shot = tmp_path / "preview.png"
    chromium(preview, tmp_path, f"--screenshot={shot}", "--virtual-time-budget=2000")
    # Then the page lists both streams with their labels, and renders a screenshot
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="s-door"' in dom.stdout and 'id="s-lobby"' in dom.stdout
    assert "tabby, tabby cat" in dom.stdout
    assert 'src="stream/door.mjpg"' in dom.stdout
    assert shot.exists() and shot.stat().st_size > 5000
    # And each stream's MJPEG view serves non-empty JPEGs that change
    first, second = read_parts(preview + "stream/door.mjpg", 2)
    assert first.startswith(b"\xff\xd8") and len(first) > 1000 and first != second


def test_many_viewers_share_one_jpeg_per_picture_at_a_capped_frame_rate(clips):
    # Given a preview with default settings, fed 20 pictures a second
    port = free_port()
    sink = OverlaySink(OverlaySinkConfig(preview={"bind": f"127.0.0.1:{port}"}))
    feeder = Feeder(sink, clips["long"], ("door",), fps=20)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 10
        while streams_summary(url).get("door", {}).get("frames", 0) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = streams_summary(url)["door"]
        # When 8 viewers (the default max_clients) watch the stream for 3 s
        counts: list[int] = []
        started = time.monotonic()
        viewers = [
            threading.Thread(target=count_parts, args=(url + "stream/door.mjpg", 3.0, counts))
            for _ in range(8)
        ]
        for viewer in viewers:
            viewer.start()
        for viewer in viewers:
            viewer.join(30)
        elapsed = time.monotonic() - started
        after = streams_summary(url)["door"]
    finally:
        feeder.close()
    # Then each viewer got pictures, but at most max_fps (default 5) a second
    cap = 5 * elapsed + 2
    assert len(counts) == 8 and all(3 <= n <= cap for n in counts), (counts, elapsed)
    # And nothing was encoded while nobody watched; then each picture was encoded once
    # for all viewers, at most max_fps times a second, fewer than the pictures published
    published = after["frames"] - before["frames"]
    encoded = after["jpeg_encodes"] - before["jpeg_encodes"]
    assert before["jpeg_encodes"] == 0
    assert max(counts) <= encoded <= min(cap, published), (counts, encoded, published)


def next_part(response) -> bytes:
    """Read the next JPEG part of an open MJPEG response."""
    while True:
        line = response.readline()
        assert line, "the stream ended"
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            response.readline()  # blank line
            return response.read(length)


def test_a_picture_that_comes_within_the_frame_rate_cap_is_shown_when_the_cap_ends():
    # Given a preview capped at one picture per 2 s, and a viewer that got the first picture
    port = free_port()
    sink = OverlaySink(OverlaySinkConfig(preview={"bind": f"127.0.0.1:{port}", "max_fps": 0.5}))
    dark, light = np.full((48, 64, 3), 20, np.uint8), np.full((48, 64, 3), 230, np.uint8)
    try:
        sink.send(event("door", 1, 0.0, "cup"), Frame("door", 1, 0.0, 0.0, dark))
        url = f"http://127.0.0.1:{port}/stream/door.mjpg"
        with urllib.request.urlopen(url, timeout=10) as response:
            first = next_part(response)
            # When the stream's last picture comes at once, within the cap, and no other
            sink.send(event("door", 2, 0.1, "cup"), Frame("door", 2, 0.1, 0.0, light))
            # Then the viewer gets it once the cap lets the preview encode it
            second = next_part(response)
    finally:
        sink.close()
    assert first.startswith(b"\xff\xd8") and second.startswith(b"\xff\xd8")
    assert second != first


def test_preview_bind_takes_ipv6_and_refuses_a_port_out_of_range(tmp_path):
    # Given a preview on the IPv6 loopback
    port = free_port()
    config = OverlaySinkConfig(preview={"bind": f"[::1]:{port}"})
    sink = OverlaySink(config)
    try:
        sink.send(
            event("door", 1, 0.0, "cup"),
            Frame("door", 1, 0.0, 0.0, np.zeros((48, 64, 3), np.uint8)),
        )
        # When a client asks it for the stream list, then it answers
        assert sink.preview_address is not None and sink.preview_address[0] == "::1"
        port = sink.preview_address[1]
        with urllib.request.urlopen(f"http://[::1]:{port}/api/streams", timeout=5) as response:
            assert json.load(response)[0]["stream"] == "door"
        # And serves the stream's latest picture
        with urllib.request.urlopen(f"http://[::1]:{port}/stream/door.jpg", timeout=5) as response:
            assert response.read().startswith(b"\xff\xd8")
    finally:
        sink.close()
    # And a port past 65535 is a config error naming the field (exit 2), not a traceback
    path = write_config(
        tmp_path,
        {
            "sources": [{"id": "door", "type": "file", "path": "x.mp4"}],
            "sinks": [{"type": "overlay", "preview": {"bind": "127.0.0.1:70000"}}],
        },
    )
    result = run_cli("check", str(path), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "preview.bind" in result.stderr and "65535" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_preview_basic_auth_refuses_a_wrong_password(clips, tmp_path, monkeypatch):
    # Given a preview with a password from the environment
    monkeypatch.setenv("PREVIEW_PASSWORD", "s3cret")
    port = free_port()
    config = {
        "sources": [{"id": "door", "type": "file", "path": str(clips["short"])}],
        "sinks": [
            {
                "type": "overlay",
                "preview": {"bind": f"127.0.0.1:{port}", "password": "${PREVIEW_PASSWORD}"},
            }
        ],
    }
    sink_config = load_config(write_config(tmp_path, config)).sinks[0]
    assert isinstance(sink_config, OverlaySinkConfig)
    assert "s3cret" not in repr(sink_config)
    sink = OverlaySink(sink_config)
    feeder = Feeder(sink, clips["short"], ("door",))
    url = f"http://127.0.0.1:{port}/"
    try:
        # When a client sends no or a wrong password, then it gets 401 with a challenge
        for auth in (None, basic("labelcast", "wrong"), basic("someone", "s3cret")):
            request = urllib.request.Request(url + "stream/door.mjpg")
            if auth:
                request.add_header("Authorization", auth)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 401
            assert refused.value.headers["WWW-Authenticate"].startswith("Basic")

        # And the right password gets the page and the pictures
        def page() -> bytes:
            request = urllib.request.Request(
                url, headers={"Authorization": basic("labelcast", "s3cret")}
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                return bytes(response.read())

        # (the page lists the stream once its first picture is there: a busy machine
        # may take a moment to feed it)
        wait_until(lambda: b'id="s-door"' in page(), 20, "the page to list the stream")
        assert len(read_parts(url + "stream/door.mjpg", 1, basic("labelcast", "s3cret"))) == 1
    finally:
        feeder.close()


def test_a_viewer_that_never_reads_does_not_slow_the_pipeline(tiny_model, clips, tmp_path):
    # Given a pipeline whose overlay preview is lossless (a blocking sink would stall it)
    def run(stalled: bool) -> tuple[float, bytes]:
        port = free_port()
        config = {
            "name": "ov",
            "model": {"id": str(tiny_model)},
            "sources": [
                {"id": "door", "type": "file", "path": str(clips["long"]), "sample": {"every": 2}}
            ],
            "sinks": [
                {"type": "overlay", "lossless": True, "preview": {"bind": f"127.0.0.1:{port}"}}
            ],
        }
        pipeline = Pipeline(load_config(write_config(tmp_path, config)))
        viewers: list[socket.socket] = []
        started = time.monotonic()
        pipeline.start()
        if stalled:
            # When a viewer opens the MJPEG stream and never reads (tiny receive buffer),
            # once the preview has the stream's first picture (the sink gets it on a thread
            # of its own, after classification)
            deadline = time.monotonic() + 30
            url = f"http://127.0.0.1:{port}/"
            while streams_summary(url).get("door", {}).get("frames", 0) < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            viewer = socket.socket()
            viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            viewer.connect(("127.0.0.1", port))
            viewer.sendall(b"GET /stream/door.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
            viewers.append(viewer)
        sinks = pipeline.sinks
        assert pipeline.wait(timeout=60)
        elapsed = time.monotonic() - started
        received = b""
        for viewer in viewers:
            viewer.settimeout(0.5)
            with contextlib.suppress(OSError):
                while chunk := viewer.recv(1 << 20):
                    received += chunk
            viewer.close()
        classified = pipeline.stats["door"].classified
        assert classified == 300 and sinks[0].counters.dropped == 0
        return classified / elapsed, received

    baseline, _ = run(stalled=False)
    with_viewer, received = run(stalled=True)
    parts = received.count(b"--labelcastframe")
    # Then the pipeline's rate is about the same (a blocked lossless sink would stall it for
    # the viewer's whole client_timeout_s; the margin absorbs a shared machine's noise), and
    # the viewer was left behind (it got only the pictures that fit its socket)
    assert with_viewer > 0.4 * baseline, (baseline, with_viewer)
    assert 1 <= parts < 300, received[:300]


def test_overlay_config_needs_an_output_and_rejects_unknown_keys():
    with pytest.raises(ValueError):
        OverlaySinkConfig()
    with pytest.raises(ValueError):
        OverlaySinkConfig(output="out/{stream}/{date}.mp4", colour="red")
    with pytest.raises(ValueError):
        OverlaySinkConfig(output="out/{stream}/{when}.mp4")
