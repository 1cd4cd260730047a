"""Plans on a GPU shared with the main LLM: which llama.cpp build the plan assumes, llama.cpp's
own dry run beside the estimate, and health saying who crowds the card.

GPUs are simulated at the process edges: NVML (fake_nvml) and llama.cpp's device list
(fake_ggml). The dry run's child process is the edge for a GPU build's accounting.
"""

from __future__ import annotations

import os

import pytest
from fake_nvml.fake_ggml import CPU, CUDA0, Device, FakeGgml, cuda_build
from fake_nvml.pynvml import FakeNvml

from zwaif_fallback import FallbackManager, FallbackSettings, HardwareProbe
from zwaif_fallback import dry_run as dry_run_module
from zwaif_fallback.dry_run_log import DeviceMemory, DryRun
from zwaif_fallback.fit import HEADROOM_MB

SMOL = "SmolLM2-135M-Instruct.Q4_1"
RTX_4090 = [{"name": "RTX 4090", "total_mb": 24564, "used_mb": 2000}]


def manager(isolated, nvml: FakeNvml, ggml: FakeGgml | None = None, **settings) -> FallbackManager:
    base = dict(models_dir=isolated, scan_system_stores=False, keep_alive=0, vram_monitoring=False,
                preferred_model=SMOL)
    return FallbackManager(FallbackSettings(**(base | settings)),
                           probe=HardwareProbe(nvml=nvml, ggml=ggml), background=False)


def test_a_cpu_only_llama_cpp_plans_the_cpu_even_beside_a_gpu(isolated, smollm2):
    """The real library here is a CPU build: a GPU plan would be a promise it cannot keep."""
    with manager(isolated, FakeNvml(RTX_4090)) as m:
        fit = m.check_compatibility(SMOL)
        what_if = m.check_compatibility(SMOL, free_vram_mb=8000)
    assert (fit.verdict, fit.gpu_layers, fit.runtime) == ("cpu", 0, "llama.cpp, CPU-only build")
    assert "cannot offload to a GPU" in fit.reason  # and the command that rebuilds it for the card:
    assert 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall' in fit.reason  # Linux's form
    assert what_if.verdict == "gpu" and "what-if" in what_if.runtime  # what-ifs answer anywhere


def test_a_cuda_build_plans_the_gpu_and_says_so(isolated, smollm2):
    with manager(isolated, FakeNvml(RTX_4090), cuda_build()) as m:
        fit = m.check_compatibility(SMOL)
    assert (fit.verdict, fit.runtime) == ("gpu", "llama.cpp on CUDA0")


def test_a_vulkan_card_is_planned_with_its_overheads_marked_as_estimates(isolated, smollm2):
    vulkan = Device("Vulkan0", "AMD Radeon RX 7800 XT (RADV NAVI32)", 1, 6 * 2**30, 8 * 2**30)
    with manager(isolated, FakeNvml("nodriver"), FakeGgml([CPU, vulkan])) as m:
        status = m.system_status()
        fit = m.check_compatibility(SMOL)
    assert status.vram_source == "ggml:Vulkan0" and status.llama_gpus == ["Vulkan0"]
    assert fit.verdict == "gpu" and fit.available_vram_mb == 6144
    assert fit.runtime == ("llama.cpp on Vulkan0 (runtime overheads measured on CUDA; "
                           "estimated for this backend)")


def test_check_puts_llama_cpps_dry_run_beside_the_estimate(isolated, smollm2):
    """A real no_alloc dry run in a child: llama.cpp's buffers against ours, like with like."""
    with manager(isolated, FakeNvml([])) as m:
        fit = m.check_compatibility(SMOL, n_ctx=2048, dry_run=True)
        plain = m.check_compatibility(SMOL, n_ctx=2048)
    dry = fit.dry_run
    assert dry is not None and plain.dry_run is None
    assert dry.vram_mb == 0 and dry.gpu_layers == 0
    assert dry.ram_mb > 100 and abs(dry.ram_diff_mb) < 0.05 * dry.ram_mb
    assert dry.ram_diff_mb == pytest.approx(dry.estimate_ram_mb - dry.ram_mb, abs=0.11)
    assert dry.llama_cpp_version and dry.seconds > 0


def test_check_says_why_there_is_no_dry_run(isolated, tiny_hf):
    with manager(isolated, FakeNvml([]), hf_models=[str(tiny_hf)]) as m:
        name = next(x.name for x in m.discover_models() if x.format != "gguf")
        fit = m.check_compatibility(name, dry_run=True)
    assert fit.dry_run is None and "GGUF" in (fit.dry_run_note or "")


def test_a_what_if_gpu_plan_on_a_build_with_no_gpu_gets_no_dry_run_to_compare(isolated, smollm2):
    # This machine's llama.cpp has no GPU device: a dry run would put every layer in RAM and
    # report 0 MiB of VRAM beside an estimate for a GPU, a difference that means nothing.
    with manager(isolated, FakeNvml([])) as m:
        assert m.system_status().llama_gpus == []
        fit = m.check_compatibility(SMOL, free_vram_mb=8192, dry_run=True)
    assert fit.gpu_layers > 0 and fit.dry_run is None
    assert fit.dry_run_note == ("none for a GPU plan: the installed llama.cpp has no GPU device "
                                "to simulate it on")


def gpu_dry_run(vram_mb: float) -> DryRun:
    """What a CUDA build's dry-run child reports for a full offload of SmolLM2."""
    return DryRun(devices={"CUDA0": DeviceMemory(weights_mb=vram_mb)}, vram_mb=vram_mb, ram_mb=60.0,
                  gpu_layers=31, n_layers=30, n_ctx=4096, model_mb=92.0, weights_by="layer",
                  seconds=0.6, llama_cpp_version="0.3.36")


def test_a_load_decision_uses_llama_cpps_dry_run_when_it_has_one(isolated, smollm2, monkeypatch):
    """llama.cpp sizes the buffers at twice our estimate: once its dry run is in, plans believe it."""
    monkeypatch.setattr(dry_run_module, "_run_child",
                        lambda path, config, cpu_only, timeout_s: gpu_dry_run(2 * buffers))
    monkeypatch.setattr(dry_run_module, "_cache", {})  # this process's dry runs: this test's only
    with manager(isolated, FakeNvml(RTX_4090), cuda_build()) as m:
        ours = m.check_compatibility(SMOL, gpu_layers=-1)
        buffers = ours.vram_mb - ours.vram_breakdown.overhead_mb
        card = ours.vram_mb + HEADROOM_MB + buffers / 2  # room for ours, not for twice the buffers
        before = m.check_compatibility(SMOL, free_vram_mb=card)
        m.check_compatibility(SMOL, gpu_layers=-1, dry_run=True)  # llama.cpp's answer, kept
        after = m.check_compatibility(SMOL, free_vram_mb=card)
    assert before.verdict == "gpu" and "dry run" not in before.reason
    assert after.verdict == "partial" and 0 < after.gpu_layers < 31
    assert "GPU buffers as llama.cpp's dry run sized them" in after.reason


def health_of(isolated, gpus, **settings):
    with manager(isolated, FakeNvml(gpus), cuda_build(), **settings) as m:
        return m.health()


def test_health_says_the_gpu_is_contended_and_by_whom(isolated, smollm2):
    me = os.getpid()
    crowded = [{"name": "RTX 3060", "total_mb": 12288, "used_mb": 12288 - 300,
                "processes": [{"pid": 1, "used_mb": 9000}, {"pid": me, "used_mb": 2500}]}]
    report = health_of(isolated, crowded)
    vram = report.factors["vram"]
    assert vram.score == 10 and "the GPU is contended: 300 MiB free" in vram.detail
    assert f"this process (pid {me}), 2.4 GiB" in vram.detail
    assert vram.detail.index("(pid 1)") < vram.detail.index("this process")  # biggest first
    assert any("The GPU is nearly full" in line for line in report.recommendations)
    roomy = health_of(isolated, [{"name": "RTX 3060", "total_mb": 12288, "used_mb": 2000}])
    assert "contended" not in roomy.factors["vram"].detail


def test_the_margin_is_a_setting(isolated, smollm2):
    gpus = [{"name": "RTX 3060", "total_mb": 12288, "used_mb": 12288 - 1200}]
    assert "contended" in health_of(isolated, gpus, vram_margin_mb=1536).factors["vram"].detail
    assert "contended" not in health_of(isolated, gpus, vram_margin_mb=512).factors["vram"].detail
    with manager(isolated, FakeNvml(gpus), cuda_build(), vram_margin_mb=0) as m:
        assert m.check_compatibility(SMOL).verdict == "gpu"  # ~1 GiB needed, 1.2 GiB free
    with manager(isolated, FakeNvml(gpus), cuda_build(), vram_margin_mb=1024) as m:
        assert m.check_compatibility(SMOL).verdict != "gpu"
    with pytest.raises(Exception, match="vram_margin_mb"):
        FallbackSettings(vram_margin_mb=-1)


def test_cuda_devices_are_listed_without_asking_their_memory(isolated, smollm2):
    ggml = FakeGgml([CPU, CUDA0])
    with manager(isolated, FakeNvml(RTX_4090), ggml) as m:
        assert m.system_status().llama_gpus == ["CUDA0"]
    assert "memory CUDA0" not in ggml.asked  # asking would leave a CUDA context in this process
