"""tests/helpers.require: a test whose real component is missing skips, but fails under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

# A tiny test suite: one test needing a component that no machine has, asked both ways
# (the `needs` mark, checked before fixtures, and `require` in the test's body), one test
# importing a module that does not exist, and one whose component is there.
CONFTEST = """
from helpers import check_requirements


def pytest_runtest_setup(item):
    check_requirements(item)
"""
SUITE = """
from helpers import needs, require, require_module


@needs("flux-capacitor", "no flux capacitor on this machine")
def test_marked():
    raise AssertionError("must not run")


def test_in_body():
    require("flux-capacitor", False, "no flux capacitor on this machine")
    raise AssertionError("must not run")


def test_module():
    require_module("labelcast_no_such_module")
    raise AssertionError("must not run")


@needs("python", None)
def test_present():
    require("python", True, "")
"""


def run_suite(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(SUITE)
    variables = {k: v for k, v in os.environ.items() if k not in ("CI", "LABELCAST_TESTS_WITHOUT")}
    variables["PYTHONPATH"] = os.pathsep.join([str(TESTS), variables.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**variables, **env},
    )


def test_a_missing_component_skips_outside_ci(tmp_path: Path) -> None:
    # Given tests needing a missing component; when they run without CI
    result = run_suite(tmp_path)
    # Then they are skipped, each saying what is missing, and the run passes
    assert result.returncode == 0, result.stdout[-3000:]
    assert "1 passed, 3 skipped" in result.stdout
    assert "flux-capacitor is missing: no flux capacitor on this machine" in result.stdout
    assert "labelcast_no_such_module is missing" in result.stdout


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_component_fails_the_run_under_ci(tmp_path: Path, ci: str) -> None:
    # Given the same tests; when they run with CI=true
    result = run_suite(tmp_path, CI=ci)
    # Then every test needing the missing component fails the run, saying why
    assert result.returncode == 1, result.stdout[-3000:]
    assert "must not run" not in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert "1 passed" in summary and "skipped" not in summary, summary
    # (a mark fails in setup, reported as an error; require in a body as a failure)
    assert "2 failed" in summary and "1 error" in summary, summary
    assert result.stdout.count("CI=true and flux-capacitor is missing") == 2


def test_ci_may_declare_a_component_it_runs_without(tmp_path: Path) -> None:
    # Given CI=true that declares it has no flux capacitor (and nothing else)
    result = run_suite(tmp_path, CI="true", LABELCAST_TESTS_WITHOUT="flux-capacitor, v4l2loopback")
    # Then the flux capacitor's tests skip, and the missing module still fails the run
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 failed, 1 passed, 2 skipped" in summary, summary
