"""llama.cpp's no_alloc dry run against a real load and against our estimator.

For the bundled SmolLM2-135M and a zero-filled Llama-3-8B-shaped Q4_0 GGUF, rounds
interleave (a) ``dry_run`` (a child process; the in-process cache is cleared so each
round runs one), (b) a real load of the same plan in a child (llama-cpp-python's
``Llama(verbose=True)``, mmap as our backend loads: model and context, no generation),
and (c) ``memory.estimate`` in this process. It prints the median wall times, then each
model's memory by part as the dry run, the real load's logged buffers and the estimate
see it, with ratios to the real load.

The dry run reads without mmap, so where llama.cpp repacks weights (Q4_0 on an AVX2 or
NEON CPU) the real load's logged weights are larger: its mapping (``CPU_Mapped``) still
spans the repacked tensors' originals beside their ``CPU_REPACK`` copy.

Usage: bench_dry_run.py [--rounds 5] [--n-ctx 4096] [--gpu-layers 0] [--no-8b]
The 8B file is sparse (no disk used); its real CPU load repacks ~4 GiB: ~20 s and ~9 GiB
of RAM the first round on 2 cores, ~6 s once the file is in the page cache.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, table

import zwaif_fallback.dry_run as dry_run_module
from zwaif_fallback import FallbackSettings
from zwaif_fallback.catalog import Catalog
from zwaif_fallback.dry_run import dry_run
from zwaif_fallback.dry_run_log import DryRun
from zwaif_fallback.memory import Estimate, LoadConfig, estimate
from zwaif_fallback.model_info import ModelInfo

# A real load in a fresh interpreter, its buffers in llama.cpp's log (the tests use it too).
# argv: path, the plan as JSON (LoadConfig's fields, and use_mmap).
REAL_LOAD = r"""
import ctypes, json, sys
if sys.platform == 'linux':
    ctypes.CDLL('libstdc++.so.6', mode=ctypes.RTLD_GLOBAL)
import llama_cpp
plan = json.loads(sys.argv[2])
kv = getattr(llama_cpp, 'GGML_TYPE_' + plan['kv_type'].upper())
llama_cpp.Llama(sys.argv[1], n_ctx=plan['n_ctx'], n_gpu_layers=plan['gpu_layers'],
                n_batch=plan['n_batch'], n_ubatch=plan['n_ubatch'], flash_attn=plan['flash_attn'],
                type_k=kv, type_v=kv, use_mmap=plan.get('use_mmap', True), verbose=True)
"""
BUFFER = re.compile(r"(\S+)\s+(model|KV|output|compute) buffer size =\s*([\d.]+) MiB")
# The logits' output buffer counts with compute (the estimate has it in its overhead).
PARTS = {"model": "weights", "KV": "kv", "compute": "compute", "output": "compute"}
ESTIMATE_CALLS = 200


def is_host(buffer: str) -> bool:
    return buffer.startswith("CPU") or buffer.endswith("_Host")


def real_load(path: Path, config: LoadConfig) -> tuple[float, dict[tuple[str, str], float]]:
    """(seconds, (vram|ram, part) -> MiB) of a real load in a child."""
    start = time.perf_counter()
    child = subprocess.run([sys.executable, "-c", REAL_LOAD, str(path), config.model_dump_json()],
                           capture_output=True, text=True, timeout=600, check=True)
    seconds = time.perf_counter() - start
    parts: dict[tuple[str, str], float] = {}
    for buffer, kind, mb in BUFFER.findall(child.stderr):
        key = ("ram" if is_host(buffer) else "vram", PARTS[kind])
        parts[key] = parts.get(key, 0.0) + float(mb)
    return seconds, parts


def timed_dry_run(path: Path, config: LoadConfig) -> DryRun:
    dry_run_module._cache.clear()  # a fresh child each round, as the first call pays
    return dry_run(path, config)


def timed_estimate(model: ModelInfo, config: LoadConfig) -> tuple[float, Estimate]:
    start = time.perf_counter()
    for _ in range(ESTIMATE_CALLS):
        est = estimate(model, config)
    return (time.perf_counter() - start) / ESTIMATE_CALLS, est


def dry_parts(dry: DryRun) -> dict[tuple[str, str], float]:
    parts: dict[tuple[str, str], float] = {}
    for name, device in dry.devices.items():
        side = "ram" if is_host(name) else "vram"
        for part, mb in (("weights", device.weights_mb), ("kv", device.kv_mb),
                         ("compute", device.compute_mb + device.output_mb)):
            parts[side, part] = parts.get((side, part), 0.0) + mb
    return parts


def estimate_parts(est: Estimate) -> dict[tuple[str, str], float]:
    parts: dict[tuple[str, str], float] = {}
    for side, breakdown in (("vram", est.vram), ("ram", est.ram)):
        parts |= {(side, "weights"): breakdown.weights_mb, (side, "kv"): breakdown.kv_mb,
                  (side, "compute"): breakdown.compute_mb, (side, "overhead"): breakdown.overhead_mb}
    return parts


def ratio(value: float, real: float) -> str:
    return f"{value / real:.3f}" if real else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--no-8b", action="store_true", help="only the bundled model")
    args = parser.parse_args()
    config = LoadConfig(n_ctx=args.n_ctx, gpu_layers=args.gpu_layers)
    catalog, settings = Catalog(), FallbackSettings(scan_system_stores=False)
    bundled = next(m for m in catalog.discover(settings) if m.source == "bundled")
    with tempfile.TemporaryDirectory() as folder:
        paths = [Path(bundled.path)]
        if not args.no_8b:
            made = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "shapes.py"), folder,
                                   "llama3-8b-Q4_0"], capture_output=True, text=True, check=True)
            paths.append(Path(made.stdout.split()[-1]))
        models = {path: catalog.inspect_path(path, settings) for path in paths}
        times: dict[tuple[Path, str], list[float]] = {(p, k): [] for p in paths for k in "abc"}
        last: dict[Path, tuple[DryRun, dict[tuple[str, str], float], Estimate]] = {}
        for round_ in range(args.rounds):
            for path in paths:  # interleaved: a, b, c for one model, then the next
                dry = timed_dry_run(path, config)
                real_s, real = real_load(path, config)
                est_s, est = timed_estimate(models[path], config)
                times[path, "a"].append(dry.seconds)
                times[path, "b"].append(real_s)
                times[path, "c"].append(est_s)
                last[path] = (dry, real, est)
                print(f"round {round_ + 1} {path.name}: dry run {dry.seconds:.2f} s, "
                      f"real load {real_s:.2f} s, estimate {est_s * 1e3:.3f} ms", flush=True)

    print(f"\nn_ctx={config.n_ctx}, gpu_layers={config.gpu_layers}, flash_attn off, f16 KV; "
          f"median of {args.rounds} interleaved rounds; llama-cpp-python "
          f"{last[paths[0]][0].llama_cpp_version}\n")
    rows: list[tuple[object, ...]] = [("model", "(a) dry run child", "(b) real load child", "(c) estimate",
                                       "a/b")]
    for path in paths:
        a, b, c = (statistics.median(times[path, k]) for k in "abc")
        rows.append((models[path].name, f"{a:.2f} s", f"{b:.2f} s", f"{c * 1e3:.3f} ms", f"{a / b:.2f}"))
    print(table(rows))

    for path in paths:
        dry, real, est = last[path]
        dparts, eparts = dry_parts(dry), estimate_parts(est)
        rows = [("MiB", "dry run", "real load (logged)", "estimate", "dry/real", "est/real")]
        for side in ("vram", "ram"):
            for part in ("weights", "kv", "compute", "overhead"):
                d, r, e = dparts.get((side, part), 0.0), real.get((side, part), 0.0), eparts[side, part]
                if d or r or e:
                    label = "compute+output" if part == "compute" else part
                    rows.append((f"{side} {label}", f"{d:.1f}", f"{r:.1f}", f"{e:.1f}", ratio(d, r),
                                 ratio(e, r)))
            d = sum(v for (s, _), v in dparts.items() if s == side)
            r = sum(v for (s, _), v in real.items() if s == side)
            e = sum(v for (s, _), v in eparts.items() if s == side)
            rows.append((f"{side} total", f"{d:.1f}", f"{r:.1f}", f"{e:.1f}", ratio(d, r), ratio(e, r)))
        print(f"\n{models[path].name} (dry run: {', '.join(dry.devices)}; weights by {dry.weights_by}; "
              f"file weights {dry.model_mb:.1f} MiB)\n")
        print(table(rows))


if __name__ == "__main__":
    main()
