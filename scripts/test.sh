#!/usr/bin/env bash
# Install what the test suite needs, then run linters, type checks and the tests.
# This is the README's test command; .ci/run calls it. Extra arguments go to pytest
# (e.g. `scripts/test.sh -m slow` for the long runs CI skips, `-n 0` for one process).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests use (real brokers, servers, browsers), installed when missing.
need=()
python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
dpkg -s python3-gi >/dev/null 2>&1 || need+=(python3-gi)
dpkg -s gir1.2-gst-rtsp-server-1.0 >/dev/null 2>&1 || need+=(gir1.2-gst-rtsp-server-1.0)
dpkg -s gstreamer1.0-rtsp >/dev/null 2>&1 || need+=(gstreamer1.0-rtsp)
dpkg -s gstreamer1.0-plugins-good >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-good)
dpkg -s gstreamer1.0-plugins-bad >/dev/null 2>&1 || need+=(gstreamer1.0-plugins-bad)
dpkg -s mosquitto >/dev/null 2>&1 || need+=(mosquitto)
dpkg -s chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
# constraints.txt pins torch to a release whose CPU build pip prefers when one is at hand.
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
# The Triton tests run `labelcast serve` (PyTriton), whose Python backend stub must match the
# interpreter: it works with Debian's Python, not every build, so the server gets a venv of
# its own made from /usr/bin/python3 (tests/triton_server.py; docs/scaling.md).
[ -x .venv-serve/bin/python ] || /usr/bin/python3 -m venv .venv-serve
.venv-serve/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[serve]'
export LABELCAST_REQUIRE_TRITON=1
# A V4L2 loopback device needs a kernel module that a container can't load: without a
# /dev/video* device, say so and name the component, so only that test skips, visibly.
if ! compgen -G "/dev/video*" >/dev/null; then
  echo "test.sh: no /dev/video* device; the v4l2loopback camera test is skipped" >&2
  export LABELCAST_TESTS_WITHOUT="${LABELCAST_TESTS_WITHOUT:+$LABELCAST_TESTS_WITHOUT,}v4l2loopback"
fi  # so the Triton tests fail, not skip, if it is unusable

.venv/bin/ruff check labelcast tests bench
.venv/bin/ruff format --check labelcast tests bench
.venv/bin/mypy labelcast
# One test process per core: most tests wait on real brokers, servers and subprocesses.
exec .venv/bin/pytest -n auto --durations=15 "$@"
