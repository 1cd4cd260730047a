"""What llama.cpp's CPU threads waiting passively costs and saves, on an idle and a busy machine.

llama-cpp-python's CPU backend runs on OpenMP (libgomp): between the steps of a token its
threads wait for each other, spinning ~300,000 times first by default. zwaif-fallback loads
llama.cpp with ``OMP_WAIT_POLICY=PASSIVE`` (they sleep at once; ``ggml_devices``). This
measures SmolLM2's generation and prompt tokens/s with both policies, in fresh processes
(libgomp reads the policy once, when it is loaded), by llama.cpp's own perf counters, with
the backend's threads (the physical cores), on the same prompt and greedy sampler:

- idle: nothing else runs;
- busy: as many CPU-bound processes as there are cores run beside it (a host's speech
  recognition, a game), at the same priority.

Runs are interleaved (policy by policy, round by round) and medians reported, since these
machines drift from run to run. Run: ``.venv/bin/python benchmarks/bench_omp_wait.py [ROUNDS]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from _common import table

from zwaif_fallback.backends.llama_cpp import _physical_cores
from zwaif_fallback.bench import DEFAULT_PROMPT
from zwaif_fallback.ggml_devices import OPENMP_SPINS
from zwaif_fallback.locations import bundled_models

SMOLLM2 = str(next(bundled_models()).path)

MAX_TOKENS = 48
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5

#: one child: load, warm up, one greedy answer; prints llama.cpp's own rates
CHILD = """
import json, sys
import llama_cpp
llm = llama_cpp.Llama(sys.argv[4], n_ctx=1024, n_gpu_layers=0, n_threads=int(sys.argv[1]),
                      verbose=False)
messages = [{"role": "user", "content": sys.argv[2]}]
llm.create_chat_completion(messages, max_tokens=4, temperature=0.0)
llm.reset()
llama_cpp.llama_perf_context_reset(llm.ctx)
llm.create_chat_completion(messages, max_tokens=int(sys.argv[3]), temperature=0.0, seed=1)
perf = llama_cpp.llama_perf_context(llm.ctx)
print(json.dumps({"gen_tps": perf.n_eval / (perf.t_eval_ms / 1000),
                  "prompt_tps": perf.n_p_eval / (perf.t_p_eval_ms / 1000)}))
"""


#: how the threads wait: libgomp's default, fewer spins, none
POLICIES = {"spin 300000 (default)": {}, "spin 10000 (ours)": {"GOMP_SPINCOUNT": str(OPENMP_SPINS)},
            "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
BASELINE = "spin 300000 (default)"
#: the machine: how many CPU-bound processes run beside the measured one
LOADS: dict[str, int] = {}


def run_child(policy: dict[str, str]) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(policy)
    out = subprocess.run([sys.executable, "-c", CHILD, str(_physical_cores()), DEFAULT_PROMPT,
                          str(MAX_TOKENS), SMOLLM2], env=env, capture_output=True, text=True, check=True,
                         timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def busy(n: int) -> Iterator[None]:
    """``n`` CPU-bound processes beside the measured one, for as long as the block runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def main() -> None:
    cores = _physical_cores()
    LOADS.update({"idle": 0, f"busy: {cores} others": cores, f"busy: {3 * cores} others": 3 * cores})
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(ROUNDS):
        for load, spinners in LOADS.items():
            with busy(spinners):
                for name, policy in POLICIES.items():
                    results.setdefault((load, name), []).append(run_child(policy))
    rows: list[list[object]] = [["machine", "threads wait", "gen tok/s", "prompt tok/s", "gen ratio"]]
    for load in LOADS:
        base = statistics.median(r["gen_tps"] for r in results[(load, BASELINE)])
        for name in POLICIES:
            runs = results[(load, name)]
            gen = statistics.median(r["gen_tps"] for r in runs)
            prompt = statistics.median(r["prompt_tps"] for r in runs)
            rows.append([load, name, f"{gen:.1f}", f"{prompt:.1f}", f"{gen / base:.2f}x"])
    print(f"SmolLM2-135M Q4_1, {cores} threads, {MAX_TOKENS} tokens greedy, medians of {ROUNDS} "
          "interleaved fresh processes")
    print(table(rows))


if __name__ == "__main__":
    main()
