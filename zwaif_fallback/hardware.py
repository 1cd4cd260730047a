"""What this machine has: GPUs and their VRAM, RAM, CPU.

GPUs are probed (gpu_probes) in order of cost and precision: NVML (nvidia-ml-py,
~microseconds a query, and the only one that says which processes hold the VRAM),
llama.cpp's own device list (ggml_devices: AMD, Intel and Apple GPUs through a Vulkan,
ROCm, SYCL or Metal build, a few milliseconds), GPUtil (runs nvidia-smi, ~25 ms a call),
torch (CUDA, or MPS on macOS; importing torch costs seconds, so it is the last resort).
``vram_source`` says which one answered. llama.cpp comes after NVML because asking it
about a CUDA card would make this process hold a CUDA context. When NVML is installed
but finds no NVIDIA driver, nothing else is asked about CUDA: without a driver neither
GPUtil nor torch can see a card; llama.cpp is still asked, as that is the AMD and
Intel case.
"""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
from pydantic import Field

from ._model import Model
from .ggml_devices import GgmlLibrary, list_devices
from .gpu_probes import (
    MIB,
    GPUInfo,
    NoAnswer,
    Nvml,
    VramSource,
    ggml_gpus,
    gputil_gpus,
    torch_gpus,
)

__all__ = ["HardwareProbe", "SystemStatus"]

log = logging.getLogger(__name__)


class SystemStatus(Model):
    """A snapshot of the machine."""

    gpus: list[GPUInfo] = Field(default_factory=list)
    vram_source: VramSource = Field("none", description="the probe that answered: nvml, "
                                    "ggml:<device names>, gputil, torch, mps or none")
    ram_total_mb: int
    ram_available_mb: int
    cpu_count: int
    cpu_percent: float
    platform: str
    notes: list[str] = Field(default_factory=list, description="why earlier probes did not answer")
    llama_gpus: list[str] | None = Field(
        None, description="the GPUs llama.cpp can offload to (CUDA0, Vulkan0, MTL0); empty: this "
                          "llama-cpp-python has no GPU offload here; None: it could not be read")

    @property
    def vram_free_mb(self) -> int:
        return sum(g.vram_free_mb for g in self.gpus)

    @property
    def vram_total_mb(self) -> int:
        return sum(g.vram_total_mb for g in self.gpus)

    @property
    def gpu_build_command(self) -> str:
        """How to rebuild llama-cpp-python for the GPU found: CUDA where an NVIDIA probe
        answered, Metal on a Mac, Vulkan (any brand) elsewhere."""
        flag = {"nvml": "CUDA", "gputil": "CUDA", "torch": "CUDA", "mps": "METAL"}.get(
            self.vram_source, "VULKAN")
        pip = "pip install --force-reinstall --no-cache-dir llama-cpp-python"
        if self.platform.startswith("Windows"):  # cmd.exe's form; PowerShell's is $env:CMAKE_ARGS="..."
            return f"set CMAKE_ARGS=-DGGML_{flag}=on, then {pip}"
        return f'CMAKE_ARGS="-DGGML_{flag}=on" {pip}'


class HardwareProbe:
    """Reads GPUs, RAM and CPU, and caches the answer for ``ttl_s`` seconds.

    Safe to share between threads. ``nvml`` replaces the pynvml module and ``ggml``
    llama.cpp's library (the process edges), ``clock`` the monotonic clock.
    """

    def __init__(self, *, ttl_s: float = 1.0, nvml: Any = None, ggml: GgmlLibrary | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._nvml = Nvml(nvml)
        self._ggml = ggml
        self._lock = threading.Lock()
        self._cached: SystemStatus | None = None
        self._cached_at = 0.0
        self._cpu_primed = False
        self._llama_gpu_names: list[str] | None = None
        self._llama_read = False
        self._created = time.monotonic()
        # the CPU's busy share is measured between two readings of its times, kept here:
        # psutil.cpu_percent(interval=None) keeps its own per thread (psutil >= 6), so the
        # first read in each thread (a sampler's, a web worker's) was a meaningless 0.0
        self._cpu_times = psutil.cpu_times()
        self._cpu_busy = 0.0

    def status(self, *, refresh: bool = False) -> SystemStatus:
        """The machine now, or as seen less than ``ttl_s`` ago."""
        with self._lock:
            now = self._clock()
            if refresh or self._cached is None or now - self._cached_at >= self._ttl_s:
                self._cached = self._read()
                self._cached_at = now
            return self._cached

    def process_vram_mb(self, pid: int) -> float | None:
        """VRAM held by one process (NVML per-process accounting), or None where unknown."""
        try:
            return self._nvml.process_used_mb(pid)
        except NoAnswer:
            return None
        except Exception as exc:  # a driver error must not break a benchmark
            log.debug("per-process VRAM unavailable: %s", exc)
            return None

    def close(self) -> None:
        with self._lock:
            self._nvml.close()

    def _read(self) -> SystemStatus:
        source, gpus, notes = self._read_gpus()
        memory = psutil.virtual_memory()
        return SystemStatus(
            gpus=gpus,
            vram_source=source,
            ram_total_mb=memory.total // MIB,
            ram_available_mb=memory.available // MIB,
            cpu_count=psutil.cpu_count(logical=True) or 1,
            cpu_percent=self._cpu_percent(),
            platform=f"{platform.system()} {platform.release()} ({platform.machine()})",
            notes=notes,
            llama_gpus=self._llama_gpus(),
        )

    def _llama_gpus(self) -> list[str] | None:
        """The GPU devices of the installed llama.cpp build, read once (a build does not
        change while the process runs; CUDA devices are listed without asking their memory)."""
        if not self._llama_read:
            found = list_devices(library=self._ggml, memory=False)
            self._llama_gpu_names = (None if found.reason is not None else
                                     [d.name for d in found.devices if d.type in ("gpu", "igpu")])
            self._llama_read = True
        return None if self._llama_gpu_names is None else list(self._llama_gpu_names)

    def _read_gpus(self) -> tuple[VramSource, list[GPUInfo], list[str]]:
        notes: list[str] = []
        cuda_possible = True

        def ask(name: str, probe: Callable[[], tuple[VramSource, list[GPUInfo]]]
                ) -> tuple[VramSource, list[GPUInfo]] | None:
            nonlocal cuda_possible
            try:
                return probe()
            except NoAnswer as exc:
                notes.append(str(exc))
                cuda_possible = cuda_possible and not exc.final
            except Exception as exc:  # a driver error mid-query must not break the caller
                log.warning("%s probe failed: %s", name, exc)
                notes.append(f"{name} failed ({exc})")
            return None

        found = (ask("nvml", lambda: ("nvml", self._nvml.gpus()))
                 or ask("ggml", lambda: ggml_gpus(self._ggml)))
        if found is None and cuda_possible:
            found = ask("gputil", lambda: ("gputil", gputil_gpus()))
        if found is None and (cuda_possible or platform.system() == "Darwin"):
            found = ask("torch", lambda: torch_gpus(allow_cuda=cuda_possible))
        source, gpus = found or ("none", [])
        return source, gpus, notes

    def _cpu_percent(self) -> float:
        # psutil measures between two calls: the probe's construction opened the window. Only a
        # read within 100 ms of it waits for the rest (a one-shot `status`); a host's probe is
        # older than that by the time a load decision reads the machine.
        if not self._cpu_primed:
            self._cpu_primed = True
            time.sleep(max(0.0, 0.1 - (time.monotonic() - self._created)))
        now = psutil.cpu_times()
        busy = _busy_percent(self._cpu_times, now)
        if busy is not None:  # no tick since the last reading: the last figure stands
            self._cpu_times, self._cpu_busy = now, busy
        return self._cpu_busy


def _busy_percent(before: Any, after: Any) -> float | None:
    """The CPU's busy share between two ``psutil.cpu_times()`` readings, as psutil computes
    it (guest time is inside user time already; idle and iowait are not busy); None when no
    time passed between them."""
    def total(t: Any) -> float:
        return float(sum(t)) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)

    def busy(t: Any) -> float:
        return total(t) - t.idle - getattr(t, "iowait", 0.0)

    elapsed = total(after) - total(before)
    if elapsed <= 0:
        return None
    return min(max(100.0 * (busy(after) - busy(before)) / elapsed, 0.0), 100.0)
