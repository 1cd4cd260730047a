"""The measuring side, against its baselines in the same run.

1. Generation tokens/s that ``manager.benchmark`` reports for SmolLM2, against
   llama.cpp's own figure (its perf counters: n_eval / t_eval) for the same model,
   prompt, threads and length, read from llama-cpp-python. Target: within 10%.
2. The CPU a 10 s monitoring session at a 1 s interval costs, against 10 s of an
   idle process: process CPU time (user + system) / wall time. Target: < 2% of a core.
"""

from __future__ import annotations

import resource
import statistics
import tempfile
import time
from pathlib import Path

from _common import table

from zwaif_fallback import FallbackManager, FallbackSettings
from zwaif_fallback.bench import DEFAULT_PROMPT

RUNS = 3
ROUNDS = 5
MAX_TOKENS = 64


def llama_cpp_own_tps(path: str, threads: int) -> float:
    """llama.cpp's eval tokens/s over one load, a warm-up and RUNS generations (median)."""
    import llama_cpp

    llm = llama_cpp.Llama(path, n_ctx=4096, n_gpu_layers=0, n_threads=threads, verbose=False)
    messages = [{"role": "user", "content": DEFAULT_PROMPT}]
    llm.create_chat_completion(messages, max_tokens=8, temperature=0.0)  # warm-up, as ours
    rates = []
    for seed in range(1, RUNS + 1):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        llm.create_chat_completion(messages, max_tokens=MAX_TOKENS, temperature=0.0, seed=seed)
        perf = llama_cpp.llama_perf_context(llm.ctx)
        rates.append(perf.n_eval / (perf.t_eval_ms / 1000.0))
    llm.close()
    return statistics.median(rates)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def monitor_cost(manager: FallbackManager) -> tuple[float, float, int]:
    """(% of a core while monitoring, % of a core while idle, samples taken)."""
    start_cpu, start = cpu_seconds(), time.perf_counter()
    manager.start_monitoring(10, interval_s=1.0)
    manager.wait_monitoring(30)
    busy = (cpu_seconds() - start_cpu) / (time.perf_counter() - start) * 100
    samples = len(manager.monitoring_report().samples)
    start_cpu, start = cpu_seconds(), time.perf_counter()
    threading_event_wait(10.0)
    idle = (cpu_seconds() - start_cpu) / (time.perf_counter() - start) * 100
    return busy, idle, samples


def threading_event_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


def main() -> None:
    work = Path(tempfile.mkdtemp())
    settings = FallbackSettings(models_dir=work / "models", scan_system_stores=False, keep_alive=0,
                                settings_file=work / "s.json", data_dir=work / "data",
                                vram_monitoring=False)
    manager = FallbackManager(settings)
    model = next(m for m in manager.discover_models() if m.source == "bundled")
    from zwaif_fallback.backends.llama_cpp import LlamaCppBackend

    threads = LlamaCppBackend("probe", model.path).n_threads
    ours, theirs = [], []
    for _ in range(ROUNDS):  # alternate, so machine noise falls on both
        ours.append(manager.benchmark(model.name))
        theirs.append(llama_cpp_own_tps(model.path, threads))
    busy, idle, samples = monitor_cost(manager)
    manager.close()

    ours_tps = statistics.median(r.gen_tps for r in ours)
    theirs_tps = statistics.median(theirs)
    print(table([
        ("measure", "value"),
        (f"llama.cpp's own eval tokens/s (baseline, median of {ROUNDS} loads x {RUNS} runs)",
         f"{theirs_tps:.1f}"),
        (f"manager.benchmark gen_tps (median of {ROUNDS} benchmarks x {RUNS} runs)", f"{ours_tps:.1f}"),
        ("ratio", f"{ours_tps / theirs_tps:.3f} (target 0.90-1.10)"),
        ("manager.benchmark stream_tps (pieces/s the reader sees, median)",
         f"{statistics.median(r.stream_tps for r in ours):.1f}"),
        ("idle process, 10 s (baseline)", f"{idle:.2f}% of a core"),
        (f"10 s monitoring at 1 s ({samples} samples)", f"{busy:.2f}% of a core"),
        ("monitoring cost over idle", f"{busy - idle:.2f}% of a core (target < 2%)"),
    ]))
    r = ours[-1]
    print(f"\nlast benchmark: load {r.load_s} s, TTFT {r.ttft_s} s, pp {r.prompt_tps} tok/s, "
          f"gen {r.gen_tps} ± {r.gen_tps_sd} tok/s, RAM +{r.peak_ram_mb} MiB, "
          f"perplexity {r.perplexity}, pass rate {r.pass_rate}, quality {r.quality_score}")


if __name__ == "__main__":
    main()
