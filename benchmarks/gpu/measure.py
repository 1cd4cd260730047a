"""On the GPU machine: what llama.cpp really allocates, config by config.

For each GGUF and configuration, a fresh process loads it with verbose logs,
evaluates a prompt of a full micro-batch and generates a few tokens, while a
thread samples NVML. One JSON line per load: llama.cpp's buffers by device
and kind, and NVML's used memory (device) and this process's memory, before,
after the load and at peak. Needs only llama_cpp and nvidia-ml-py.

Usage: python measure.py MODELS_DIR OUT.jsonl
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import json, os, sys, threading
import pynvml
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
def used():
    return pynvml.nvmlDeviceGetMemoryInfo(gpu).used / 2**20
def mine():
    for p in pynvml.nvmlDeviceGetComputeRunningProcesses(gpu):
        if p.pid == os.getpid() and p.usedGpuMemory is not None:
            return p.usedGpuMemory / 2**20
    return None
cfg = json.loads(sys.argv[2])
before = used()
peak = {"device": before, "process": 0.0}
stop = threading.Event()
def sample():
    while not stop.wait(0.005):
        peak["device"] = max(peak["device"], used())
        peak["process"] = max(peak["process"], mine() or 0.0)
threading.Thread(target=sample, daemon=True).start()
import llama_cpp
kv = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
llm = llama_cpp.Llama(sys.argv[1], n_ctx=cfg["n_ctx"], n_gpu_layers=cfg["gpu_layers"],
                      flash_attn=cfg["flash_attn"], type_k=kv[cfg["kv_type"]],
                      type_v=kv[cfg["kv_type"]], n_batch=512, n_ubatch=512, verbose=True)
loaded = {"device": used(), "process": mine()}
llm.create_completion([5] * 500, max_tokens=16, temperature=0.0)
stop.set()
print("PROBE " + json.dumps({"before": before, "loaded": loaded, "peak": peak}), file=sys.stderr)
"""

BUFFER = re.compile(r"(\S+)\s+(model|KV|output|compute) buffer size =\s+([\d.]+) MiB")


def configs(n_layer: int) -> list[dict[str, object]]:
    out = []
    for gpu_layers in (-1, n_layer // 2):
        for n_ctx in (4096, 8192):
            for flash_attn, kv in ((False, "f16"), (True, "f16"), (True, "q8_0")):
                out.append({"n_ctx": n_ctx, "gpu_layers": gpu_layers, "flash_attn": flash_attn,
                            "kv_type": kv})
    return out


def layers(path: Path) -> int:
    import gguf

    reader_fields = gguf.GGUFReader(str(path)).fields  # small vocabularies: fast enough here
    arch = bytes(reader_fields["general.architecture"].parts[-1]).decode()
    return int(reader_fields[f"{arch}.block_count"].parts[-1][0])


def main(models: str, out: str) -> None:
    with open(out, "w") as sink:
        for path in sorted(Path(models).glob("*.gguf")):
            for cfg in configs(layers(path)):
                run = subprocess.run([sys.executable, "-c", PROBE, str(path), json.dumps(cfg)],
                                     capture_output=True, text=True, timeout=600)
                probe = re.search(r"^PROBE (.*)$", run.stderr, re.M)
                row = {"model": path.name, **cfg, "ok": run.returncode == 0 and probe is not None,
                       "buffers": [{"device": d, "kind": k, "mib": float(m)}
                                   for d, k, m in BUFFER.findall(run.stderr)]}
                if probe:
                    row.update(json.loads(probe.group(1)))
                else:
                    row["error"] = run.stderr[-800:]
                sink.write(json.dumps(row) + "\n")
                sink.flush()
                print(path.name, cfg, "ok" if row["ok"] else "failed", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
