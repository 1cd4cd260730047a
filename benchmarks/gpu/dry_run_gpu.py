"""On the GPU machine: llama.cpp's dry run (``no_alloc``) against a real load and our estimate.

For each case, the dry run's VRAM (llama.cpp's own accounting of the plan), our
estimate's VRAM less the runtime's context (the estimate counts the CUDA context,
llama.cpp's buffers do not), and a real load in a fresh process: its logged CUDA
buffers and NVML's per-process peak. Prints one JSON document.

Usage: python dry_run_gpu.py MODELS_DIR   (from the repository root)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from measure import probe  # noqa: E402

from zwaif_fallback import FallbackSettings, LoadConfig, estimate  # noqa: E402
from zwaif_fallback.catalog import Catalog  # noqa: E402
from zwaif_fallback.dry_run import dry_run  # noqa: E402

CASES = [("tinyllama-1.1b-Q4_0", -1), ("llama3-8b-F16", 16), ("llama3-8b-Q4_0", -1),
         ("qwen2-0.5b-F16", 12)]


def main(models: str) -> None:
    settings = FallbackSettings(models_dir=models, scan_system_stores=False,
                                settings_file=f"{models}/settings.json")
    catalog = Catalog()
    rows = []
    for name, layers in CASES:
        path = Path(models) / f"{name}.gguf"
        config = LoadConfig(n_ctx=4096, gpu_layers=layers)
        info = catalog.inspect_path(path, settings)
        ours = estimate(info, config)
        started = time.perf_counter()
        row: dict[str, object] = {"model": name, "gpu_layers": layers}
        try:
            dry = dry_run(path, config)
            row["dry"] = {"vram_mb": dry.vram_mb, "ram_mb": dry.ram_mb, "seconds": dry.seconds,
                          "wall_s": round(time.perf_counter() - started, 2),
                          "devices": {k: v.model_dump() for k, v in dry.devices.items()}}
        except Exception as exc:
            row["dry"] = {"error": f"{type(exc).__name__}: {exc}"}
        real, _ = probe(path, {"n_ctx": 4096, "gpu_layers": layers, "flash_attn": False,
                               "kv_type": "f16"})
        buffers = real.get("buffers") or []
        cuda = sum(float(b["mib"]) for b in buffers if str(b["device"]).startswith("CUDA")
                   and not str(b["device"]).endswith("_Host"))
        peak = real.get("peak") or {}
        row["real"] = {"ok": real.get("ok"), "cuda_buffers_mb": round(cuda, 1),
                       "nvml_process_peak_mb": peak.get("process") if isinstance(peak, dict) else None}
        row["ours"] = {"vram_mb": round(ours.vram_mb, 1),
                       "buffers_mb": round(ours.vram_mb - ours.vram.overhead_mb, 1)}
        dry_vram = row["dry"].get("vram_mb") if isinstance(row["dry"], dict) else None
        if isinstance(dry_vram, float) and cuda:
            row["dry_over_real_buffers"] = round(dry_vram / cuda, 4)
            row["ours_over_real_buffers"] = round((ours.vram_mb - ours.vram.overhead_mb) / cuda, 4)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
