"""On the GPU machine: the library's own GPU path, end to end.

The real NVML probe, the fit plan of each zero-filled model, then two real loads
through the manager (a chat each, then a switch), and what calibration stored for
them: the estimate beside NVML's per-process figure. Prints one JSON document.

Usage: python e2e.py MODELS_DIR DATA_DIR
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time

from zwaif_fallback import FallbackManager, FallbackSettings, HardwareProbe


def main(models: str, data: str) -> None:
    settings = FallbackSettings(models_dir=models, data_dir=data, scan_system_stores=False,
                                preferred_model="tinyllama-1.1b-Q4_0", vram_monitoring=False,
                                n_ctx=4096, settings_file=f"{data}/settings.json")
    probe = HardwareProbe()
    manager = FallbackManager(settings, probe=probe, background=False)
    started = time.perf_counter()
    status = manager.system_status(refresh=True)
    report: dict[str, object] = {"status_s": round(time.perf_counter() - started, 3),
                                 "status": json.loads(status.model_dump_json())}
    plans = {}
    for model in manager.discover_models():
        fit = manager.check_compatibility(model.name)
        plans[model.name] = {"verdict": fit.verdict, "gpu_layers": fit.gpu_layers,
                             "vram_mb": round(fit.vram_mb), "reason": fit.reason}
    report["plans"] = plans
    chats = []
    for name in ("tinyllama-1.1b-Q4_0", "qwen2-0.5b-Q4_0"):
        manager.switch_model(name, persist=False)
        result = manager.chat([{"role": "user", "content": "Say hello."}], max_tokens=8)
        chats.append({"model": result.model, "source": result.source, "tokens": result.tokens,
                      "process_vram_mb": probe.process_vram_mb(os.getpid())})
    report["chats"] = chats
    fields = ("model", "config", "device", "estimated", "measured")
    with sqlite3.connect(f"{data}/history.sqlite3") as db:
        rows = db.execute("SELECT model_key, config_key, device, estimated_mb, measured_mb "
                          "FROM calibrations").fetchall()
    report["calibrations"] = [dict(zip(fields, row, strict=True)) for row in rows]
    again = manager.check_compatibility("tinyllama-1.1b-Q4_0")
    report["recheck"] = {"calibrated": again.calibrated, "vram_mb": round(again.vram_mb),
                         "reason": again.reason}
    manager.close()
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:3])
