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
# /tmp/llsite while the machine stays warm) while hf_measure.py measures transformers
# loads, then runs the library's own GPU path (e2e.py), the shared-GPU check of issue 12
# (shared_gpu.py), llama.cpp's dry run against real loads, and with the time left every
# configuration of measure.py. Everything lands in $OUT as it is produced (8 files at most:
# the logs go to one file).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
SITE=/tmp/llsite
LOG=$OUT/logs.txt
export PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$SITE"
say() { echo "[$SECONDS s] $*"; }
section() { echo "===== $1" >> "$LOG"; cat "$2" >> "$LOG" 2>/dev/null; }

python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" .gpu/*.whl \
  || { say "wheels did not install"; exit 1; }
export PYTHONPATH=$SITE:$PWD
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv

python3 benchmarks/gpu/shapes.py /tmp/shapes > /tmp/shapes.txt 2>&1 &
shapes=$!
timeout 150 python3 benchmarks/gpu/hf_measure.py /tmp/hfm "$OUT/hf_results.jsonl" --device cuda \
  > /tmp/hf.log 2>&1 &
hf=$!

if [ ! -f "$SITE/llama_cpp/lib/libllama.so" ]; then
  say "building llama-cpp-python for CUDA"
  rm -rf /tmp/llbuild && mkdir -p /tmp/llbuild && tar xzf .gpu/llcpp-slim.tar.gz -C /tmp/llbuild
  (cd /tmp/llbuild/llama_cpp_python-* && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" \
    CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install -q --no-build-isolation --no-deps \
    --no-compile --target "$SITE" .) > /tmp/build.log 2>&1 \
    || { tail -40 /tmp/build.log; section build /tmp/build.log; say "build failed"; exit 1; }
fi
wait "$shapes" || { cat /tmp/shapes.txt; say "shapes failed"; exit 1; }
say "built; shapes: $(wc -l < /tmp/shapes.txt) files"
wait "$hf"; say "hf_measure exit $?"; section hf_measure /tmp/hf.log; tail -20 /tmp/hf.log

python3 -m zwaif_fallback status --json > "$OUT/status.json" 2>&1
say "status: $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('vram_source'), [g.get('name') for g in d.get('gpus', [])])" "$OUT/status.json")"

timeout 80 python3 benchmarks/gpu/e2e.py /tmp/shapes /tmp/zdata > "$OUT/e2e.json" 2> /tmp/e2e.log
say "e2e exit $?"; section e2e /tmp/e2e.log; tail -5 /tmp/e2e.log

(cd benchmarks/gpu && timeout 200 python3 shared_gpu.py /tmp/shapes /tmp/sgdata \
  > "$OUT/shared_gpu.json" 2> /tmp/shared_gpu.log)
say "shared_gpu exit $?"; section shared_gpu /tmp/shared_gpu.log; tail -8 /tmp/shared_gpu.log

if [ -f zwaif_fallback/dry_run.py ]; then
  timeout 60 python3 benchmarks/gpu/dry_run_gpu.py /tmp/shapes > "$OUT/dry_run_gpu.json" 2> /tmp/dry.log
  say "dry run exit $?"; section dry_run /tmp/dry.log; tail -3 /tmp/dry.log
fi

left=$(( 570 - SECONDS ))
if [ "$left" -gt 20 ]; then
  (cd benchmarks/gpu && timeout "$left" python3 measure.py /tmp/shapes "$OUT/gpu_results.jsonl" \
    /tmp/probe_logs.txt)
  say "measured $(wc -l < "$OUT/gpu_results.jsonl") loads"
fi
