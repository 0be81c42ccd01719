"""`labelcast run`'s progress: one bar (or log line) per stream that counts classified frames.

Through the CLI: on a terminal (a pseudo-terminal made with `pty`) the bars reach 100 %
only once the stream's last frame is classified, end with the summary's counts, and log
lines never land inside a bar; without a terminal, plain progress lines keep coming
until the last frame is classified. Plus the arithmetic behind them, without a process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import by_stream, read_events, run_cli, write_config

from labelcast.commands.progress import Progress, percent, progress_line
from labelcast.pipeline.state import StreamStats
from labelcast.sources.sampler import SampleConfig, Sampler

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BAR = re.compile(r"^(?P<stream>\w+): +(?P<percent>\d+)%\|.*\| *(?P<n>\d+)/(?P<total>\d+) \[")
SUMMARY = re.compile(
    r"stream (\w+): \d+ frames decoded, \d+ sampled, (\d+) classified, \d+ dropped"
)
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
LINE = re.compile(r"stream door: (?P<n>\d+)/(?P<total>\d+) frames classified \((?P<percent>\d+)%\)")
ETA = re.compile(r"\d+\.\d frames/s, ETA (\d+:)?\d+:\d\d;")
STALLED = "0.0 frames/s, ETA ?;"


def config(
    tiny_model: Path, out: Path, sources: list[dict[str, Any]], batch: int
) -> dict[str, Any]:
    return {
        "name": "gateway-1",
        # On the CPU whatever the machine: the tests need a classifier slower than decoding.
        "model": {
            "id": str(tiny_model),
            "device": "cpu",
            "batch": {"max_size": batch, "max_wait_ms": 20},
        },
        "sources": sources,
        "sinks": [{"type": "log", "path": str(out)}],
    }


def run_on_terminal(*args: str, timeout: float = 90) -> tuple[int, str]:
    """Run ``python -m labelcast ARGS`` with stdout and stderr on a pseudo-terminal (120
    columns); return its exit code and everything it wrote there, control characters
    included."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "labelcast", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.5)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal's last handle
                break
            if not chunk:
                break
            output += chunk
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        process.kill()
        os.close(master)
    return returncode, output.decode("utf-8", errors="replace")


def screen_lines(output: str) -> list[str]:
    """Split terminal output where the cursor goes back to the start of a line (\\r, \\n).

    Cursor movements are removed, not split on: text written after moving up a line
    continues where the cursor was, so a log line written after a bar shows glued to it.
    """
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", output)) if line.strip()]


def summary(stderr: str) -> dict[str, int]:
    return {stream: int(count) for stream, count in SUMMARY.findall(stderr)}


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEiT large enough (a ViT-Tiny's size) that classifying a frame costs more than decoding it.

    With the tests' tiny model an idle machine classifies faster than it decodes, and there
    is no "after decoding ended" to watch.
    """
    from conftest import make_tiny_beit

    return make_tiny_beit(
        tmp_path_factory.mktemp("slow-beit"),
        hidden_size=192,
        layers=6,
        heads=3,
        intermediate_size=768,
    )


def test_bars_count_classified_frames_and_show_100_only_after_the_last(slow_model, clips, tmp_path):
    # Given a stream whose decoding runs far ahead of a slow classifier (a deep queue, one
    # frame a batch), a short stream that ends (and logs so) while the first is classified, and
    # the events on the terminal too (a log sink on stdout)
    out = tmp_path / "events.jsonl"
    sources = [
        {"id": "door", "type": "file", "path": str(clips["long"]), "sample": {"every": 5}},
        {"id": "lobby", "type": "file", "path": str(clips["short"]), "sample": {"every": 5}},
    ]
    sources[0]["queue_size"] = 256
    settings = config(slow_model, out, sources, batch=1)
    settings["sinks"].append({"type": "log", "path": "-"})
    path = write_config(tmp_path, settings)
    # When it runs with stdout and stderr on a terminal
    returncode, output = run_on_terminal("run", str(path))
    assert returncode == 0, output
    lines = screen_lines(output)
    bars = [(i, m) for i, line in enumerate(lines) if (m := BAR.match(line))]
    events = {stream: len(items) for stream, items in by_stream(read_events(out)).items()}
    # Then each stream's last bar counts what the summary and the events count
    assert events == {"door": 120, "lobby": 20}
    assert summary(output) == events
    for stream, count in events.items():
        last = [m for _, m in bars if m["stream"] == stream][-1]
        assert (last["percent"], last["n"], last["total"]) == ("100", str(count), str(count))
    # and a bar shows 100 % only with its stream's every frame classified, which for door
    # is after its decoding ended: bars drawn between then and its last frame are short of it
    ended = next(i for i, line in enumerate(lines) if "stream door: offline (ended)" in line)
    door = [(i, m) for i, m in bars if m["stream"] == "door"]
    for i, m in door:
        if m["percent"] == "100":
            assert i > ended and m["n"] == m["total"] == "120", lines[i]
    assert any(i > ended and int(m["percent"]) < 100 for i, m in door)
    # with a rate and an ETA while it runs
    assert any(
        re.search(r"\| \d+/120 \[\d\d:\d\d<\d\d:\d\d, +\d+\.\d+ frames/s", lines[i])
        for i, m in door
        if int(m["percent"]) < 100
    )
    # and every log line and event starts a line of its own, also those between bars
    logged = [line for line in lines if " INFO [gateway-1] " in line]
    assert logged and all(TIMESTAMP.match(line) for line in logged), logged
    printed = [line for line in lines if '"schema":"labelcast.label/1"' in line]
    assert len(printed) == 140, printed
    assert all(line.startswith("{") and json.loads(line)["seq"] for line in printed), printed
    lobby_ended = next(i for i, line in enumerate(lines) if "stream lobby: offline" in line)
    assert any(i < lobby_ended for i, _ in bars) and any(i > lobby_ended for i, _ in bars)


def test_progress_lines_continue_until_the_last_frame_is_classified(slow_model, clips, tmp_path):
    # Given a stream decoded into a deep queue and classified one frame at a time, so
    # classification goes on well after decoding has ended
    out = tmp_path / "events.jsonl"
    source = {"id": "door", "type": "file", "path": str(clips["short"]), "sample": {"every": 1}}
    source["queue_size"] = 1024
    path = write_config(tmp_path, config(slow_model, out, [source], batch=1))
    # When it runs without a terminal
    result = run_cli("run", str(path), "--progress-interval", "0.1")
    # Then progress lines count classified frames against the 100 to classify
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr  # no terminal control
    stderr = result.stderr.splitlines()
    ended = next(i for i, line in enumerate(stderr) if "stream door: offline (ended)" in line)
    progress = [(i, m) for i, line in enumerate(stderr) if (m := LINE.search(line))]
    assert progress and all(m["total"] == "100" for _, m in progress)
    # and keep coming, counting on, while the frames left are classified after decoding ended
    after = [int(m["n"]) for i, m in progress if i > ended]
    assert len([n for n in after if n < 100]) >= 2, stderr
    assert after == sorted(after)
    # with a rate and an ETA (or, after a stall of the whole rate window on a busy
    # machine, a rate of 0.0 and an unknown ETA: never a made-up one)
    unfinished = [stderr[i] for i, m in progress if i > ended and m["percent"] != "100"]
    with_eta = [line for line in unfinished if ETA.search(line)]
    assert len(with_eta) >= 2, unfinished
    assert all(ETA.search(line) or STALLED in line for line in unfinished), unfinished
    # until the last, the only one at 100 %, which has the summary's and the events' count
    assert [m["percent"] for _, m in progress].count("100") == 1
    assert progress[-1][1]["percent"] == "100" and progress[-1][1]["n"] == "100"
    assert summary(result.stderr) == {"door": 100} == {"door": len(read_events(out))}


def sampled_indexes(frames: int, fps: int, sample: SampleConfig) -> list[int]:
    sampler = Sampler(sample)
    return [i for i in range(frames) if sampler.take(i, i / fps)]


@pytest.mark.parametrize(
    ("sample", "fps", "frames"),
    [
        (SampleConfig(every=3), 30, 100),
        (SampleConfig(every=1), 25, 100),
        (SampleConfig(fps=2), 30, 600),
        (SampleConfig(fps=5), 25, 101),
    ],
)
def test_expected_is_estimated_from_the_frame_count_and_exact_at_the_end(sample, fps, frames):
    # Given a file of known frame count and a sampling rule
    indexes = sampled_indexes(frames, fps, sample)
    stats = StreamStats("door")
    stats.opened(frames)
    assert stats.expected is None  # nothing sampled yet: no rate to go by
    # When its sampled frames are queued one by one
    estimates = []
    for index in indexes:
        stats.count_sampled(index)
        estimates.append(stats.expected)
    # Then from the second on the total is estimated within a frame (exactly for `every`)
    assert estimates[0] is None
    assert all(e is not None and abs(e - len(indexes)) <= 1 for e in estimates[1:]), estimates
    if sample.every is not None:
        assert set(estimates[1:]) == {len(indexes)}
    # and once the source has ended it is what was queued, less what was dropped
    stats.ended, stats.dropped = True, 2
    assert stats.expected == len(indexes) - 2
    assert not stats.finished
    stats.classified = len(indexes) - 2
    assert stats.finished


def test_a_restarted_source_estimates_from_its_new_run():
    # Given a stream that sampled 10 frames every 2nd, then restarted (a reload) every 5th
    stats = StreamStats("door")
    stats.opened(20)
    for index in range(0, 20, 2):
        stats.count_sampled(index)
    stats.opened(50)
    for index in (0, 5):
        stats.count_sampled(index)
    # Then the estimate adds the new run's rule to all queued so far: 10 + 10
    assert stats.expected == 20


def test_percent_is_rounded_down_and_100_only_when_finished():
    assert percent(199, 200, finished=False) == 99  # tqdm would show 100 %
    assert percent(200, 200, finished=False) == 99  # an estimate reached early
    assert percent(200, 200, finished=True) == 100
    assert percent(5, None, finished=False) is None
    assert percent(0, 0, finished=True) is None


def test_a_stream_finished_between_two_lines_still_gets_its_last_line(caplog):
    # Given a stream whose last frame is classified after the last periodic line
    stats = StreamStats("door", decoded=40, sampled=40, classified=12, total_frames=40)
    caplog.set_level(logging.INFO, logger="labelcast.commands.progress")
    with Progress({"door": stats}, bars=False, log_every_s=3600):
        time.sleep(0.05)
        stats.classified, stats.ended = 40, True
    # Then the last line says 100 % with the final count, once, and no ETA
    lines = [r.getMessage() for r in caplog.records if r.name == "labelcast.commands.progress"]
    assert len(lines) == 1
    assert re.fullmatch(
        r"stream door: 40/40 frames classified \(100%\), \d+\.\d frames/s; "
        r"40/40 decoded, 0 dropped",
        lines[0],
    )


def test_a_stream_stopped_short_gets_no_last_line(caplog):
    # Given a stream stopped (an abort) with frames it will never classify
    stats = StreamStats("door", decoded=40, sampled=40, classified=12, total_frames=40)
    caplog.set_level(logging.INFO, logger="labelcast.commands.progress")
    with Progress({"door": stats}, bars=False, log_every_s=3600):
        stats.ended = True
    # Then no line claims it got further than it did: the summary says where it stopped
    assert not [r for r in caplog.records if r.name == "labelcast.commands.progress"]


def test_an_unknown_total_shows_the_count_and_rate_only():
    stats = StreamStats("cam", decoded=90, sampled=30, classified=28, dropped=1)
    assert progress_line(stats, 2.0, finished=False) == (
        "stream cam: 28 frames classified, 2.0 frames/s, ETA ?; 90 decoded, 1 dropped"
    )
