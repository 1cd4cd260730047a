"""Helpers shared by the benchmark scripts: timing cold processes, printing tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def time_process(args: Sequence[str], *, runs: int, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> list[float]:
    """Wall-clock seconds of ``runs`` fresh processes (one unmeasured warm-up first)."""
    full_env = dict(os.environ, **(env or {}))
    times = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(list(args), check=True, capture_output=True, env=full_env, cwd=cwd)
        if i:
            times.append(time.perf_counter() - start)
    return times


def python(*code: str) -> list[str]:
    return [sys.executable, *code]


def summary(times: Sequence[float]) -> str:
    spread = statistics.stdev(times) if len(times) > 1 else 0.0
    return f"median {statistics.median(times) * 1000:7.1f} ms (sd {spread * 1000:5.1f}, n={len(times)})"


def table(rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
