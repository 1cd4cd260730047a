"""`import zwaif_fallback` in a cold process, against a bare interpreter and pydantic alone.

Target: under 0.3 s, and none of torch, transformers, gradio, llama_cpp, pynvml loaded.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

from _common import python, summary, table, time_process

HEAVY = ("torch", "transformers", "gradio", "llama_cpp", "pynvml", "GPUtil")


def main(runs: int = 15) -> None:
    bare = time_process(python("-c", "pass"), runs=runs)
    pydantic = time_process(python("-c", "import pydantic_settings"), runs=runs)
    ours = time_process(python("-c", "import zwaif_fallback"), runs=runs)
    facade = time_process(python("-c", "from zwaif_fallback import FallbackManager"), runs=runs)
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys; from zwaif_fallback import FallbackManager; "
                               f"print([m for m in {HEAVY!r} if m in sys.modules])"],
        capture_output=True, text=True, check=True).stdout.strip()
    cost = statistics.median(ours) - statistics.median(bare)
    print(table([
        ("process", "time"),
        ("python -c pass (baseline)", summary(bare)),
        ("import pydantic_settings", summary(pydantic)),
        ("import zwaif_fallback", summary(ours)),
        ("from zwaif_fallback import FallbackManager", summary(facade)),
    ]))
    print(f"\nimport cost over a bare interpreter: {cost * 1000:.1f} ms (target < 300 ms)")
    facade_cost = statistics.median(facade) - statistics.median(bare)
    print(f"FallbackManager (settings, catalog, fit, failover) over a bare interpreter: "
          f"{facade_cost * 1000:.1f} ms, of which pydantic-settings alone "
          f"{(statistics.median(pydantic) - statistics.median(bare)) * 1000:.1f} ms")
    print(f"ratio of the FallbackManager import to pydantic_settings alone: "
          f"{statistics.median(facade) / statistics.median(pydantic):.2f}x")
    print(f"heavy modules loaded: {loaded}")


if __name__ == "__main__":
    main()
