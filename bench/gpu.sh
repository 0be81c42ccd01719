#!/usr/bin/env bash
# The GPU checks, as one script for the lent GPU machine (see the device tool's README).
# That machine's Python (3.12) has torch and transformers but not PyAV, paho-mqtt or
# pydantic: fetch their wheels here first with bench/fetch_gpu_wheels.sh, then run
#   device run, carry [".whl"], command "bash bench/gpu.sh"
# Only 8 files come back from $OUT, so results land there as: gpu.txt (device, versions,
# each step's exit), gpu-tests.log, bench.txt (every run's report, one after another),
# skipped.txt if a step was skipped, and results.tgz with bench-<variant>.json/.txt for
#   fp16, fp32          batch 32, 8 streams at 2 fps, bare vs e2e vs naive
#   fp16-b256           batch 256, 8 streams at 10 fps, plain (no buckets, eager), and
#                       the from-decoded-frames phase: 720p uint8 frames staged through
#                       pinned memory and a side stream, serial vs overlapped
#   fp16-b256-compile   the same with buckets 64,256 and model.compile: torch-compile
#                       (CUDA graphs; compiled at load, in each phase's process)
#   fp16-b256-buckets   buckets 64,256 without compile (the cost of padding alone)
# The whole script stays within 8 minutes: each step gets what is left of that, up to
# its own limit, and steps that would get too little are skipped (said in $OUT/skipped.txt).
set -uo pipefail
OUT=${OUT:-/tmp/labelcast-gpu-out}
RESULTS=/tmp/labelcast-gpu-results
mkdir -p "$OUT" "$RESULTS"
deadline=$((SECONDS + 465))
# left LIMIT: seconds a step may take, at most LIMIT, leaving 15 s for the end.
left() { local rest=$((deadline - SECONDS - 15)); echo $((rest < $1 ? rest : $1)); }
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
# The GPU tests (marked gpu): preprocessing parity, CUDA graphs over buckets, and friends.
timeout "$(left 150)" python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$OUT/gpu-tests.log"

# bench VARIANT LIMIT ARGS...: one benchmark run, if at least 45 s are left for it.
bench() {
  local name=$1 limit t0=$SECONDS
  limit=$(left "$2")
  shift 2
  if [ "$limit" -lt 45 ]; then
    echo "bench-$name: skipped, ${limit} s left" | tee -a "$OUT/skipped.txt"
    return
  fi
  timeout "$limit" python3 bench/bench.py --device cuda --workdir /tmp/bench-work \
    --json "$RESULTS/bench-$name.json" "$@" > "$RESULTS/bench-$name.txt" 2>&1
  echo "bench-$name: exit $? after $((SECONDS - t0)) s" >> "$OUT/gpu.txt"
  { echo "=== bench-$name: bench/bench.py $*"; cat "$RESULTS/bench-$name.txt"; echo; } >> "$OUT/bench.txt"
  tar -czf "$OUT/results.tgz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
}
b256=(--precision fp16 --batch 256 --streams 8 --seconds 20 --fps 10 --skip-naive)
buckets=(--buckets 64,256)
bench fp16 100 --precision fp16 --seconds 20 --streams 8
bench fp16-b256 100 "${b256[@]}" --from-frames
bench fp16-b256-compile 200 "${b256[@]}" "${buckets[@]}" --compile torch-compile
bench fp32 90 --precision fp32 --seconds 20 --streams 8
bench fp16-b256-buckets 70 "${b256[@]}" "${buckets[@]}"
# ONNX Runtime's CUDA execution provider, where that machine has onnxruntime-gpu and the
# exporter's packages (its wheels are too large to carry): fp32, batch 32, beside fp16 above.
if python3 -c "import onnx, onnxscript, onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()" 2>/dev/null; then
  bench ort-cuda 120 --backend onnxruntime --seconds 20 --streams 8
else
  echo "bench-ort-cuda: skipped, no onnxruntime-gpu (with onnx, onnxscript) here" | tee -a "$OUT/skipped.txt"
fi
tail -n 20 "$RESULTS"/bench-*.txt
