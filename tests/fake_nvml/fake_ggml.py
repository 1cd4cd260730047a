"""A stand-in for llama.cpp's libggml device calls: the process edge where tests simulate
the GPUs a llama.cpp build can offload to.

In-process tests pass ``FakeGgml(devices)`` as ``HardwareProbe(ggml=...)``. Subprocess tests
put this folder first on PYTHONPATH (as for fake NVML) and list the devices in
``ZWAIF_FAKE_GGML`` as JSON, e.g. ``[{"name": "CUDA0", "type": 1, "total_mb": 24564}]``:
``sitecustomize.py`` here then hands them to zwaif_fallback instead of the real library.
"""

from __future__ import annotations

from typing import NamedTuple

GIB = 2**30


class Device(NamedTuple):
    name: str
    description: str
    type: int  # ggml_backend_dev_type: 0 CPU, 1 GPU, 2 IGPU, 3 ACCEL
    free_bytes: int
    total_bytes: int


class FakeGgml:
    """The libggml calls the probe makes, answered from a list of devices; it notes what was asked."""

    def __init__(self, devices: list[Device]) -> None:
        self.devices = devices
        self.asked: list[str] = []

    def count(self) -> int:
        self.asked.append("count")
        return len(self.devices)

    def get(self, index: int) -> Device:
        return self.devices[index]  # the device itself stands in for ggml's handle

    def name(self, device: Device) -> str:
        return device.name

    def description(self, device: Device) -> str:
        return device.description

    def type(self, device: Device) -> int:
        return device.type

    def memory(self, device: Device) -> tuple[int, int]:
        self.asked.append(f"memory {device.name}")
        return device.free_bytes, device.total_bytes


CPU = Device("CPU", "AMD Ryzen 9 7950X", 0, 50 * GIB, 64 * GIB)
CUDA0 = Device("CUDA0", "NVIDIA GeForce RTX 4090", 1, 20 * GIB, 24 * GIB)


def cuda_build() -> FakeGgml:
    """llama.cpp built with CUDA on a machine with one NVIDIA card (its memory comes from NVML)."""
    return FakeGgml([CPU, CUDA0])
