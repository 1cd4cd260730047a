"""The memory estimator against what llama.cpp really allocates, config by config.

For each model and load configuration, a fresh process loads the model with
llama-cpp-python (verbose, so llama.cpp logs its model, KV, output and compute
buffers), generates a few tokens, and reports its resident-memory growth and,
on an NVIDIA GPU, the NVML used-memory growth. The estimate is printed next to
those figures with the ratio.

Targets: GPU total within 10% of the buffers + CUDA context (NVML delta); CPU
RAM within 15% of llama.cpp's buffers and never below the RSS growth.

Usage: bench_fit.py [MODEL.gguf ...] [--gpu] [--quick]
Without models it uses the bundled SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from _common import table

from zwaif_fallback import FallbackSettings
from zwaif_fallback.catalog import Catalog
from zwaif_fallback.fit import LoadConfig, estimate

PROBE = r"""
import json, sys, psutil
cfg = json.loads(sys.argv[2])
nvml = None
try:
    import pynvml
    pynvml.nvmlInit()
    nvml = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception:
    pass
def vram():
    return pynvml.nvmlDeviceGetMemoryInfo(nvml).used / 2**20 if nvml else 0.0
proc = psutil.Process()
rss0, vram0 = proc.memory_info().rss, vram()
from llama_cpp import Llama
import llama_cpp
types = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
llm = Llama(sys.argv[1], n_ctx=cfg["n_ctx"], n_gpu_layers=cfg["gpu_layers"], n_batch=cfg["n_batch"],
            n_ubatch=cfg["n_ubatch"], flash_attn=cfg["flash_attn"], type_k=types[cfg["kv_type"]],
            type_v=types[cfg["kv_type"]], verbose=True, seed=1)
peak_vram = vram()
llm.create_completion("Once upon a time " * 20, max_tokens=16)
peak_vram = max(peak_vram, vram())
print("PROBE", json.dumps({"rss_growth_mb": (proc.memory_info().rss - rss0) / 2**20,
                           "vram_growth_mb": peak_vram - vram0}), file=sys.stderr)
"""

BUFFER = re.compile(r"(\S+)\s+(model|KV|output|compute) buffer size =\s+([\d.]+) MiB")


def measure(path: str, config: LoadConfig) -> dict[str, float] | str:
    out = subprocess.run([sys.executable, "-c", PROBE, path, config.model_dump_json()],
                         capture_output=True, text=True, timeout=600)
    probe = re.search(r"^PROBE (.*)$", out.stderr, re.M)
    if out.returncode != 0 or probe is None:
        lines = [line for line in out.stderr.splitlines() if "error" in line.lower()]
        return (lines[-1] if lines else f"exit {out.returncode}")[:80]
    result = json.loads(probe.group(1))
    result["gpu_buffers_mb"] = result["host_buffers_mb"] = 0.0
    for device, _kind, size in BUFFER.findall(out.stderr):
        on_gpu = device.startswith(("CUDA", "ROCm", "Metal", "Vulkan")) and "Host" not in device
        result["gpu_buffers_mb" if on_gpu else "host_buffers_mb"] += float(size)
    return result


def configs(quick: bool, gpu: bool) -> list[LoadConfig]:
    layers = [-1, 12] if gpu else [0]
    contexts = [2048] if quick else [2048, 4096, 8192]
    out = []
    for gpu_layers in layers:
        for n_ctx in contexts:
            for flash_attn, kv_type in ((False, "f16"), (True, "f16"), (True, "q8_0")):
                out.append(LoadConfig(n_ctx=n_ctx, gpu_layers=gpu_layers, flash_attn=flash_attn,
                                      kv_type=kv_type))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="*")
    parser.add_argument("--gpu", action="store_true", help="also offload to GPU 0")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    catalog, settings = Catalog(), FallbackSettings(scan_system_stores=False)
    paths = args.models or [next(m.path for m in catalog.discover(settings) if m.source == "bundled")]
    rows = [("model", "ngl", "n_ctx", "FA", "KV", "est RAM", "llama.cpp host", "ratio", "RSS growth",
             "est VRAM", "llama.cpp GPU", "NVML growth", "ratio")]
    for path in paths:
        model = catalog.inspect_path(Path(path), settings)
        for config in configs(args.quick, args.gpu):
            est = estimate(model, config)
            got = measure(path, config)
            head = (model.name[:28], config.gpu_layers, config.n_ctx, "on" if config.flash_attn else "off",
                    config.kv_type, f"{est.ram_mb:.0f}")
            if isinstance(got, str):
                rows.append((*head, got, "", "", "", "", "", ""))
                continue
            host, gpu = got["host_buffers_mb"], got["gpu_buffers_mb"]
            gpu_total = got["vram_growth_mb"]
            rows.append((*head, f"{host:.0f}", f"{est.ram_mb / host:.3f}",
                         f"{got['rss_growth_mb']:.0f}", f"{est.vram_mb:.0f}", f"{gpu:.0f}",
                         f"{gpu_total:.0f}", f"{est.vram_mb / gpu_total:.3f}" if gpu_total else "-"))
            print(" ".join(str(c) for c in rows[-1]), flush=True)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
