"""The estimator against a GPU run of benchmarks/gpu/measure.py (see benchmarks/gpu/run.sh).

For every load measured on the GPU machine, the same zero-filled model is written
here again (benchmarks/gpu/shapes.py is deterministic) and estimated; the table
shows the estimate's VRAM against llama.cpp's GPU buffers and against NVML (the
process's peak, else the device's used growth). Target: within 10%.

Usage: compare_gpu.py gpu_results.jsonl
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from _common import ROOT, table

sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from shapes import write  # noqa: E402

from zwaif_fallback import FallbackSettings  # noqa: E402
from zwaif_fallback.catalog import Catalog  # noqa: E402
from zwaif_fallback.memory import LoadConfig, estimate  # noqa: E402


def main(results: str) -> None:
    rows = [json.loads(line) for line in Path(results).read_text().splitlines() if line.strip()]
    work = Path(tempfile.mkdtemp())
    catalog, settings = Catalog(), FallbackSettings(scan_system_stores=False)
    models = {}
    out = [("model", "ngl", "n_ctx", "FA", "KV", "estimate", "llama.cpp GPU", "NVML", "ratio")]
    errors = []
    for row in rows:
        if not row.get("ok"):
            out.append((row["model"], row["gpu_layers"], row["n_ctx"], row["flash_attn"],
                        row["kv_type"], "-", "-", "-", "failed"))
            continue
        name = row["model"].removesuffix(".gguf")
        if name not in models:
            shape, weight_type = name.rsplit("-", 1)
            models[name] = catalog.inspect_path(write(work, shape, weight_type), settings)
        est = estimate(models[name], LoadConfig(n_ctx=row["n_ctx"], gpu_layers=row["gpu_layers"],
                                                flash_attn=row["flash_attn"],
                                                kv_type=row["kv_type"]))
        gpu_buffers = sum(b["mib"] for b in row["buffers"]
                          if b["device"].startswith("CUDA") and "Host" not in b["device"])
        nvml = row["peak"]["process"] or (row["peak"]["device"] - row["before"])
        ratio = est.vram_mb / nvml if nvml else float("nan")
        errors.append(abs(ratio - 1))
        out.append((name, row["gpu_layers"], row["n_ctx"], row["flash_attn"], row["kv_type"],
                    f"{est.vram_mb:.0f}", f"{gpu_buffers:.0f}", f"{nvml:.0f}", f"{ratio:.3f}"))
    print(table(out))
    if errors:
        within = sum(e <= 0.10 for e in errors)
        print(f"\n{within} of {len(errors)} loads within 10% of NVML; worst {max(errors):.1%}")


if __name__ == "__main__":
    main(sys.argv[1])
