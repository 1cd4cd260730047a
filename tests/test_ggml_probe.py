"""llama.cpp's own device list as a VRAM probe: the real libggml here, simulated GPUs through a fake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_nvml.fake_ggml import CPU, CUDA0, Device, FakeGgml
from fake_nvml.pynvml import FakeNvml

from zwaif_fallback.ggml_devices import list_devices
from zwaif_fallback.hardware import HardwareProbe

GIB = 2**30


VULKAN0 = Device("Vulkan0", "AMD Radeon RX 7800 XT (RADV NAVI32)", 1, 6 * GIB, 8 * GIB)
VULKAN1 = Device("Vulkan1", "AMD Radeon RX 6600 (RADV NAVI23)", 1, 7 * GIB, 8 * GIB)
IGPU = Device("Vulkan1", "AMD Radeon 780M (RADV PHOENIX)", 2, 3 * GIB, 4 * GIB)


def no_driver_probe(ggml: FakeGgml | None = None) -> HardwareProbe:
    """A probe whose NVML finds no NVIDIA driver: the AMD and Intel case."""
    return HardwareProbe(nvml=FakeNvml("nodriver"), ggml=ggml)


def test_the_real_library_lists_the_cpu_with_its_memory():
    found = list_devices()
    assert found.reason is None
    cpus = [d for d in found.devices if d.type == "cpu"]
    assert cpus and cpus[0].total_bytes and cpus[0].total_bytes > 0


def test_without_a_gpu_the_notes_say_llama_cpp_found_none():
    status = no_driver_probe().status()
    assert (status.vram_source, status.gpus) == ("none", [])
    assert "no NVIDIA driver" in status.notes[0]
    assert any(n.startswith("llama.cpp found no GPU device (it sees CPU") for n in status.notes)


def test_a_vulkan_gpu_answers_when_nvml_finds_no_driver():
    status = no_driver_probe(FakeGgml([CPU, VULKAN0])).status()
    assert status.vram_source == "ggml:Vulkan0"
    (gpu,) = status.gpus
    assert (gpu.index, gpu.name) == (0, "AMD Radeon RX 7800 XT (RADV NAVI32)")
    assert (gpu.vram_total_mb, gpu.vram_free_mb, gpu.vram_used_mb) == (8192, 6144, 2048)
    assert "no NVIDIA driver" in status.notes[0]  # why NVML did not answer stays said


def test_several_gpus_are_all_named_in_the_source():
    status = no_driver_probe(FakeGgml([CPU, VULKAN0, VULKAN1])).status()
    assert status.vram_source == "ggml:Vulkan0,Vulkan1"
    assert [g.index for g in status.gpus] == [0, 1] and status.vram_free_mb == 6144 + 7168


def test_an_integrated_gpu_counts_only_without_a_dedicated_one():
    assert no_driver_probe(FakeGgml([CPU, VULKAN0, IGPU])).status().vram_source == "ggml:Vulkan0"
    assert no_driver_probe(FakeGgml([CPU, IGPU])).status().vram_source == "ggml:Vulkan1"


def test_nvml_answering_wins_and_llama_cpp_is_not_asked():
    ggml = FakeGgml([CPU, VULKAN0])
    nvml = FakeNvml([{"name": "NVIDIA GeForce RTX 3060", "total_mb": 12288, "used_mb": 400}])
    status = HardwareProbe(nvml=nvml, ggml=ggml).status()
    assert status.vram_source == "nvml" and status.gpus[0].name == "NVIDIA GeForce RTX 3060"
    assert not [a for a in ggml.asked if a.startswith("memory")]  # only the build's device list
    assert status.llama_gpus == ["Vulkan0"]


def test_cuda_devices_are_not_asked_their_memory():
    ggml = FakeGgml([CPU, CUDA0])
    cuda = list_devices(library=ggml).devices[1]
    assert (cuda.name, cuda.type, cuda.total_bytes) == ("CUDA0", "gpu", None)
    assert "memory CUDA0" not in ggml.asked
    assert list_devices(library=ggml, ask_cuda=True).devices[1].total_bytes == 24 * GIB


def test_an_unasked_cuda_gpu_points_to_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py is not installed
    status = HardwareProbe(ggml=FakeGgml([CPU, CUDA0])).status()
    assert not status.vram_source.startswith("ggml")
    assert status.notes[0].startswith("nvidia-ml-py is not installed (for an NVIDIA card: pip install")
    assert "CUDA0" in status.notes[1] and "pip install nvidia-ml-py" in status.notes[1]


def test_a_library_that_fails_to_load_leaves_a_note(tmp_path, monkeypatch):
    for name in ("libggml.so", "libggml.dylib", "ggml.dll"):
        (tmp_path / name).write_bytes(b"not a shared library")
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))
    status = no_driver_probe().status()
    assert (status.vram_source, status.gpus) == ("none", [])
    assert any("could not load llama.cpp's" in n and str(tmp_path) in n for n in status.notes)


def test_a_folder_without_the_library_is_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))
    found = list_devices()
    assert found.devices == () and found.reason
    assert "libggml is not in" in found.reason


@pytest.mark.skipif(sys.platform != "linux", reason="borrows the C library from /proc/self/maps")
def test_a_library_without_the_device_calls_names_the_missing_one(tmp_path, monkeypatch):
    libc = next(line.split()[-1] for line in open("/proc/self/maps") if "/libc.so" in line)
    (tmp_path / "libggml.so").symlink_to(libc)
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(tmp_path))
    found = list_devices()
    assert found.devices == () and found.reason
    assert "has no ggml_backend_dev_count: pip install -U llama-cpp-python" in found.reason


def test_a_call_that_fails_is_a_reason_not_an_exception():
    class Broken(FakeGgml):
        def memory(self, device: Device) -> tuple[int, int]:
            raise OSError("device lost")

    found = list_devices(library=Broken([VULKAN0]))
    assert found.devices == () and found.reason == "llama.cpp's device list failed (device lost)"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_llama_cpp_imported_after_the_probe_uses_the_same_library():
    code = ("from zwaif_fallback.ggml_devices import list_devices; list_devices(); import llama_cpp; "
            "print('\\n'.join(sorted({line.split()[-1] for line in open('/proc/self/maps') "
            "if 'libggml-base' in line})))")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    assert child.returncode == 0, child.stderr
    (mapped,) = child.stdout.split()
    import llama_cpp

    assert Path(mapped).parent == (Path(llama_cpp.__file__).parent / "lib").resolve()
