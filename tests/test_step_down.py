"""A load that runs out of memory steps down instead of failing; loads use fresh memory figures.

The CPU case is real: a child process under RLIMIT_AS asks for a context whose buffers
cannot be had, llama.cpp's allocation fails, and the loader halves the context until
one fits. GPU cases are simulated at the edges: NVML's free memory (fake_nvml) and
llama.cpp's allocation of device buffers (a Llama constructor that fails the way a
cudaMalloc does, for plans above what the simulated card holds).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fake_nvml.fake_ggml import cuda_build
from fake_nvml.pynvml import FakeNvml

from zwaif_fallback import (
    FallbackManager,
    FallbackSettings,
    HardwareProbe,
    ModelLoadError,
    OutOfMemory,
)
from zwaif_fallback.step_down import MIN_STEP_DOWN_CTX

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "gpu"))
from shapes import write  # noqa: E402

TINY = "tinyllama-1.1b-Q4_0"

CHILD = r"""
import json, resource, sys
limit = int(sys.argv[3])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from zwaif_fallback import FallbackManager, FallbackSettings
settings = FallbackSettings(models_dir=sys.argv[1], data_dir=sys.argv[2], scan_system_stores=False,
                            n_ctx=int(sys.argv[4]), keep_alive=0, vram_monitoring=False,
                            preferred_model="tinyllama-1.1b-Q4_0",
                            settings_file=sys.argv[2] + "/settings.json")
with FallbackManager(settings, background=False) as manager:
    result = manager.chat([{"role": "user", "content": "hi"}], max_tokens=4)
    peak = next(l for l in open("/proc/self/status") if l.startswith("VmPeak")).split()[1]
    print("RESULT " + json.dumps({"attempts": [a.model_dump() for a in result.attempts],
                                  "model": result.model, "text": result.text,
                                  "vm_peak": int(peak) * 1024}))
"""


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_models")
    write(folder, "tinyllama-1.1b", "Q4_0")
    return folder


def run_child(models: Path, data: Path, limit: int, n_ctx: int) -> dict:
    data.mkdir(exist_ok=True)
    run = subprocess.run([sys.executable, "-c", CHILD, str(models), str(data), str(limit),
                          str(n_ctx)], capture_output=True, text=True, timeout=300)
    found = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert found, run.stderr[-3000:]
    return json.loads(found[0][7:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_a_context_that_cannot_be_allocated_steps_down_until_one_fits(tiny_models, tmp_path):
    # How much address space a load takes at 8192 and at 16384 tokens, measured, not guessed:
    # the limit goes between them, so 32768 and 16384 fail for real and 8192 loads.
    fits = run_child(tiny_models, tmp_path / "a", 0, 8192)["vm_peak"]
    too_big = run_child(tiny_models, tmp_path / "b", 0, 16384)["vm_peak"]
    assert too_big - fits > 200 * 2**20
    limit = (fits + too_big) // 2
    result = run_child(tiny_models, tmp_path / "c", limit, 32768)

    (attempt,) = [a for a in result["attempts"] if a["target"] == TINY]
    assert attempt["ok"] and result["text"]
    assert attempt["notes"] == [
        "out of memory with 0 GPU layers and n_ctx 32768: trying 0 GPU layers and n_ctx 16384",
        "out of memory with 0 GPU layers and n_ctx 16384: trying 0 GPU layers and n_ctx 8192",
    ]


class LlamaEdge:
    """llama.cpp at its edge, on a simulated card: a plan of more GPU layers than
    ``max_layers`` fails as a cudaMalloc failure does, logging it through the callback the
    backend installed with ``llama_log_set``; other plans load for real on the CPU."""

    def __init__(self, monkeypatch, max_layers: int, line: bytes = b"") -> None:
        import llama_cpp

        self.real, self.max_layers, self.asked = llama_cpp.Llama, max_layers, []
        self.line = line or (b"ggml_backend_cuda_buffer_type_alloc_buffer: allocating 4096.00 "
                             b"MiB on device 0: cudaMalloc failed: out of memory\n")
        self.callbacks: list = []
        real_set = llama_cpp.llama_log_set

        def log_set(callback, user_data):
            self.callbacks.append(callback)
            real_set(callback, user_data)

        monkeypatch.setattr(llama_cpp, "llama_log_set", log_set)
        monkeypatch.setattr(llama_cpp, "Llama", self)

    def __call__(self, path, **options):
        layers = options["n_gpu_layers"]
        self.asked.append((layers, options["n_ctx"], options.get("main_gpu")))
        if layers > self.max_layers:
            self.callbacks[-1](4, self.line, None)
            raise ValueError("Failed to load model from file")
        return self.real(path, **options)


@pytest.fixture
def simulated_card(monkeypatch, smollm2):
    """llama.cpp that fits at most 10 GPU layers on the card."""
    return LlamaEdge(monkeypatch, max_layers=10)


def gpu_manager(isolated, nvml: FakeNvml, **settings) -> FallbackManager:
    base = dict(models_dir=isolated, scan_system_stores=False, keep_alive=0, vram_monitoring=False,
                preferred_model="SmolLM2-135M-Instruct.Q4_1", n_ctx=2048)
    return FallbackManager(FallbackSettings(**(base | settings)),
                           probe=HardwareProbe(nvml=nvml, ggml=cuda_build()), background=False)


def test_a_gpu_load_that_runs_out_steps_to_fewer_layers_then_answers(isolated, simulated_card):
    nvml = FakeNvml([{"name": "RTX 4090", "total_mb": 24564, "used_mb": 24564 - 1500}])
    with gpu_manager(isolated, nvml) as manager:
        planned = manager.check_compatibility("SmolLM2-135M-Instruct.Q4_1")
        assert planned.verdict == "gpu" and planned.gpu_layers == 31
        result = manager.chat([{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert result.source == "local" and result.text
    notes = result.attempts[-1].notes
    assert notes[0].startswith("out of memory with 31 GPU layers and n_ctx 2048: trying 15 GPU")
    # 31 fails, 15 fails, 7 fits: each rung is logged once, and nothing was retried as it was
    layers = [asked[0] for asked in simulated_card.asked]
    assert layers == [31, 15, 7]
    assert len(notes) == 2


def test_a_gpu_that_holds_nothing_ends_on_the_cpu_with_no_gpu_device(isolated, monkeypatch,
                                                                       smollm2):
    card = LlamaEdge(monkeypatch, max_layers=0)  # not even one layer fits
    nvml = FakeNvml([{"name": "RTX 3060", "total_mb": 12288, "used_mb": 12288 - 2000}])
    with gpu_manager(isolated, nvml) as manager:
        result = manager.chat([{"role": "user", "content": "Say hi."}], max_tokens=4)
    assert result.text
    layers, _ctx, main_gpu = card.asked[-1]
    assert layers == 0 and main_gpu == -1  # the CPU plan opens no GPU device at all
    assert [asked[0] for asked in card.asked] == [31, 15, 7, 0]  # two rungs of fewer layers
    assert "trying 0 GPU layers" in result.attempts[-1].notes[-1]


def test_other_load_failures_are_not_stepped_down(isolated, monkeypatch, smollm2):
    card = LlamaEdge(monkeypatch, max_layers=-1, line=b"llama_model_load: error loading model\n")
    nvml = FakeNvml([{"name": "RTX 4090", "total_mb": 24564, "used_mb": 2000}])
    with gpu_manager(isolated, nvml) as manager:
        with pytest.raises(ModelLoadError) as failed:
            manager.switch_model("SmolLM2-135M-Instruct.Q4_1", persist=False)
    assert not isinstance(failed.value, OutOfMemory)
    assert "error loading model" in str(failed.value)
    assert [asked[0] for asked in card.asked] == [31]


def test_the_context_floor_is_where_stepping_down_stops(isolated, monkeypatch, smollm2):
    card = LlamaEdge(monkeypatch, max_layers=-1,
                     line=b"ggml_aligned_malloc: insufficient memory (attempted to allocate 900 MB)\n")
    with gpu_manager(isolated, FakeNvml([]), n_ctx=4096) as manager:
        with pytest.raises(OutOfMemory, match="nothing smaller is left to try"):
            manager.switch_model("SmolLM2-135M-Instruct.Q4_1", persist=False)
    assert [asked[:2] for asked in card.asked] == [(0, 4096), (0, 2048), (0, MIN_STEP_DOWN_CTX)]


def test_every_load_plans_against_free_vram_read_just_before_it(isolated, simulated_card):
    """The probe's cache (ttl 1 s) serves the UI; a load reads the card again. Here the main
    LLM frees 20 GiB between a status read and the load: the load goes fully on the GPU."""
    nvml = FakeNvml([{"name": "RTX 4090", "total_mb": 24564, "used_mb": 24000}])
    simulated_card.max_layers = 99
    with gpu_manager(isolated, nvml) as manager:
        assert manager.check_compatibility("SmolLM2-135M-Instruct.Q4_1").verdict == "cpu"
        nvml.gpus[0]["used_mb"] = 2000  # the primary crashed: its VRAM is back
        manager.switch_model("SmolLM2-135M-Instruct.Q4_1", persist=False)
    assert simulated_card.asked[-1][0] == 31


def test_two_chats_that_both_need_a_load_cause_one_load(isolated, simulated_card):
    nvml = FakeNvml([{"name": "RTX 4090", "total_mb": 24564, "used_mb": 2000}])
    simulated_card.max_layers = 99
    with gpu_manager(isolated, nvml) as manager:
        barrier = threading.Barrier(2)
        results = []

        def chat() -> None:
            barrier.wait()
            results.append(manager.chat([{"role": "user", "content": "Hi"}], max_tokens=2))

        threads = [threading.Thread(target=chat) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert len(results) == 2 and all(r.source == "local" for r in results)
    assert len(simulated_card.asked) == 1


def test_when_vram_comes_back_the_optimizer_reloads_on_the_gpu(isolated, simulated_card):
    """The main LLM held the card: the fallback loaded on the CPU. It exits; the optimizer
    (by hand here, or the auto-optimizer on the verdict change) reloads with every layer."""
    simulated_card.max_layers = 99
    nvml = FakeNvml([{"name": "RTX 4090", "total_mb": 24564, "used_mb": 24564 - 300}])
    with gpu_manager(isolated, nvml) as manager:
        manager.switch_model("SmolLM2-135M-Instruct.Q4_1", persist=False)
        nvml.gpus[0]["used_mb"] = 1500  # the primary crashed: its VRAM is back
        result = manager.optimize()
        again = manager.optimize()
    assert [asked[0] for asked in simulated_card.asked] == [0, 31]
    assert result.switched and "reloaded with 31 GPU layers" in result.reason
    assert not again.switched  # nothing better left to do
