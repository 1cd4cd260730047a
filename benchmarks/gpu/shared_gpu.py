"""On the GPU machine: a fallback load on a card that another process has mostly filled.

Issue 12's check, in four steps, each load in a fresh process:

1. CPU plans: a zero-filled model loaded with ``n_gpu_layers=0`` as llama.cpp does by
   default, then with no GPU device (what the library does for a CPU plan), then through
   the library's own backend. NVML's per-process figure says what each takes on the GPU.
2. A filler process (a plain CUDA allocation through torch) leaves ``FREE_MIB`` free.
   Real loads of Llama-3-8B F16 find the true maximum of GPU layers (bisection: the
   most layers that load and generate without an error).
3. With the filler still there, the library plans and loads the same model: its plan
   must be partial, within 10% of the true maximum and never above it, and it must load
   and answer.
4. The filler exits; the library's next load must go fully to the GPU.

Prints one JSON document. Usage: python shared_gpu.py MODELS_DIR DATA_DIR [FREE_MIB]
(run from benchmarks/gpu, with the repository root on PYTHONPATH).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from measure import probe

BIG = "llama3-8b-F16"
SMALL = "tinyllama-1.1b-Q4_0"
CONFIG = {"n_ctx": 4096, "flash_attn": False, "kv_type": "f16"}

FILLER = r"""
import sys, pynvml, torch
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
target = float(sys.argv[1])
torch.zeros(1, device="cuda")
held = []
while True:
    free = pynvml.nvmlDeviceGetMemoryInfo(gpu).free / 2**20
    if free <= target + 32:
        break
    step = min(free - target, 4096.0)
    held.append(torch.empty(int(step * 2**20), dtype=torch.uint8, device="cuda"))
print("READY", round(free), flush=True)
sys.stdin.read()
"""

LIBRARY = r"""
import json, os, sys, threading, time
import pynvml
from zwaif_fallback import FallbackManager, FallbackSettings
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
peak = {"mib": 0.0}
stop = threading.Event()
def sample():
    while not stop.wait(0.005):
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(gpu):
            if p.pid == os.getpid() and p.usedGpuMemory:
                peak["mib"] = max(peak["mib"], p.usedGpuMemory / 2**20)
threading.Thread(target=sample, daemon=True).start()
models, data, name = sys.argv[1:4]
settings = FallbackSettings(models_dir=models, data_dir=data, scan_system_stores=False,
                            preferred_model=name, vram_monitoring=False, n_ctx=4096,
                            settings_file=f"{data}/settings.json")
manager = FallbackManager(settings, background=False)
fit = manager.check_compatibility(name)
row = {"verdict": fit.verdict, "gpu_layers": fit.gpu_layers, "n_layers": fit.n_layers,
       "estimate_vram_mb": fit.vram_mb, "available_vram_mb": fit.available_vram_mb,
       "reason": fit.reason, "free_before_mib": pynvml.nvmlDeviceGetMemoryInfo(gpu).free / 2**20}
started = time.perf_counter()
try:
    manager.switch_model(name, persist=False)
    row["load_s"] = round(time.perf_counter() - started, 2)
    result = manager.chat([{"role": "user", "content": "Say hello."}], max_tokens=8)
    row.update(ok=True, source=result.source, model=result.model, tokens=result.tokens)
    backend = manager._local.pool.backend
    row["loaded_gpu_layers"] = getattr(backend, "n_gpu_layers", None)
except Exception as exc:
    row.update(ok=False, error=f"{type(exc).__name__}: {exc}")
time.sleep(0.05)
stop.set()
row["process_peak_mib"] = round(peak["mib"], 1)
manager.close()
print("LIBRARY " + json.dumps(row), flush=True)
"""


def library_load(models: str, data: str, name: str) -> dict[str, object]:
    run = subprocess.run([sys.executable, "-c", LIBRARY, models, data, name],
                         capture_output=True, text=True, timeout=240)
    for line in run.stdout.splitlines():
        if line.startswith("LIBRARY "):
            return dict(json.loads(line[8:]))
    return {"ok": False, "error": (run.stderr or run.stdout)[-1500:], "code": run.returncode}


def loads(path: Path, layers: int, **extra: object) -> dict[str, object]:
    row, _ = probe(path, {**CONFIG, "gpu_layers": layers, **extra})
    keep = ("ok", "gpu_layers", "cpu_only", "peak", "loaded", "wall_s", "buffers", "error")
    return {k: row[k] for k in keep if k in row}


def true_maximum(path: Path, n_layers: int, tries: list[dict[str, object]]) -> int:
    """The most GPU layers that load and generate on the card as it is now (bisection)."""
    low, high = 0, n_layers + 1  # 0 always loads; n_layers + 1 is everything
    while low < high:
        mid = (low + high + 1) // 2
        row = loads(path, mid)
        tries.append({"gpu_layers": mid, "ok": row["ok"], "wall_s": row.get("wall_s"),
                      "peak": row.get("peak"), "error": str(row.get("error", ""))[-300:]})
        print(f"  {mid} layers: {'ok' if row['ok'] else 'failed'}", file=sys.stderr, flush=True)
        if row["ok"]:
            low = mid
        else:
            high = mid - 1
    return low


def main(models: str, data: str, free_mib: float = 10240.0) -> None:
    folder = Path(models)
    report: dict[str, object] = {"free_target_mib": free_mib}
    small = folder / f"{SMALL}.gguf"
    report["cpu_plans"] = {
        "n_gpu_layers=0": loads(small, 0),
        "no GPU device": loads(small, 0, cpu_only=True),
    }
    print("cpu plans measured", file=sys.stderr, flush=True)

    filler = subprocess.Popen([sys.executable, "-c", FILLER, str(free_mib)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert filler.stdout is not None and filler.stdin is not None
    ready = filler.stdout.readline().split()
    report["filler_free_mib"] = float(ready[1]) if len(ready) == 2 else None
    try:
        tries: list[dict[str, object]] = []
        started = time.perf_counter()
        best = true_maximum(folder / f"{BIG}.gguf", 32, tries)
        report["true_maximum"] = {"gpu_layers": best, "tries": tries,
                                  "seconds": round(time.perf_counter() - started, 1)}
        planned = library_load(models, f"{data}/filled", BIG)
        report["library_filled"] = planned
        layers = planned.get("gpu_layers")
        if isinstance(layers, int) and best:
            report["plan_vs_true"] = {"planned": layers, "true": best,
                                      "shortfall_pct": round(100 * (best - layers) / best, 1),
                                      "within_10pct_not_above": 0.9 * best <= layers <= best}
    finally:
        filler.stdin.close()
        filler.wait(timeout=30)
    time.sleep(1.0)
    report["library_freed"] = library_load(models, f"{data}/freed", BIG)
    report["library_cpu_plan"] = library_cpu_plan(models, data)
    print(json.dumps(report, indent=1, default=str))


def library_cpu_plan(models: str, data: str) -> dict[str, object]:
    """The library's backend with a CPU plan, measured like the raw loads."""
    code = (
        "import json, os, sys, threading, time, pynvml\n"
        "from zwaif_fallback.backends.llama_cpp import LlamaCppBackend\n"
        "from zwaif_fallback.backends.base import GenerationParams\n"
        "pynvml.nvmlInit(); gpu = pynvml.nvmlDeviceGetHandleByIndex(0)\n"
        "b = LlamaCppBackend('m', sys.argv[1], n_ctx=4096, n_gpu_layers=0)\n"
        "b.load()\n"
        "text = ''.join(b.stream([{'role': 'user', 'content': 'w1 ' * 500}],"
        " GenerationParams(max_tokens=16)))\n"
        "mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(gpu)"
        " if p.pid == os.getpid()]\n"
        "print('CPUPLAN ' + json.dumps({'process_mib': [m / 2**20 if m else m for m in mine]}))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, f"{models}/{SMALL}.gguf"],
                         capture_output=True, text=True, timeout=240)
    for line in run.stdout.splitlines():
        if line.startswith("CPUPLAN "):
            return dict(json.loads(line[8:]))
    return {"ok": False, "error": run.stderr[-1500:]}


if __name__ == "__main__":
    threading.excepthook = lambda args: None
    main(sys.argv[1], sys.argv[2], *(float(a) for a in sys.argv[3:4]))
