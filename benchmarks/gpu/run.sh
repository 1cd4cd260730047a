#!/usr/bin/env bash
# Run on the GPU machine from the repository root (the device tool copies the tree there).
# Prepare here first:
#   bash ../shared/gpu/slim-llama-sdist.sh .gpu && echo /.gpu/ >> .git/info/exclude
# then: run(command="bash benchmarks/gpu/run.sh", carry=[".gpu"]) and, back here,
#   .venv/bin/python benchmarks/compare_gpu.py <files_at>/gpu_results.jsonl
set -euo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT" .gpu/site .gpu/build
python3 -m pip install -q --no-index --no-deps --target .gpu/site .gpu/*.whl
tar xzf .gpu/llcpp-slim.tar.gz -C .gpu/build
(cd .gpu/build/llama_cpp_python-* && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90" \
  CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install -q --no-build-isolation --no-deps \
  --target ../../site .)
export PYTHONPATH=$PWD/.gpu/site
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv > "$OUT/nvidia-smi.csv"
python3 benchmarks/gpu/shapes.py /tmp/shapes > /dev/null
python3 benchmarks/gpu/measure.py /tmp/shapes "$OUT/gpu_results.jsonl"
