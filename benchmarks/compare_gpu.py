"""The estimator against a GPU run of benchmarks/gpu/measure.py (see benchmarks/gpu/run.sh).

For every load measured on the GPU machine, the same zero-filled model is written
here again (benchmarks/gpu/shapes.py is deterministic) and estimated. Two ratios
per load: the estimate's buffers (weights, KV cache, compute) against the CUDA
buffers llama.cpp logged, and the whole estimate against NVML's per-process peak
during the generation (what the card really gave the process). Target: within 10%.

Usage: compare_gpu.py [gpu_results.jsonl]   (default: the H100 run kept in benchmarks/gpu)
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from _common import ROOT, table

sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from shapes import write  # noqa: E402

from zwaif_fallback import FallbackSettings  # noqa: E402
from zwaif_fallback.catalog import Catalog  # noqa: E402
from zwaif_fallback.memory import Estimate, LoadConfig, estimate  # noqa: E402

H100_RESULTS = ROOT / "benchmarks" / "gpu" / "h100-results.jsonl"


def estimated(results: Path, work: Path) -> Iterator[tuple[dict, Estimate | None]]:
    """Each measured load with the estimate for it (None for a load that failed there)."""
    catalog, settings = Catalog(), FallbackSettings(scan_system_stores=False)
    models = {}
    for line in results.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if not row.get("ok"):
            yield row, None
            continue
        name = row["model"].removesuffix(".gguf")
        if name not in models:
            shape, weight_type = name.rsplit("-", 1)
            models[name] = catalog.inspect_path(write(work, shape, weight_type), settings)
        yield row, estimate(models[name], LoadConfig(
            n_ctx=row["n_ctx"], gpu_layers=row["gpu_layers"], flash_attn=row["flash_attn"],
            kv_type=row["kv_type"]))


def cuda_buffers_mb(row: dict) -> float:
    """llama.cpp's own CUDA buffers (model, KV, compute) from its log; not the pinned host ones."""
    return sum(b["mib"] for b in row["buffers"]
               if b["device"].startswith("CUDA") and "Host" not in b["device"])


def nvml_peak_mb(row: dict) -> float:
    """NVML's per-process peak, else the device's used growth (one load at a time then)."""
    return row["peak"]["process"] or (row["peak"]["device"] - row["before"])


def main(results: Path) -> None:
    out = [("model", "ngl", "n_ctx", "FA", "KV", "buffers est", "llama.cpp", "ratio",
            "estimate", "NVML peak", "ratio")]
    errors = []
    with tempfile.TemporaryDirectory() as work:
        for row, est in estimated(results, Path(work)):
            config = (row["model"].removesuffix(".gguf"), row["gpu_layers"], row["n_ctx"],
                      row["flash_attn"], row["kv_type"])
            if est is None:
                out.append((*config, "-", "-", "-", "-", "-", "failed"))
                continue
            buffers = est.vram_mb - est.vram.overhead_mb
            logged, nvml = cuda_buffers_mb(row), nvml_peak_mb(row)
            errors.append(abs(est.vram_mb / nvml - 1))
            out.append((*config, f"{buffers:.0f}", f"{logged:.0f}", f"{buffers / logged:.3f}",
                        f"{est.vram_mb:.0f}", f"{nvml:.0f}", f"{est.vram_mb / nvml:.3f}"))
    print(table(out))
    if errors:
        within = sum(e <= 0.10 for e in errors)
        print(f"\n{within} of {len(errors)} loads within 10% of NVML's peak; worst {max(errors):.1%}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else H100_RESULTS)
