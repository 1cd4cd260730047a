"""What this machine has: GPUs and their VRAM, RAM, CPU.

GPUs are probed in order of cost and precision: NVML (nvidia-ml-py, ~microseconds
a query), GPUtil (runs nvidia-smi, ~25 ms a call), torch (CUDA, or MPS on macOS;
importing torch costs seconds, so it is the last resort). ``vram_source`` says
which one answered. When NVML is installed but finds no NVIDIA driver, nothing
else is asked about CUDA: without a driver neither GPUtil nor torch can see a card.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import psutil
from pydantic import Field

from ._model import Model

__all__ = ["GPUInfo", "HardwareProbe", "SystemStatus"]

log = logging.getLogger(__name__)

MIB = 1024 * 1024
VramSource = Literal["nvml", "gputil", "torch", "mps", "none"]


class GPUInfo(Model):
    """One GPU as the probe saw it. Sizes in MiB."""

    index: int
    name: str
    vram_total_mb: int
    vram_used_mb: int
    vram_free_mb: int
    utilization_pct: float | None = None
    temperature_c: float | None = None


class SystemStatus(Model):
    """A snapshot of the machine."""

    gpus: list[GPUInfo] = Field(default_factory=list)
    vram_source: VramSource = "none"
    ram_total_mb: int
    ram_available_mb: int
    cpu_count: int
    cpu_percent: float
    platform: str
    notes: list[str] = Field(default_factory=list, description="why earlier probes did not answer")

    @property
    def vram_free_mb(self) -> int:
        return sum(g.vram_free_mb for g in self.gpus)

    @property
    def vram_total_mb(self) -> int:
        return sum(g.vram_total_mb for g in self.gpus)


class _NoAnswer(Exception):
    """A probe cannot answer; ``final`` means later CUDA probes cannot either."""

    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


class _Nvml:
    """NVML through nvidia-ml-py, initialised once. ``module`` is the process edge tests replace."""

    def __init__(self, module: Any = None) -> None:
        self._module = module
        self._ready = False

    def gpus(self) -> list[GPUInfo]:
        nvml = self._load()
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            name = nvml.nvmlDeviceGetName(handle)
            gpus.append(GPUInfo(
                index=index,
                name=name.decode() if isinstance(name, bytes) else str(name),
                vram_total_mb=memory.total // MIB,
                vram_used_mb=memory.used // MIB,
                vram_free_mb=memory.free // MIB,
                utilization_pct=_optional(nvml.nvmlDeviceGetUtilizationRates, handle, "gpu"),
                temperature_c=_optional(nvml.nvmlDeviceGetTemperature, handle, 0),
            ))
        return gpus

    def _load(self) -> Any:
        if self._module is None:
            try:
                import pynvml
            except ImportError:
                raise _NoAnswer("nvidia-ml-py is not installed") from None
            self._module = pynvml
        if not self._ready:
            try:
                self._module.nvmlInit()
            except self._module.NVMLError as exc:
                # Library missing, driver not loaded: no NVIDIA GPU can be used here.
                raise _NoAnswer(f"NVML found no NVIDIA driver ({exc})", final=True) from None
            self._ready = True
        return self._module

    def process_used_mb(self, pid: int) -> float | None:
        """VRAM that process ``pid`` holds on all GPUs; None when the driver does not say."""
        nvml = self._load()
        total, known = 0.0, False
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            try:
                processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            except Exception:  # not supported on this card or driver
                continue
            for process in processes:
                used = getattr(process, "usedGpuMemory", None)
                if process.pid == pid and used is not None:
                    total, known = total + used / MIB, True
        return total if known else None

    def close(self) -> None:
        if self._ready:
            self._ready = False
            try:
                self._module.nvmlShutdown()
            except Exception:  # shutdown failures leave nothing to clean up
                pass


def _optional(query: Callable[..., Any], handle: Any, arg: object) -> float | None:
    """Utilisation and temperature are not supported on every card: None then.

    ``arg`` is the attribute to read from the answer (a string) or the argument to pass.
    """
    try:
        if isinstance(arg, str):
            return float(getattr(query(handle), arg))
        return float(query(handle, arg))
    except Exception:
        return None


def _gputil_gpus() -> list[GPUInfo]:
    if importlib.util.find_spec("GPUtil") is None:
        raise _NoAnswer("GPUtil is not installed")
    try:
        import GPUtil

        found = GPUtil.getGPUs()
    except Exception as exc:  # GPUtil shells out to nvidia-smi; anything can go wrong there
        raise _NoAnswer(f"GPUtil failed ({exc})") from None
    if not found:
        raise _NoAnswer("GPUtil found no GPU (nvidia-smi missing or no card)", final=True)
    return [
        GPUInfo(
            index=int(g.id),
            name=str(g.name),
            vram_total_mb=int(g.memoryTotal),
            vram_used_mb=int(g.memoryUsed),
            vram_free_mb=int(g.memoryFree),
            utilization_pct=float(g.load) * 100.0,
            temperature_c=float(g.temperature) if g.temperature is not None else None,
        )
        for g in found
    ]


def _torch_gpus(*, allow_cuda: bool) -> tuple[VramSource, list[GPUInfo]]:
    if importlib.util.find_spec("torch") is None:
        raise _NoAnswer("torch is not installed")
    import torch

    if allow_cuda and torch.cuda.is_available():
        gpus = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(GPUInfo(
                index=index,
                name=torch.cuda.get_device_name(index),
                vram_total_mb=total // MIB,
                vram_used_mb=(total - free) // MIB,
                vram_free_mb=free // MIB,
            ))
        return "torch", gpus
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        # Apple GPUs share system memory; Metal's working-set limit is the usable part.
        total = int(torch.mps.recommended_max_memory()) // MIB
        used = int(torch.mps.driver_allocated_memory()) // MIB
        return "mps", [GPUInfo(index=0, name="Apple GPU (MPS)", vram_total_mb=total,
                               vram_used_mb=used, vram_free_mb=max(total - used, 0))]
    raise _NoAnswer("torch sees no CUDA or MPS device")


class HardwareProbe:
    """Reads GPUs, RAM and CPU, and caches the answer for ``ttl_s`` seconds.

    Safe to share between threads. ``nvml`` replaces the pynvml module (the
    process edge), ``clock`` the monotonic clock.
    """

    def __init__(self, *, ttl_s: float = 1.0, nvml: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._nvml = _Nvml(nvml)
        self._lock = threading.Lock()
        self._cached: SystemStatus | None = None
        self._cached_at = 0.0
        self._cpu_primed = False

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
        except _NoAnswer:
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
        )

    def _read_gpus(self) -> tuple[VramSource, list[GPUInfo], list[str]]:
        notes: list[str] = []
        cuda_possible = True
        probes: list[tuple[VramSource, Callable[[], list[GPUInfo]]]] = [
            ("nvml", self._nvml.gpus),
            ("gputil", _gputil_gpus),
        ]
        for source, probe in probes:
            try:
                return source, probe(), notes
            except _NoAnswer as exc:
                notes.append(str(exc))
                if exc.final:
                    cuda_possible = False
                    break
            except Exception as exc:  # a driver error mid-query must not break the caller
                log.warning("%s probe failed: %s", source, exc)
                notes.append(f"{source} failed ({exc})")
        if cuda_possible or platform.system() == "Darwin":
            try:
                torch_source, gpus = _torch_gpus(allow_cuda=cuda_possible)
                return torch_source, gpus, notes
            except _NoAnswer as exc:
                notes.append(str(exc))
            except Exception as exc:
                log.warning("torch probe failed: %s", exc)
                notes.append(f"torch failed ({exc})")
        return "none", [], notes

    def _cpu_percent(self) -> float:
        # psutil measures between two calls; the first call of a process has nothing to compare.
        if not self._cpu_primed:
            self._cpu_primed = True
            return float(psutil.cpu_percent(interval=0.1))
        return float(psutil.cpu_percent(interval=None))
