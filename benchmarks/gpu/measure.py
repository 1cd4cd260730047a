"""On the GPU machine: what llama.cpp really allocates, config by config.

For each GGUF and configuration, a fresh process loads it with verbose logs,
evaluates a prompt of a full micro-batch and generates a few tokens, while a
thread samples NVML. One JSON line per load: llama.cpp's buffers by device
and kind, and NVML's used memory (device) and this process's memory, before,
after the load and at peak. Needs only llama_cpp, nvidia-ml-py and gguf.

When NVML reports per-process memory (checked on the first load), loads run
side by side, as many as fit in the card's memory; otherwise one at a time,
since the device's used memory is then the only measure.

Usage: python measure.py MODELS_DIR OUT.jsonl [LOG.txt]
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from shapes import SHAPES

PROBE = r"""
import json, os, sys, threading, time
import pynvml
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
def used():
    return pynvml.nvmlDeviceGetMemoryInfo(gpu).used / 2**20
def processes():
    return {p.pid: p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(gpu)}
def mine():
    value = processes().get(os.getpid())
    return value / 2**20 if value is not None else None
cfg = json.loads(sys.argv[2])
before = used()
peak = {"device": before, "process": None}
stop = threading.Event()
def sample():
    while not stop.wait(0.005):
        peak["device"] = max(peak["device"], used())
        value = mine()
        if value is not None:
            peak["process"] = max(peak["process"] or 0.0, value)
threading.Thread(target=sample, daemon=True).start()
import llama_cpp
kv = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
start = time.perf_counter()
# cpu_only: no GPU device at all (what the library does for a CPU plan)
devices = {"split_mode": llama_cpp.LLAMA_SPLIT_MODE_NONE, "main_gpu": -1} if cfg.get("cpu_only") else {}
llm = llama_cpp.Llama(sys.argv[1], n_ctx=cfg["n_ctx"], n_gpu_layers=cfg["gpu_layers"],
                      flash_attn=cfg["flash_attn"], type_k=kv[cfg["kv_type"]],
                      type_v=kv[cfg["kv_type"]], n_batch=512, n_ubatch=512, verbose=True, **devices)
loaded = {"device": used(), "process": mine(), "s": time.perf_counter() - start}
llm.create_completion([5] * 500, max_tokens=16, temperature=0.0)
time.sleep(0.05)
stop.set()
final = {"device": used(), "process": mine(), "pids": sorted(processes()), "me": os.getpid()}
print("PROBE " + json.dumps({"before": before, "loaded": loaded, "peak": peak, "final": final}),
      file=sys.stderr)
"""

BUFFER = re.compile(r"(\S+)\s+(model|KV|output|compute) buffer size =\s+([\d.]+) MiB")
KEEP = re.compile(r"buffer size|splits|offload|n_ctx +=|flash_attn +=|CUDA0|error|fail|memory")
BUDGET_MIB = 70 * 1024  # of the card's ~80 GiB, for loads running side by side


def configs(n_layer: int) -> list[dict[str, object]]:
    """Full and partial offload, flash attention off and on, f16 and quantized KV caches."""
    full = [(4096, False, "f16"), (4096, True, "f16"), (4096, True, "q8_0"),
            (16384, False, "f16"), (16384, True, "q4_0")]
    partial = [(4096, False, "f16"), (16384, True, "q8_0")]
    return ([{"n_ctx": c, "gpu_layers": -1, "flash_attn": fa, "kv_type": kv} for c, fa, kv in full]
            + [{"n_ctx": c, "gpu_layers": n_layer // 2, "flash_attn": fa, "kv_type": kv}
               for c, fa, kv in partial])


class Budget:
    """Admits loads while their rough sizes fit the card; one at a time when ``serial``."""

    def __init__(self) -> None:
        self.used = 0
        self.serial = False
        self._cond = threading.Condition()

    def take(self, mib: int) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.used == 0 or (not self.serial
                                                           and self.used + mib <= BUDGET_MIB))
            self.used += mib

    def give(self, mib: int) -> None:
        with self._cond:
            self.used -= mib
            self._cond.notify_all()


def probe(path: Path, cfg: dict[str, object]) -> tuple[dict[str, object], str]:
    started = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-c", PROBE, str(path), json.dumps(cfg)],
                             capture_output=True, text=True, timeout=240)
        stderr, code = run.stderr, run.returncode
    except subprocess.TimeoutExpired as exc:
        stderr, code = (exc.stderr or b"").decode(errors="replace") + "\nTIMEOUT", -1
    found = re.search(r"^PROBE (.*)$", stderr, re.M)
    row: dict[str, object] = {
        "model": path.name, **cfg, "ok": code == 0 and found is not None,
        "wall_s": round(time.perf_counter() - started, 2),
        "buffers": [{"device": d, "kind": k, "mib": float(m)} for d, k, m in BUFFER.findall(stderr)]}
    if found:
        row.update(json.loads(found.group(1)))
    else:
        row["error"] = stderr[-1500:]
    kept = "\n".join(line for line in stderr.splitlines() if KEEP.search(line))
    return row, f"### {path.name} {json.dumps(cfg)}\n{kept}\n"


def main(models: str, out: str, log: str | None = None) -> None:
    jobs = []
    for path in sorted(Path(models).glob("*.gguf"), key=lambda p: p.stat().st_size):
        shape = path.stem.rsplit("-", 1)[0]
        cost = path.stat().st_size // 2**20 + 4096
        jobs += [(path, cfg, cost) for cfg in configs(SHAPES[shape][1])]
    budget, lock = Budget(), threading.Lock()
    sink = open(out, "w")
    notes = open(log or "/dev/null", "w")

    def one(job: tuple[Path, dict[str, object], int]) -> dict[str, object]:
        path, cfg, cost = job
        budget.take(cost)
        try:
            row, kept = probe(path, cfg)
        finally:
            budget.give(cost)
        with lock:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            notes.write(kept)
            notes.flush()
            print(f"{time.strftime('%X')} {path.name} {cfg} {'ok' if row['ok'] else 'FAILED'} "
                  f"{row['wall_s']} s", flush=True)
        return row

    first = one(jobs[0])
    peak = first.get("peak") or {}
    budget.serial = not (isinstance(peak, dict) and peak.get("process"))
    print("per-process memory:", "no, one load at a time" if budget.serial else "yes, side by side",
          flush=True)
    with ThreadPoolExecutor(1 if budget.serial else 6) as pool:
        list(pool.map(one, jobs[1:]))
    sink.close()
    notes.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
