"""The frames the tabs' charts draw: pure functions over the result types, in the long form
a gr.BarPlot or gr.LinePlot takes (one row per bar segment or point, its colour a column).
How a chart mounts and gets its colours on each Gradio is ``compat.plot`` and ``compat.colored``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from zwaif_fallback import Compatibility, MemoryBreakdown
from zwaif_fallback.monitor import Sample

from .format import SAMPLE_LABELS

#: A model's memory in long form, for a bar per place (VRAM, RAM) stacked by part.
MEMORY_COLUMNS = ["memory", "part", "size_mb"]
MEMORY_PARTS = {"weights": "weights_mb", "KV cache": "kv_mb", "compute buffers": "compute_mb",
                "runtime overhead": "overhead_mb"}

MEMORY_METRICS = ("ram_used_mb", "vram_used_mb")
LOAD_METRICS = ("cpu_percent", "gpu_utilization_pct", "tokens_per_s")

def memory_frame(fit: Compatibility | None) -> pd.DataFrame:
    """Where the estimated memory goes, in MiB: each part (weights, KV cache, compute buffers,
    runtime overhead) on VRAM and on RAM, for a bar per place stacked by part. Without a
    ``fit``, every part at zero: the chart mounts with that (see ``compat.plot``)."""
    nothing = MemoryBreakdown()
    places = {"VRAM": fit.vram_breakdown if fit else nothing, "RAM": fit.ram_breakdown if fit else nothing}
    rows = [[place, part, round(getattr(breakdown, field), 1)]
            for place, breakdown in places.items() for part, field in MEMORY_PARTS.items()]
    return pd.DataFrame(rows, columns=MEMORY_COLUMNS)


def speed_chart_frame(results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Generation tokens/s of each model that measured one."""
    rows = [[str(r["model"]), float(r["gen_tps"])] for r in results if r.get("ok") and r.get("gen_tps")]
    return pd.DataFrame(rows, columns=["model", "gen_tps"])


def samples_frame(samples: Iterable[Sample], metrics: Sequence[str]) -> pd.DataFrame:
    """Samples in long form (t_s, value, metric) for a LinePlot coloured by metric."""
    rows = [[s.t_s, float(v), SAMPLE_LABELS[m]] for s in samples for m in metrics
            if (v := getattr(s, m)) is not None]
    return pd.DataFrame(rows, columns=["t_s", "value", "metric"])


def zero_samples_frame(metrics: Sequence[str]) -> pd.DataFrame:
    """Each metric at zero at t_s 0, in the columns ``samples_frame`` gives: what a live chart
    mounts with, typed and with all its colours (see ``compat.plot``)."""
    return pd.DataFrame([[0.0, 0.0, SAMPLE_LABELS[m]] for m in metrics], columns=["t_s", "value", "metric"])


def benchmark_history_frame(history: Iterable[Mapping[str, Any]], *, last: int = 30) -> pd.DataFrame:
    """The last runs, oldest first, each labelled by when it ran (a bar each: one run is visible too)."""
    rows = [[dt.datetime.fromtimestamp(r["at"]).strftime("%m-%d %H:%M:%S"), str(r["model"]),
             float(r["gen_tps"])] for r in history if r.get("ok") and r.get("gen_tps") and r.get("at")]
    return pd.DataFrame(rows[:last][::-1], columns=["run", "model", "gen_tps"])


#: A failover attempt's outcomes, in the order 4.x colours a chart's categories: the first
#: seen red, the second green (4.36.1's palette, which a gr.BarPlot there cannot be given).
OUTCOMES = ("failed", "ok")
OUTCOME_COLORS = {"failed": "#ef4444", "ok": "#22c55e"}  # for Gradios whose plots take a color_map
#: The models' colours in the benchmark history, in turn: vega's own ten (what 6 draws without one).
MODEL_COLORS = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6",
                "#9d755d", "#bab0ac")


def failover_history_frame(attempts: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Attempts counted by target and outcome: a row for each outcome of each target (0 where
    there were none) and the failed ones first, so that failed is red on 4.x too."""
    counts = Counter((str(a.get("target")), "ok" if a.get("ok") else "failed") for a in attempts)
    targets = sorted({target for target, _ in counts})
    rows = [[target, outcome, counts[target, outcome]] for outcome in OUTCOMES for target in targets]
    return pd.DataFrame(rows, columns=["target", "outcome", "attempts"])
