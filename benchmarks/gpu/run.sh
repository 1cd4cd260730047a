#!/usr/bin/env bash
# The estimator against real loads on an NVIDIA GPU, in one call of the device tool.
#
# Prepare here (the wheels the GPU machine lacks, and llama-cpp-python's sources):
#   bash ../shared/gpu/slim-llama-sdist.sh .gpu && echo /.gpu/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .gpu pydantic pydantic-core \
#     pydantic-settings python-dotenv annotated-types typing-inspection typing-extensions \
#     stamina tenacity          (the versions of .venv; pydantic-core must match pydantic)
# then run(command="bash benchmarks/gpu/run.sh", carry=[".gpu"]) and, back here,
#   .venv/bin/python benchmarks/compare_gpu.py <files_at>/gpu_results.jsonl
#
# On the GPU machine: builds llama-cpp-python for CUDA (sm_90, ~200 s, kept in
# /tmp/llsite while the machine stays warm), writes zero-filled GGUFs of real shapes,
# measures every configuration (measure.py), then runs the library's own GPU path
# (e2e.py). Everything lands in $OUT as it is produced.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
SITE=/tmp/llsite
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$SITE"
say() { echo "[$SECONDS s] $*"; }

python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .gpu/*.whl \
  || { say "wheels did not install"; exit 1; }
export PYTHONPATH=$SITE:$PWD
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv

python3 benchmarks/gpu/shapes.py /tmp/shapes > /tmp/shapes.txt 2>&1 &
shapes=$!
python3 - <<'EOF' &
import os, pynvml, torch
torch.zeros(1, device="cuda")
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(gpu) if p.pid == os.getpid()]
print("torch's CUDA context (NVML, this process):", [m / 2**20 if m else m for m in mine], "MiB")
EOF

if [ ! -f "$SITE/llama_cpp/lib/libllama.so" ]; then
  say "building llama-cpp-python for CUDA"
  rm -rf /tmp/llbuild && mkdir -p /tmp/llbuild && tar xzf .gpu/llcpp-slim.tar.gz -C /tmp/llbuild
  (cd /tmp/llbuild/llama_cpp_python-* && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" \
    CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install -q --no-build-isolation --no-deps \
    --no-compile --target "$SITE" .) > "$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log"; say "build failed"; exit 1; }
fi
wait "$shapes" || { cat /tmp/shapes.txt; say "shapes failed"; exit 1; }
say "built; shapes: $(wc -l < /tmp/shapes.txt) files"

python3 -m zwaif_fallback status --json > "$OUT/status.json" 2>&1
say "status: $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('vram_source'), [g.get('name') for g in d.get('gpus', [])])" "$OUT/status.json")"

(cd benchmarks/gpu && timeout 230 python3 measure.py /tmp/shapes "$OUT/gpu_results.jsonl" \
  "$OUT/probe_logs.txt")
say "measured $(wc -l < "$OUT/gpu_results.jsonl") loads"

timeout 100 python3 benchmarks/gpu/e2e.py /tmp/shapes /tmp/zdata > "$OUT/e2e.json" 2> "$OUT/e2e.log"
say "e2e exit $?"; tail -5 "$OUT/e2e.log"
