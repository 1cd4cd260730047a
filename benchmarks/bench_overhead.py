"""Streaming overhead: manager.stream_chat on SmolLM2 against llama-cpp-python's own
create_chat_completion(stream=True), same model, prompt and seed, in the same run.

Both sides reset the context before each run (full prompt evaluation), and the
runs alternate so that machine noise hits both alike. Target: ratio >= 0.97.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import table

from zwaif_fallback import FallbackManager, FallbackSettings

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
MAX_TOKENS, SEED, RUNS = 160, 42, 7


def timed(stream) -> tuple[int, float, float]:
    """(pieces, seconds to the first piece, seconds from the first piece to the last)."""
    start = time.perf_counter()
    first = last = start
    n = 0
    for _ in stream:
        last = time.perf_counter()
        if n == 0:
            first = last
        n += 1
    return n, first - start, last - first


def main() -> None:
    from llama_cpp import Llama

    from zwaif_fallback.backends.llama_cpp import LlamaCppBackend

    work = Path(tempfile.mkdtemp())
    settings = FallbackSettings(models_dir=work / "models", scan_system_stores=False, keep_alive=0,
                                settings_file=work / "s.json", n_ctx=2048)
    manager = FallbackManager(settings)
    model = next(m for m in manager.discover_models() if m.source == "bundled")
    manager.switch_model(model.name, persist=False)
    threads = LlamaCppBackend("probe", model.path).n_threads  # the same threads on both sides
    raw = Llama(model.path, n_ctx=2048, n_gpu_layers=0, n_threads=threads, verbose=False)

    def ours():
        return manager.stream_chat(PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, seed=SEED)

    def theirs():
        raw.reset()
        return (c for c in raw.create_chat_completion(PROMPT, max_tokens=MAX_TOKENS, temperature=0.0,
                                                      seed=SEED, stream=True)
                if c["choices"][0]["delta"].get("content"))

    timed(ours())
    timed(theirs())  # warm-up both
    rows: dict[str, list[tuple[int, float, float]]] = {"ours": [], "raw": []}
    for _ in range(RUNS):
        rows["raw"].append(timed(theirs()))
        rows["ours"].append(timed(ours()))
    manager.close()

    def rate(samples, decode_only: bool) -> float:
        values = [(n - 1) / d if decode_only else n / (t + d) for n, t, d in samples]
        return statistics.median(values)

    out = [("", "tokens", "TTFT (ms)", "decode tok/s", "end-to-end tok/s")]
    for name, label in (("raw", "llama-cpp-python create_chat_completion (baseline)"),
                        ("ours", "manager.stream_chat")):
        samples = rows[name]
        out.append((label, samples[0][0], f"{statistics.median(s[1] for s in samples) * 1000:.0f}",
                    f"{rate(samples, True):.1f}", f"{rate(samples, False):.1f}"))
    print(table(out))
    print(f"\nmedian of {RUNS} alternating runs, {MAX_TOKENS} max tokens, seed {SEED}, "
          f"{threads} threads")
    print(f"ratio decode tok/s: {rate(rows['ours'], True) / rate(rows['raw'], True):.3f}; "
          f"end-to-end: {rate(rows['ours'], False) / rate(rows['raw'], False):.3f} (target >= 0.97)")
    if rows["ours"][0][0] != rows["raw"][0][0]:
        print("note: the two sides produced a different number of pieces", file=sys.stderr)


if __name__ == "__main__":
    main()
