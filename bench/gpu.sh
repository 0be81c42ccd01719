#!/usr/bin/env bash
# The GPU checks, as one script for the lent GPU machine (see the device tool's README).
# That machine's Python (3.12) has torch and transformers but not PyAV, paho-mqtt or
# pydantic: fetch their wheels here first with bench/fetch_gpu_wheels.sh, then run
#   device run, carry [".whl"], command "bash bench/gpu.sh"
# Results land in $OUT (gpu-tests.log, bench-fp16.json/.txt, bench-fp32.json/.txt).
set -uo pipefail
OUT=${OUT:-/tmp/labelcast-gpu-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(0))" >> "$OUT/gpu.txt" 2>&1
# The GPU tests (marked gpu): preprocessing parity on CUDA, and friends.
timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu-tests.log"
# The benchmark: fp16 (labelcast's CUDA default) and fp32, bare vs e2e vs naive, same run each.
for precision in fp16 fp32; do
  timeout 240 python3 bench/bench.py --device cuda --precision "$precision" --seconds 20 \
    --streams 8 --workdir /tmp/bench-work --json "$OUT/bench-$precision.json" \
    > "$OUT/bench-$precision.txt" 2>&1
done
tail -n 20 "$OUT"/bench-*.txt
