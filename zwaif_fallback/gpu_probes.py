"""The GPU probes: each way this machine's GPUs can be asked about, and what they answer.

One function or class per source, each raising ``NoAnswer`` with the reason (in words for
a person, with the install command where one would help) when it cannot answer: NVML
(nvidia-ml-py, the only one that says which processes hold the VRAM), llama.cpp's own
device list (ggml_devices), GPUtil (nvidia-smi) and torch (CUDA or MPS). The order they
are asked in, and the rest of the machine (RAM, CPU), is hardware.py's ``HardwareProbe``.
The heavy ones (pynvml, GPUtil, torch) are imported inside the probe that uses them.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

import psutil
from pydantic import Field

from ._model import Model
from .ggml_devices import GgmlDevice, GgmlLibrary, list_devices

__all__ = ["MIB", "GPUInfo", "GPUProcess", "NoAnswer", "Nvml", "VramSource", "ggml_gpus",
           "gputil_gpus", "torch_gpus"]

log = logging.getLogger("zwaif_fallback.hardware")  # its records keep the name they had

MIB = 1024 * 1024
#: the probe that answered: "nvml", "ggml:<llama.cpp's device names, comma-separated>"
#: (e.g. "ggml:Vulkan0"), "gputil", "torch", "mps", or "none"
VramSource = str


class GPUProcess(Model):
    """A process that holds memory on a GPU, as NVML reports it."""

    pid: int
    name: str = Field(description='from the OS; "?" when the process is gone or not ours to read')
    used_mb: int | None = Field(None, description="None where the driver does not say (WSL, some cards)")


class GPUInfo(Model):
    """One GPU as the probe saw it. Sizes in MiB."""

    index: int
    name: str
    vram_total_mb: int
    vram_used_mb: int
    vram_free_mb: int
    utilization_pct: float | None = None
    temperature_c: float | None = None
    processes: list[GPUProcess] = Field(
        default_factory=list, description="who holds its VRAM; NVML only, empty where unsupported")


class NoAnswer(Exception):
    """A probe cannot answer; ``final`` means later CUDA probes cannot either."""

    def __init__(self, reason: str, *, final: bool = False) -> None:
        super().__init__(reason)
        self.final = final


class Nvml:
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
                processes=_gpu_processes(nvml, handle),
            ))
        return gpus

    def _load(self) -> Any:
        if self._module is None:
            try:
                import pynvml
            except ImportError:
                raise NoAnswer('nvidia-ml-py is not installed (for an NVIDIA card: pip install '
                                '"zwaif-fallback[nvidia]")') from None
            self._module = pynvml
        if not self._ready:
            try:
                self._module.nvmlInit()
            except self._module.NVMLError as exc:
                # Library missing, driver not loaded: no NVIDIA GPU can be used here.
                raise NoAnswer(f"NVML found no NVIDIA driver ({exc})", final=True) from None
            self._ready = True
        return self._module

    def process_used_mb(self, pid: int) -> float | None:
        """VRAM that process ``pid`` holds on all GPUs; None when the driver does not say."""
        nvml = self._load()
        total, known = 0.0, False
        for index in range(nvml.nvmlDeviceGetCount()):
            used = _running(nvml, nvml.nvmlDeviceGetHandleByIndex(index)).get(pid)
            if used is not None:
                total, known = total + used / MIB, True
        return total if known else None

    def close(self) -> None:
        if self._ready:
            self._ready = False
            try:
                self._module.nvmlShutdown()
            except Exception:  # shutdown failures leave nothing to clean up
                pass


def _running(nvml: Any, handle: Any) -> dict[int, int | None]:
    """pid -> bytes it holds on this GPU (None where the driver does not say)."""
    found: dict[int, int | None] = {}
    # A process that draws and computes is in both lists, with the same figure.
    for query in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        try:
            processes = getattr(nvml, query)(handle)
        except Exception:  # not supported on this card, driver or nvidia-ml-py
            continue
        for process in processes:
            if found.get(process.pid) is None:
                found[process.pid] = getattr(process, "usedGpuMemory", None)
    return found


def _gpu_processes(nvml: Any, handle: Any) -> list[GPUProcess]:
    try:
        running = _running(nvml, handle)
    except Exception as exc:  # who holds the VRAM is extra; the GPU's own figures still stand
        log.debug("NVML process list unavailable: %s", exc)
        return []
    return [GPUProcess(pid=pid, name=_process_name(pid), used_mb=None if used is None else used // MIB)
            for pid, used in running.items()]


def _process_name(pid: int) -> str:
    # NVML reports host pids: inside a container, other processes' are not visible.
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"


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


def ggml_gpus(library: GgmlLibrary | None) -> tuple[VramSource, list[GPUInfo]]:
    found = list_devices(library=library)
    if found.reason is not None:
        raise NoAnswer(found.reason)
    # llama.cpp offloads to the dedicated GPUs, and to an integrated one only when there is none.
    gpus = ([d for d in found.devices if d.type == "gpu"]
            or [d for d in found.devices if d.type == "igpu"])
    if not gpus:
        seen = ", ".join(d.name for d in found.devices) or "no device at all"
        raise NoAnswer(f"llama.cpp found no GPU device (it sees {seen})")
    sized = [d for d in gpus if d.total_bytes]
    if not sized:
        names = ", ".join(d.name for d in gpus)
        if any(d.total_bytes is None for d in gpus):
            raise NoAnswer(f"llama.cpp sees {names}; asking it for memory would make this process "
                            "hold a CUDA context, NVML reads it for free: pip install nvidia-ml-py")
        raise NoAnswer(f"llama.cpp sees {names}, but not their memory")
    return "ggml:" + ",".join(d.name for d in sized), [
        _ggml_gpu(index, device) for index, device in enumerate(sized)]


def _ggml_gpu(index: int, device: GgmlDevice) -> GPUInfo:
    total, free = device.total_bytes or 0, device.free_bytes or 0
    return GPUInfo(index=index, name=device.description or device.name,
                   vram_total_mb=total // MIB, vram_used_mb=(total - free) // MIB,
                   vram_free_mb=free // MIB)


def gputil_gpus() -> list[GPUInfo]:
    if importlib.util.find_spec("GPUtil") is None:
        raise NoAnswer("GPUtil is not installed")
    try:
        import GPUtil

        found = GPUtil.getGPUs()
    except Exception as exc:  # GPUtil shells out to nvidia-smi; anything can go wrong there
        raise NoAnswer(f"GPUtil failed ({exc})") from None
    if not found:
        raise NoAnswer("GPUtil found no GPU (nvidia-smi missing or no card)", final=True)
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


def torch_gpus(*, allow_cuda: bool) -> tuple[VramSource, list[GPUInfo]]:
    if importlib.util.find_spec("torch") is None:
        raise NoAnswer("torch is not installed")
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
    raise NoAnswer("torch sees no CUDA or MPS device")
