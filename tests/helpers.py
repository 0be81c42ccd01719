"""Helpers shared by tests: writing configs, running the CLI, reading JSON Lines."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def write_config(folder: Path, config: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    """Write a pipeline config as YAML and return its path."""
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m labelcast ARGS`` to completion and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "labelcast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def read_events(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file of events."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_stream(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Group events by their stream, keeping their order."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        grouped.setdefault(event["stream"], []).append(event)
    return grouped


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def signal_mid_run(config: Path, log_path: Path, after_lines: int, signum: int) -> tuple[int, str]:
    """Run ``labelcast run CONFIG``, send ``signum`` once ``log_path`` has ``after_lines``
    events, and return its exit code and stderr."""
    process = subprocess.Popen(
        [sys.executable, "-m", "labelcast", "run", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not log_path.exists() or len(log_path.read_text().splitlines()) < after_lines:
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    return process.returncode, stderr
