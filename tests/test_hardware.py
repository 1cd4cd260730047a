from __future__ import annotations

import json
import os
import threading

import psutil
from conftest import FakeClock, run_cli
from fake_nvml.pynvml import FakeNvml

from zwaif_fallback.hardware import HardwareProbe

TWO_GPUS = [
    {"name": "NVIDIA GeForce RTX 4090", "total_mb": 24564, "used_mb": 1500, "utilization": 37,
     "temperature": 61},
    {"name": "NVIDIA GeForce RTX 3060", "total_mb": 12288, "used_mb": 300},
]
NO_SUCH_PID = 2**31 - 1  # above any pid_max


def gpu_held_by(processes: list[dict], graphics: list[dict] | None = None) -> list[dict]:
    gpu = {"name": "NVIDIA GeForce RTX 4090", "total_mb": 24564, "used_mb": 4000,
           "processes": processes}
    return [gpu if graphics is None else dict(gpu, graphics_processes=graphics)]


def test_nvml_reports_every_gpu_with_its_vram():
    status = HardwareProbe(nvml=FakeNvml(TWO_GPUS)).status()
    assert status.vram_source == "nvml"
    first, second = status.gpus
    assert (first.name, first.vram_total_mb, first.vram_used_mb, first.vram_free_mb) == (
        "NVIDIA GeForce RTX 4090", 24564, 1500, 23064)
    assert (first.utilization_pct, first.temperature_c) == (37.0, 61.0)
    assert (second.index, second.vram_free_mb) == (1, 11988)
    assert second.utilization_pct is None and second.temperature_c is None  # not supported
    assert status.vram_free_mb == 23064 + 11988


def test_nvml_says_which_processes_hold_the_vram():
    me, parent = os.getpid(), os.getppid()
    nvml = FakeNvml(gpu_held_by([{"pid": me, "used_mb": 1500}], [{"pid": parent, "used_mb": 200}]))
    (gpu,) = HardwareProbe(nvml=nvml).status().gpus
    assert [(p.pid, p.name, p.used_mb) for p in gpu.processes] == [
        (me, psutil.Process(me).name(), 1500), (parent, psutil.Process(parent).name(), 200)]


def test_a_process_that_is_gone_or_unmeasured_is_listed_with_unknowns():
    (gpu,) = HardwareProbe(nvml=FakeNvml(gpu_held_by([{"pid": NO_SUCH_PID}]))).status().gpus
    assert [(p.pid, p.name, p.used_mb) for p in gpu.processes] == [(NO_SUCH_PID, "?", None)]


def test_a_process_that_computes_and_draws_is_listed_once():
    me = {"pid": os.getpid(), "used_mb": 900}
    (gpu,) = HardwareProbe(nvml=FakeNvml(gpu_held_by([me], [me]))).status().gpus
    assert [(p.pid, p.used_mb) for p in gpu.processes] == [(os.getpid(), 900)]


def test_a_gpu_without_process_accounting_has_no_process_list():
    status = HardwareProbe(nvml=FakeNvml(TWO_GPUS)).status()
    assert [g.processes for g in status.gpus] == [[], []]


def test_ram_and_cpu_come_from_psutil():
    import psutil

    status = HardwareProbe(nvml=FakeNvml([])).status()
    assert status.ram_total_mb == psutil.virtual_memory().total // 2**20
    assert 0 < status.ram_available_mb <= status.ram_total_mb
    assert status.cpu_count == psutil.cpu_count()
    assert 0.0 <= status.cpu_percent <= 100.0


def test_no_nvidia_driver_means_no_gpu_and_no_torch():
    result = run_cli("status", "--json", fake_gpus="nodriver")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["gpus"] == [] and data["vram_source"] == "none"
    assert "no NVIDIA driver" in data["notes"][0]
    probe = ("import sys, zwaif_fallback as z; z.HardwareProbe().status(); "
             "print('torch' in sys.modules)")
    import os
    import subprocess
    import sys

    from conftest import FAKE_NVML_DIR, ROOT
    env = dict(os.environ, ZWAIF_FAKE_NVML="nodriver",
               PYTHONPATH=os.pathsep.join([str(FAKE_NVML_DIR), str(ROOT)]))
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_answers_are_cached_for_the_ttl():
    nvml, clock = FakeNvml(TWO_GPUS), FakeClock()
    probe = HardwareProbe(nvml=nvml, ttl_s=2.0, clock=clock)
    first = probe.status()
    clock.now += 1.9
    assert probe.status() is first and nvml.queries == 1
    nvml.gpus[0]["used_mb"] = 20000
    clock.now += 0.2
    assert probe.status().gpus[0].vram_used_mb == 20000 and nvml.queries == 2
    assert probe.status(refresh=True) is not first and nvml.queries == 3


def test_concurrent_readers_share_one_probe():
    nvml = FakeNvml(TWO_GPUS)
    probe = HardwareProbe(nvml=nvml, ttl_s=60.0)
    results = []
    threads = [threading.Thread(target=lambda: results.append(probe.status())) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert nvml.queries == 1 and all(r is results[0] for r in results)


def test_a_driver_error_mid_query_falls_through_instead_of_raising():
    class Flaky(FakeNvml):
        def nvmlDeviceGetCount(self) -> int:
            raise RuntimeError("GPU has fallen off the bus")

    status = HardwareProbe(nvml=Flaky(TWO_GPUS)).status()
    assert any("fallen off the bus" in note for note in status.notes)


def test_status_cli_prints_simulated_gpus():
    result = run_cli("status", fake_gpus=json.dumps(TWO_GPUS))
    assert result.returncode == 0, result.stderr
    assert "GPU probe : nvml" in result.stdout
    assert "RTX 4090, 22.5 GiB free of 24.0 GiB (37% busy, 61 C)" in result.stdout


def test_status_cli_names_who_holds_the_vram():
    me = os.getpid()
    result = run_cli("status", fake_gpus=json.dumps(gpu_held_by([{"pid": me, "used_mb": 1536}])))
    assert result.returncode == 0, result.stderr
    assert f"  held by : {psutil.Process(me).name()} (pid {me}, 1.5 GiB)" in result.stdout


def test_the_cpu_reading_is_current_in_a_thread_that_never_read_it():
    # psutil >= 6 keeps cpu_percent's window per thread: a sampler's or a web worker's
    # first reading was 0.0 on a busy machine
    probe = HardwareProbe(nvml=FakeNvml([]))
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    seen: list[float] = []
    try:
        reader = threading.Thread(target=lambda: seen.append(probe.status(refresh=True).cpu_percent))
        reader.start()
        reader.join(30)
    finally:
        stop.set()
        spinner.join(30)
    assert seen and 0.0 < seen[0] <= 100.0
