"""GPU probe latency: a VRAM query through NVML (what HardwareProbe uses) against
`nvidia-smi --query-gpu` (what GPUtil runs on every call), in the same run.
Needs an NVIDIA GPU and driver."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time

from _common import table


def main(nvml_runs: int = 2000, smi_runs: int = 20) -> None:
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    nvml = []
    for _ in range(nvml_runs):
        start = time.perf_counter()
        pynvml.nvmlDeviceGetMemoryInfo(handle)
        nvml.append(time.perf_counter() - start)
    smi_path = shutil.which("nvidia-smi")
    assert smi_path, "nvidia-smi not found"
    smi = []
    for _ in range(smi_runs):
        start = time.perf_counter()
        subprocess.run([smi_path, "--query-gpu=memory.total,memory.used,memory.free",
                        "--format=csv,noheader"], check=True, capture_output=True)
        smi.append(time.perf_counter() - start)
    a, b = statistics.median(nvml), statistics.median(smi)
    print(table([("probe", "median", "runs"),
                 ("nvidia-smi --query-gpu (baseline)", f"{b * 1000:.2f} ms", smi_runs),
                 ("NVML nvmlDeviceGetMemoryInfo", f"{a * 1000:.4f} ms", nvml_runs)]))
    print(f"\nNVML is {b / a:.0f}x faster")


if __name__ == "__main__":
    main()
