"""Helpers shared by tests: writing configs, running the CLI, reading JSON Lines, and
requiring the real components (servers, browsers, optional packages) some tests need."""

from __future__ import annotations

import base64
import importlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

# Components CI knowingly runs without (comma-separated names, e.g. "v4l2loopback,cuda"):
# their tests skip even under CI=true, and say so.
WITHOUT_VARIABLE = "LABELCAST_TESTS_WITHOUT"


def in_ci() -> bool:
    """Whether the tests run under CI (``CI`` set to anything but empty, 0, false or no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(component: str, available: bool, why: str) -> None:
    """Skip the calling test (or module) when ``component`` is missing; fail it under CI.

    Every test that needs a real component (the GStreamer RTSP server, Chromium, aiortc,
    ONNX Runtime, a CUDA device, ...) asks through here, so that a CI machine missing one
    fails the run instead of passing with the test silently skipped. ``why`` says what is
    missing and how to get it. A component named in ``$LABELCAST_TESTS_WITHOUT`` skips
    even under CI: the CI script then says plainly what it does not test.
    """
    if available:
        return
    message = f"{component} is missing: {why}"
    declared = {name.strip() for name in os.environ.get(WITHOUT_VARIABLE, "").split(",")}
    if in_ci() and component not in declared:
        pytest.fail(
            f"CI=true and {message} (install it, or list {component!r} in "
            f"${WITHOUT_VARIABLE} to skip its tests knowingly)",
            pytrace=False,
        )
    pytest.skip(message, allow_module_level=True)


def require_module(name: str, why: str = "") -> ModuleType:
    """Import and return module ``name``, or ``require`` it (skip; fail under CI)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        require(name, False, f"{why or 'cannot import it'} ({exc})")
        raise  # not reached: require skipped or failed


def needs(component: str, missing: str | None) -> pytest.MarkDecorator:
    """Mark a test that needs ``component``; ``missing`` says what lacks (None: nothing).

    tests/conftest.py's ``pytest_runtest_setup`` checks the mark with
    ``check_requirements`` before the test's fixtures are set up.
    """
    return pytest.mark.requires(component, missing)


def check_requirements(item: pytest.Item) -> None:
    """Apply ``require`` to each ``requires(component, missing)`` mark of a test."""
    for mark in item.iter_markers("requires"):
        component, missing = mark.args
        require(component, missing is None, missing or "")


def write_config(folder: Path, config: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    """Write a pipeline config as YAML and return its path."""
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m labelcast ARGS`` to completion and capture its output.

    The run is a separate process forked from a server that has done the imports
    (tests/cli_process.py): the same command, without 5-10 s of start-up each time.
    """
    from cli_process import run_cli_process

    return run_cli_process(list(args), timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


def read_events(path: Path) -> list[dict[str, Any]]:
    """Read a JSON Lines file of events."""
    # A writer may be mid-line: only complete lines (ending in a newline) are events yet.
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


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


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` every 0.1 s until truthy; return its value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def basic(user: str, password: str) -> str:
    """An ``Authorization`` header value for HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
