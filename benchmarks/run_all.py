"""Run every benchmark of the project and write one Markdown report.

Each script measures its baseline in the same run and prints figure, baseline and
ratio; this collects them. On a machine with an NVIDIA GPU it adds the GPU
section: NVML against nvidia-smi probe latency (bench_probe_gpu.py) and the
estimator against llama.cpp's real CUDA allocation (bench_fit.py --gpu).

Usage: run_all.py [--out benchmarks/results/report.md] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CPU_SUITE = [
    ("Import cost", ["bench_import.py"]),
    ("Cold `status --json`", ["bench_status.py"]),
    ("Discovery against gguf.GGUFReader", ["bench_discovery.py", "--baseline-files", "2"]),
    ("Memory estimate against llama.cpp (CPU)", ["bench_fit.py"]),
    ("Streaming overhead", ["bench_overhead.py"]),
    ("Failover latency", ["bench_failover.py"]),
    ("Stopping a decode in progress", ["bench_abort.py"]),
    ("Memory held after an unload", ["bench_unload.py"]),
    ("Benchmark accuracy and monitoring cost", ["bench_measure.py"]),
    ("UI responsiveness during Benchmark All", ["bench_ui.py"]),
]
GPU_SUITE = [
    ("GPU probe latency: NVML against nvidia-smi", ["bench_probe_gpu.py"]),
    ("Memory estimate against llama.cpp (GPU)", ["bench_fit.py", "--gpu"]),
]


def has_nvidia_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0


def run(args: list[str], quick: bool) -> tuple[str, float, int]:
    command = [sys.executable, str(HERE / args[0]), *args[1:]]
    if quick and args[0] == "bench_fit.py":
        command.append("--quick")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, timeout=1800)
    return done.stdout.strip() or done.stderr.strip()[-2000:], time.perf_counter() - start, done.returncode


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(HERE / "results" / "report.md"))
    parser.add_argument("--quick", action="store_true", help="fewer estimator configurations")
    options = parser.parse_args()
    suite = CPU_SUITE + (GPU_SUITE if has_nvidia_gpu() else [])
    lines = [f"# zwaif-fallback benchmarks, {time.strftime('%Y-%m-%d %H:%M')}",
             "", f"Machine: {platform.platform()}, Python {platform.python_version()}, "
             f"GPU: {'yes' if has_nvidia_gpu() else 'none'}", ""]
    for title, args in suite:
        print(f"running {title} ...", flush=True)
        output, seconds, code = run(args, options.quick)
        status = "" if code == 0 else f" (exit {code})"
        lines += [f"## {title}{status}", "", f"`{' '.join(args)}`, {seconds:.0f} s", "", "```",
                  output, "```", ""]
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"report written to {out}")


if __name__ == "__main__":
    main()
