"""What this machine has: GPUs and their VRAM, RAM, CPU.

GPUs are probed in order of cost and precision: NVML (nvidia-ml-py, ~microseconds
a query, and the only one that says which processes hold the VRAM), llama.cpp's own
device list (ggml_devices: AMD, Intel and Apple GPUs through a Vulkan, ROCm, SYCL or
Metal build, a few milliseconds), GPUtil (runs nvidia-smi, ~25 ms a call), torch
(CUDA, or MPS on macOS; importing torch costs seconds, so it is the last resort).
``vram_source`` says which one answered. llama.cpp comes after NVML because asking it
about a CUDA card would make this process hold a CUDA context. When NVML is installed
but finds no NVIDIA driver, nothing else is asked about CUDA: without a driver neither
GPUtil nor torch can see a card; llama.cpp is still asked, as that is the AMD and
Intel case.
"""

from __future__ import annotations

import importlib.util
import logging
import platform
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
from pydantic import Field

from ._model import Model
from .ggml_devices import GgmlDevice, GgmlLibrary, list_devices

__all__ = ["GPUInfo", "GPUProcess", "HardwareProbe", "SystemStatus"]

log = logging.getLogger(__name__)

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
                processes=_gpu_processes(nvml, handle),
            ))
        return gpus

    def _load(self) -> Any:
        if self._module is None:
            try:
                import pynvml
            except ImportError:
                raise _NoAnswer('nvidia-ml-py is not installed (for an NVIDIA card: pip install '
                                '"zwaif-fallback[nvidia]")') from None
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


def _ggml_gpus(library: GgmlLibrary | None) -> tuple[VramSource, list[GPUInfo]]:
    found = list_devices(library=library)
    if found.reason is not None:
        raise _NoAnswer(found.reason)
    # llama.cpp offloads to the dedicated GPUs, and to an integrated one only when there is none.
    gpus = ([d for d in found.devices if d.type == "gpu"]
            or [d for d in found.devices if d.type == "igpu"])
    if not gpus:
        seen = ", ".join(d.name for d in found.devices) or "no device at all"
        raise _NoAnswer(f"llama.cpp found no GPU device (it sees {seen})")
    sized = [d for d in gpus if d.total_bytes]
    if not sized:
        names = ", ".join(d.name for d in gpus)
        if any(d.total_bytes is None for d in gpus):
            raise _NoAnswer(f"llama.cpp sees {names}; asking it for memory would make this process "
                            "hold a CUDA context, NVML reads it for free: pip install nvidia-ml-py")
        raise _NoAnswer(f"llama.cpp sees {names}, but not their memory")
    return "ggml:" + ",".join(d.name for d in sized), [
        _ggml_gpu(index, device) for index, device in enumerate(sized)]


def _ggml_gpu(index: int, device: GgmlDevice) -> GPUInfo:
    total, free = device.total_bytes or 0, device.free_bytes or 0
    return GPUInfo(index=index, name=device.description or device.name,
                   vram_total_mb=total // MIB, vram_used_mb=(total - free) // MIB,
                   vram_free_mb=free // MIB)


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

    Safe to share between threads. ``nvml`` replaces the pynvml module and ``ggml``
    llama.cpp's library (the process edges), ``clock`` the monotonic clock.
    """

    def __init__(self, *, ttl_s: float = 1.0, nvml: Any = None, ggml: GgmlLibrary | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._nvml = _Nvml(nvml)
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
            except _NoAnswer as exc:
                notes.append(str(exc))
                cuda_possible = cuda_possible and not exc.final
            except Exception as exc:  # a driver error mid-query must not break the caller
                log.warning("%s probe failed: %s", name, exc)
                notes.append(f"{name} failed ({exc})")
            return None

        found = (ask("nvml", lambda: ("nvml", self._nvml.gpus()))
                 or ask("ggml", lambda: _ggml_gpus(self._ggml)))
        if found is None and cuda_possible:
            found = ask("gputil", lambda: ("gputil", _gputil_gpus()))
        if found is None and (cuda_possible or platform.system() == "Darwin"):
            found = ask("torch", lambda: _torch_gpus(allow_cuda=cuda_possible))
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
