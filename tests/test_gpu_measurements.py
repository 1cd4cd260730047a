"""The estimator against real loads on an NVIDIA GPU.

benchmarks/gpu/h100-results.jsonl holds 56 loads measured on an H100 by
benchmarks/gpu/run.sh (llama-cpp-python 0.3.36 built for CUDA, zero-filled GGUFs of
SmolLM2-135M, Qwen2-0.5B, TinyLlama-1.1B and Llama-3-8B shapes in F16 and Q4_0):
llama.cpp's own CUDA buffer logs and NVML's per-process peak during a generation.
The same shapes are written again here and estimated; no GPU is needed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_gpu import H100_RESULTS, cuda_buffers_mb, estimated, nvml_peak_mb  # noqa: E402


@pytest.fixture(scope="module")
def loads(tmp_path_factory):
    return list(estimated(H100_RESULTS, tmp_path_factory.mktemp("shapes")))


def test_the_measurements_cover_every_kind_of_load(loads):
    assert len(loads) == 56 and all(est is not None for _, est in loads)
    kinds = {(row["gpu_layers"] == -1, row["flash_attn"], row["kv_type"]) for row, _ in loads}
    assert {(True, False, "f16"), (True, True, "f16"), (True, True, "q8_0"), (True, True, "q4_0"),
            (False, False, "f16"), (False, True, "q8_0")} <= kinds
    assert {row["model"].split("-")[-1] for row, _ in loads} == {"F16.gguf", "Q4_0.gguf"}


def test_the_estimate_is_within_ten_percent_of_what_the_gpu_gave(loads):
    for row, est in loads:
        assert est.vram_mb == pytest.approx(nvml_peak_mb(row), rel=0.10), row


def test_the_buffers_are_what_llama_cpp_logged(loads):
    for row, est in loads:
        buffers = est.vram_mb - est.vram.overhead_mb
        assert buffers == pytest.approx(cuda_buffers_mb(row), rel=0.05), row
