"""Hostile and odd input: YAML bombs, cycles and duplicate keys, overlong ids, files that
are not files, and transport streams cut off mid-packet. Each gets one clear message;
none makes labelcast grow, hang or print a traceback."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import by_stream, free_port, read_events, run_cli, write_config
from media import make_truncated_ts

from labelcast import ConfigError, parse_config
from labelcast.config import config_schema
from labelcast.server import RELOAD_HEADER

# What a config error may cost at most: labelcast's imports take ~300 MB.
MEMORY_LIMIT = 2 << 30

# Ten levels of ten aliases each: 541 bytes that name 10**10 values.
ALIAS_BOMB = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    + [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 10)]
    + ["sources: [{id: a, type: file, path: x.mp4}]", ""]
)

HOSTILE_YAML = {
    "alias-bomb": (ALIAS_BOMB, ["expands to more than"]),
    "list-cycle": ("sources: &a [*a]\n", ["line 1", "alias *a", "cycle"]),
    "mapping-cycle": (
        "model: &m {batch: *m}\nsources: [{id: a, type: file, path: x.mp4}]\n",
        ["line 1", "alias *m", "cycle"],
    ),
    "deep-nesting": ("sources: " + "[" * 5000 + "]" * 5000 + "\n", ["nested deeper than"]),
    "deep-nesting-unclosed": ("sources: " + "[" * 5000 + "\n", ["line 1"]),
}


def limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def run_bounded(*args: str, timeout: float = 20) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``python -m labelcast ARGS`` with its memory capped; return it and its wall time."""
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "labelcast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit_memory,
    )
    return result, time.monotonic() - start


def assert_one_clear_message(stderr: str, *needles: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert [line for line in stderr.splitlines() if " ERROR " in line], stderr
    for needle in needles:
        assert needle in stderr, stderr


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("kind", list(HOSTILE_YAML))
def test_hostile_yaml_is_a_config_error_in_bounded_memory(tmp_path, kind, command):
    # Given a config file that expands without bound, refers to itself or nests 5,000 deep
    text, needles = HOSTILE_YAML[kind]
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    # When labelcast checks or runs it, with its memory capped at 2 GB
    result, elapsed = run_bounded(command, str(path))
    # Then it exits 2 at once, with one message naming the file and the problem
    assert result.returncode == 2, result.stderr[-2000:]
    assert_one_clear_message(result.stderr, str(path), *needles)
    assert elapsed < 20


def test_alias_bomb_is_refused_in_under_a_second():
    # Given the alias bomb, parsed through the Python API in a memory-capped process
    script = (
        "import sys, time\n"
        "from labelcast import ConfigError, parse_config\n"
        "start = time.monotonic()\n"
        "try:\n"
        "    parse_config(sys.stdin.read(), 'bomb.yaml')\n"
        "except ConfigError as exc:\n"
        "    print(round(time.monotonic() - start, 3), exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=ALIAS_BOMB,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory,
    )
    # Then the ConfigError comes in under a second
    assert result.returncode == 0, result.stderr[-2000:]
    elapsed, message = result.stdout.split(" ", 1)
    assert float(elapsed) < 1.0
    assert message.startswith("bomb.yaml line ") and "expands to more than" in message


def test_aliases_within_the_budget_still_work():
    # Given a config that shares a sample rule between two sources with an anchor
    text = (
        "sources:\n"
        "  - {id: a, type: file, path: a.mp4, sample: &every {every: 3}}\n"
        "  - {id: b, type: file, path: b.mp4, sample: *every}\n"
        "labels: {top_k: 3}\n"
    )
    # When it is parsed, then both get it
    config = parse_config(text)
    assert [s.sample.every for s in config.sources] == [3, 3]


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "sources:\n  - id: a\n    type: file\n    path: a.mp4\n    path: b.mp4\n",
            ["line 5", "duplicate key 'path'", "line 4"],
        ),
        (
            "name: one\nsources: [{id: a, type: file, path: a.mp4}]\nname: two\n",
            ["line 3", "duplicate key 'name'", "line 1"],
        ),
        (
            "sources: [{id: a, type: file, path: a.mp4, sample: {fps: 1, fps: 2}}]\n",
            ["line 1", "duplicate key 'fps'"],
        ),
    ],
)
def test_duplicate_keys_are_refused_naming_the_key_and_both_lines(text, needles):
    # Given a mapping with a key written twice, when it is parsed
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "dup.yaml")
    # Then the error names the key and both lines, rather than the last one winning
    message = str(raised.value)
    assert message.startswith("dup.yaml line ")
    for needle in needles:
        assert needle in message, message


def test_merge_keys_may_override_what_they_merge():
    # Given a YAML merge (<<) whose mapping overrides a merged key: not a duplicate
    text = (
        "sources:\n"
        "  - &base {id: a, type: file, path: a.mp4, sample: {fps: 1}}\n"
        "  - {<<: *base, id: b, sample: {fps: 2}}\n"
    )
    config = parse_config(text)
    assert [(s.id, s.path, s.sample.fps) for s in config.sources] == [
        ("a", "a.mp4", 1),
        ("b", "a.mp4", 2),
    ]


def test_duplicate_key_exits_2_through_the_cli(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("sources:\n  - id: a\n    type: file\n    path: a.mp4\n    path: b.mp4\n")
    result = run_cli("check", str(path), timeout=60)
    assert result.returncode == 2
    assert_one_clear_message(result.stderr, f"{path} line 5", "duplicate key 'path'")


@pytest.mark.parametrize(
    ("field", "text"),
    [
        ("sources[0].id", "sources: [{id: %s, type: file, path: a.mp4}]"),
        ("name", "name: %s\nsources: [{id: a, type: file, path: a.mp4}]"),
    ],
)
def test_overlong_ids_and_names_are_refused(field, text):
    # A 64-character id is fine
    parse_config(text % ("a" * 64))
    # 65 and 100,000 are not
    for length in (65, 100_000):
        with pytest.raises(ConfigError) as raised:
            parse_config(text % ("a" * length), "long.yaml")
        message = str(raised.value)
        assert message.startswith(f"long.yaml: {field}: ") and "64 characters" in message
        assert len(message) < 200


def test_the_id_length_limit_is_documented_in_the_schema():
    schema = config_schema()
    name = schema["properties"]["name"]
    assert name["maxLength"] == 64 and "64 characters" in name["description"]
    file_source = schema["$defs"]["FileSourceConfig"]["properties"]["id"]
    assert file_source["maxLength"] == 64 and "64 characters" in file_source["description"]


@pytest.mark.parametrize("kind", ["--set sample.deep", "--set value"])
def test_hostile_set_overrides_are_config_errors(kind):
    text = "sources: [{id: a, type: file, path: a.mp4}]"
    override = (
        "sources.a." + ".".join(["x"] * 5000) + "=1"
        if kind == "--set sample.deep"
        else "labels.map=" + "[" * 5000 + "]" * 5000
    )
    with pytest.raises(ConfigError):
        parse_config(text, overrides=[override])


def test_a_directory_or_a_fifo_as_a_file_path_says_what_it_is(tmp_path, tiny_model):
    # Given file sources whose paths are a directory and a named pipe
    folder = tmp_path / "clips"
    folder.mkdir()
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    config = {
        "model": {"id": str(tiny_model)},
        "sources": [
            {"id": "folder", "type": "file", "path": str(folder)},
            {"id": "fifo", "type": "file", "path": str(fifo)},
        ],
        "sinks": [],
    }
    # When labelcast checks the config
    result = run_cli("check", str(write_config(tmp_path, config)), timeout=60)
    # Then each error says what the path is, not that it is missing
    assert result.returncode == 2
    assert_one_clear_message(
        result.stderr,
        f"stream 'folder': {folder} is a directory, not a video file",
        f"stream 'fifo': {fifo} is a named pipe (FIFO), not a video file",
    )
    assert "not found" not in result.stderr


@pytest.fixture(scope="module")
def truncated_ts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_truncated_ts(tmp_path_factory.mktemp("ts"))


def test_truncated_transport_stream_warns_where_it_ends(tmp_path, tiny_model, truncated_ts):
    # Given a 6 s MPEG-TS clip cut off mid-packet (a TS declares no duration to compare with)
    out = tmp_path / "events.jsonl"
    config = {
        "name": "ts",
        "model": {"id": str(tiny_model)},
        "sources": [{"id": "cut", "type": "file", "path": str(truncated_ts), "sample": {"fps": 2}}],
        "sinks": [{"type": "log", "path": str(out)}],
    }
    # When it runs
    result = run_cli("run", str(write_config(tmp_path, config)), "--no-progress")
    # Then it gives events up to the damage, exits 0, and warns naming the file and its end
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if " WARNING " in line]
    truncation = [line for line in warnings if str(truncated_ts) in line and "truncated" in line]
    assert len(truncation) == 1, result.stderr
    assert "ends at 2." in truncation[0] or "ends at 3." in truncation[0], truncation[0]
    cut = by_stream(read_events(out))["cut"]
    assert 2 <= len(cut) < 12
    assert [e["seq"] for e in cut] == list(range(1, len(cut) + 1))


def test_a_good_transport_stream_gives_no_warning(tmp_path, tiny_model, truncated_ts):
    whole = truncated_ts.parent / "whole.ts"
    out = tmp_path / "events.jsonl"
    config = {
        "name": "ts",
        "model": {"id": str(tiny_model)},
        "sources": [{"id": "whole", "type": "file", "path": str(whole), "sample": {"fps": 2}}],
        "sinks": [{"type": "log", "path": str(out)}],
    }
    result = run_cli("run", str(write_config(tmp_path, config)), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert " WARNING " not in result.stderr, result.stderr
    assert len(read_events(out)) == 12


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_live_reload_rejects_hostile_yaml_without_growing(
    tmp_path, tiny_model, clips, daemon_process
):
    # Given labelcast running a looped clip, with its local endpoint on
    out = tmp_path / "events.jsonl"
    port = free_port()
    config: dict[str, Any] = {
        "name": "hostile",
        "model": {"id": str(tiny_model)},
        "sources": [
            {
                "id": "a",
                "type": "file",
                "path": str(clips["short"]),
                "realtime": True,
                "loop": True,
                "sample": {"fps": 2},
            }
        ],
        "sinks": [{"type": "log", "path": str(out)}],
        "server": {"bind": f"127.0.0.1:{port}"},
    }
    path = write_config(tmp_path, config)
    stderr_path = tmp_path / "daemon.stderr"
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "labelcast", "run", str(path), "--no-progress"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    daemon_process.append(process)

    def wait_for(condition: Any, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert process.poll() is None, stderr_path.read_text()[-3000:]
            # A reload that expands the bomb grows by gigabytes: stop it well before.
            assert rss_bytes(process.pid) < 1.5 * (1 << 30), f"grew while waiting for {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    wait_for(lambda: out.exists() and len(read_events(out)) >= 2, "the first events")
    # When the file becomes the alias bomb and labelcast gets SIGHUP
    path.write_text(ALIAS_BOMB)
    process.send_signal(signal.SIGHUP)
    # Then the reload is rejected at once, with the config error
    wait_for(lambda: "reload rejected" in stderr_path.read_text(), "the rejection", timeout=10)
    assert "expands to more than" in stderr_path.read_text().split("reload rejected")[1]
    # And a cycle, reloaded over POST /reload, is rejected too
    path.write_text(HOSTILE_YAML["mapping-cycle"][0])
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/reload", method="POST", headers={RELOAD_HEADER: "1"}
    )
    with pytest.raises(urllib.error.HTTPError) as rejected:
        urllib.request.urlopen(request, timeout=10)
    assert "cycle" in rejected.value.read().decode()
    # And the stream classifies on, and stops cleanly
    seen = len(read_events(out))
    wait_for(lambda: len(read_events(out)) >= seen + 2, "more events")
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, stderr_path.read_text()[-3000:]
    assert "Traceback" not in stderr_path.read_text()
