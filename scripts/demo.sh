#!/usr/bin/env bash
# Install labelcast in .venv and run the bundled example pipeline (configs/example.yaml).
# Extra arguments go to `labelcast run`, e.g. --set model.id=models/beit for a local copy.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import ensurepip" 2>/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e .
exec .venv/bin/labelcast run configs/example.yaml "$@"
