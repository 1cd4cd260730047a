"""Calibration on a GPU: what a real load measured corrects the estimate's buffers.

NVML is the process edge here: the per-process readings a load sees are given, the
load itself is real (llama.cpp on the CPU), the history is a real SQLite file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zwaif_fallback import FallbackSettings, plan
from zwaif_fallback.backends.llama_cpp import LlamaCppBackend
from zwaif_fallback.calibration import MIN_GPU_BUFFERS_MB, Calibration
from zwaif_fallback.catalog import Catalog
from zwaif_fallback.memory import CUDA_LOAD_CONTEXT_MB
from zwaif_fallback.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"))
from shapes import write  # noqa: E402

GPU = "gpu:NVIDIA H100 80GB HBM3"


def inspect(path):
    return Catalog().inspect_path(path, FallbackSettings(scan_system_stores=False))


@pytest.fixture(scope="module")
def tinyllama(tmp_path_factory):
    """A zero-filled TinyLlama-1.1B Q4_0: about 1.2 GiB of buffers on a GPU."""
    return inspect(write(tmp_path_factory.mktemp("shape"), "tinyllama-1.1b", "Q4_0"))


@pytest.fixture
def calibration(tmp_path):
    store = Store(tmp_path)
    yield Calibration(lambda: store)
    store.close()


def on_a_gpu(model, **calibrated):
    return plan(model, n_ctx=4096, free_vram_mb=[80000], free_ram_mb=64000, **calibrated)


def test_a_gpu_measurement_corrects_the_buffers_and_leaves_the_context(tinyllama, calibration):
    fit = on_a_gpu(tinyllama)
    overhead = fit.vram_breakdown.overhead_mb
    buffers = fit.vram_mb - overhead
    assert fit.verdict == "gpu" and buffers > MIN_GPU_BUFFERS_MB
    calibration.record(tinyllama, fit, (50.0, buffers * 1.2), device=GPU)
    scale, _, calibrated = calibration.scales(tinyllama, 4096, False, "f16", gpu_device=GPU)
    assert calibrated and scale == pytest.approx(1.2, rel=1e-3)
    fixed = on_a_gpu(tinyllama, vram_scale=scale, calibrated=True)
    assert fixed.vram_breakdown.overhead_mb == overhead
    assert fixed.vram_mb - overhead == pytest.approx(buffers * 1.2, rel=1e-3)
    # The same measurement again, now against the corrected plan: no compounding.
    calibration.record(tinyllama, fixed, (50.0, buffers * 1.2), device=GPU)
    scale, _, _ = calibration.scales(tinyllama, 4096, False, "f16", gpu_device=GPU)
    assert scale == pytest.approx(1.2, rel=1e-3)


def test_small_models_are_not_calibrated_on_a_gpu(tiny_gguf, calibration):
    model = inspect(tiny_gguf)
    fit = on_a_gpu(model)
    assert fit.gpu_layers > 0 and fit.vram_mb - fit.vram_breakdown.overhead_mb < MIN_GPU_BUFFERS_MB
    calibration.record(model, fit, (5.0, 3.0), device=GPU)
    assert calibration.scales(model, 4096, False, "f16", gpu_device=GPU) == (1.0, 1.0, False)


def test_a_load_measures_the_models_buffers_not_the_runtimes_context(tiny_gguf):
    # NVML's per-process figure: nothing before the first load, the context and 300 MiB after.
    readings = iter([None, CUDA_LOAD_CONTEXT_MB + 300.0])
    backend = LlamaCppBackend("tiny", str(tiny_gguf), n_ctx=256, vram_probe=lambda pid: next(readings))
    backend.load()
    assert backend.measured_mb[1] == pytest.approx(300.0)
    backend.unload()
    readings = iter([CUDA_LOAD_CONTEXT_MB, CUDA_LOAD_CONTEXT_MB + 300.0])  # the context stays
    backend.load()
    assert backend.measured_mb[1] == pytest.approx(300.0)
    backend.unload()


def test_libstdcxx_is_made_global_before_llama_cpp_loads():
    """A CUDA build's libggml-cuda can carry its own libstdc++; with numpy imported first,
    llama.cpp's first tokenization then crashed (SIGSEGV, seen on an H100). The fix puts
    the system libstdc++ in the global scope before llama_cpp loads."""
    if sys.platform != "linux":
        pytest.skip("a Linux dynamic-linking matter")
    code = ("import ctypes\n"
            "from zwaif_fallback.backends.llama_preflight import import_llama\n"
            "symbol = '_ZNSt6locale7classicEv'  # std::locale::classic()\n"
            "before = hasattr(ctypes.CDLL(None), symbol)\n"
            "import_llama()\n"
            "print(before, hasattr(ctypes.CDLL(None), symbol))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "True", out.stdout
