#!/usr/bin/env bash
# Download, here, the wheels bench/gpu.sh needs on the GPU machine (Python 3.12, x86-64),
# into .whl/ (ignored by git; carried to the machine by the device tool).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_24_x86_64 manylinux1_x86_64 any; do
  platforms+=(--platform "$p")
done
# The versions installed here, so that pydantic and pydantic-core match.
mapfile -t packages < <(.venv/bin/python - <<'PY'
from importlib.metadata import version
for name in ("av", "paho-mqtt", "pydantic", "pydantic-core", "annotated-types",
             "typing-inspection", "prometheus-client"):
    print(f"{name}=={version(name)}")
PY
)
for package in "${packages[@]}"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$package"
done
ls -la .whl
