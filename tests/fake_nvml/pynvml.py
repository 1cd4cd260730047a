"""A stand-in for nvidia-ml-py's ``pynvml`` module: the process edge where tests simulate GPUs.

In-process tests build ``FakeNvml(gpus)``; subprocess tests put this folder first
on PYTHONPATH and describe the GPUs in ``ZWAIF_FAKE_NVML`` as JSON, e.g.
``[{"name": "RTX 4090", "total_mb": 24564, "used_mb": 800}]``, or ``"nodriver"``.
A GPU's ``processes`` and ``graphics_processes`` list who holds its memory, e.g.
``[{"pid": 4242, "used_mb": 1500}]`` (no ``used_mb``: the driver does not say); a GPU
without them answers "Not Supported", as older cards do.
"""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace

MIB = 1024 * 1024


class NVMLError(Exception):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class FakeNvml:
    """The NVML calls zwaif_fallback makes, answered from a list of GPU dicts."""

    NVMLError = NVMLError

    def __init__(self, gpus: list[dict] | str) -> None:
        self.gpus = copy.deepcopy(gpus)
        self.queries = 0

    def nvmlInit(self) -> None:
        if self.gpus == "nodriver":
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        self.queries += 1
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict:
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: dict) -> str:
        return handle.get("name", "NVIDIA Test GPU")

    def nvmlDeviceGetMemoryInfo(self, handle: dict) -> SimpleNamespace:
        total = int(handle["total_mb"] * MIB)
        used = int(handle.get("used_mb", 0) * MIB)
        return SimpleNamespace(total=total, used=used, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, handle: dict) -> SimpleNamespace:
        if "utilization" not in handle:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=handle["utilization"], memory=0)

    def nvmlDeviceGetTemperature(self, handle: dict, sensor: int) -> int:
        if "temperature" not in handle:
            raise NVMLError("Not Supported")
        return handle["temperature"]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict) -> list[SimpleNamespace]:
        return _processes(handle, "processes")

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: dict) -> list[SimpleNamespace]:
        return _processes(handle, "graphics_processes")


def _processes(handle: dict, key: str) -> list[SimpleNamespace]:
    if key not in handle:
        raise NVMLError("Not Supported")
    # nvidia-ml-py reports "not available" as None, and the figure in bytes
    return [SimpleNamespace(pid=p["pid"], usedGpuMemory=None if p.get("used_mb") is None
                            else int(p["used_mb"] * MIB)) for p in handle[key]]


_spec = os.environ.get("ZWAIF_FAKE_NVML", "[]")
_default = FakeNvml(_spec if _spec == "nodriver" else json.loads(_spec))

nvmlInit = _default.nvmlInit
nvmlShutdown = _default.nvmlShutdown
nvmlDeviceGetCount = _default.nvmlDeviceGetCount
nvmlDeviceGetHandleByIndex = _default.nvmlDeviceGetHandleByIndex
nvmlDeviceGetName = _default.nvmlDeviceGetName
nvmlDeviceGetMemoryInfo = _default.nvmlDeviceGetMemoryInfo
nvmlDeviceGetUtilizationRates = _default.nvmlDeviceGetUtilizationRates
nvmlDeviceGetTemperature = _default.nvmlDeviceGetTemperature
nvmlDeviceGetComputeRunningProcesses = _default.nvmlDeviceGetComputeRunningProcesses
nvmlDeviceGetGraphicsRunningProcesses = _default.nvmlDeviceGetGraphicsRunningProcesses
