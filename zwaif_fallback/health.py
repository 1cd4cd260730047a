"""Scores: how good a model is for this machine, and how healthy the whole system is.

Pure functions over data the manager gathers (fit verdicts, benchmark results,
probes, breaker states, recent attempts); nothing here loads, switches or reads.

Model score (0-100), quality first::

    score = 100 * (0.60 * quality + 0.25 * speed + 0.15 * headroom)

* quality: the benchmark's quality_score (perplexity and instruction checks, 0-1).
  Without a benchmark, a prior from the parameter count (0.2 for 100M, rising
  with log2 of the size, capped at 0.6), so a measured model beats a guess.
* speed: generation tokens/s over 20 (a comfortable reading pace), capped at 1.
  Without a benchmark: 0.9 on the GPU, 0.5 partly offloaded, 0.3 on the CPU.
* headroom: 1 - needed / available memory where the model runs.
* A model whose quality is below 0.15 (it writes garbage) scores half; an
  incompatible model scores 0.

Health score: the weighted mean of the factors below, each 0-100, with status
bands 80-100 Excellent, 60-79 Good, 40-59 Fair, 0-39 Poor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from ._model import Model
from .bench import BenchmarkResult
from .fit import Compatibility
from .hardware import SystemStatus
from .model_info import ModelInfo

__all__ = [
    "Factor",
    "HealthInputs",
    "HealthReport",
    "Optimization",
    "RankEntry",
    "health_report",
    "model_score",
    "rank_models",
    "status_band",
]

Status = Literal["Excellent", "Good", "Fair", "Poor"]
WEIGHTS = {"vram": 0.20, "model": 0.20, "system": 0.15, "gpu": 0.10, "primary": 0.15,
           "errors": 0.10, "speed_trend": 0.10}
GARBAGE_QUALITY = 0.15
READING_PACE_TPS = 20.0


class RankEntry(Model):
    model: str
    score: float
    compatible: bool
    reason: str
    verdict: str = "none"
    measured: bool = False


class Optimization(Model):
    selected: str | None
    switched: bool
    ranking: list[RankEntry]
    reason: str = ""


class Factor(Model):
    score: int
    weight: float
    detail: str


class HealthReport(Model):
    score: int
    status: Status
    factors: dict[str, Factor]
    current_model: str | None
    optimal_model: str | None
    recommendations: list[str] = Field(default_factory=list)


def status_band(score: float) -> Status:
    if score >= 80:
        return "Excellent"
    if score >= 60:
        return "Good"
    if score >= 40:
        return "Fair"
    return "Poor"


def _prior_quality(model: ModelInfo) -> float:
    params = model.parameters or 0
    if params <= 0:
        return 0.2
    return min(max(0.2 + 0.08 * math.log2(params / 1e8), 0.2), 0.6)


def model_score(model: ModelInfo, fit: Compatibility, bench: BenchmarkResult | None) -> RankEntry:
    """Score one model from its fit verdict and (when there is one) its latest benchmark."""
    if not fit.compatible:
        return RankEntry(model=model.name, score=0.0, compatible=False, reason=fit.reason,
                         verdict=fit.verdict)
    measured = bench is not None and bench.ok and bench.quality_score is not None
    if measured and bench is not None:
        quality = bench.quality_score or 0.0
        speed = min((bench.gen_tps or 0.0) / READING_PACE_TPS, 1.0)
        why = f"quality {quality:.2f} and {bench.gen_tps or 0:.0f} tokens/s measured"
    else:
        quality = _prior_quality(model)
        speed = {"gpu": 0.9, "partial": 0.5}.get(fit.verdict, 0.3)
        why = "not benchmarked yet: quality guessed from its size"
    if fit.verdict == "cpu":
        need, have = fit.ram_mb, fit.available_ram_mb
    else:
        need, have = fit.vram_mb, fit.available_vram_mb
    headroom = min(max(1.0 - need / have, 0.0), 1.0) if have > 0 else 0.0
    score = 100.0 * (0.60 * quality + 0.25 * speed + 0.15 * headroom)
    if measured and quality < GARBAGE_QUALITY:
        score /= 2
        why += "; its answers fail the quality checks"
    return RankEntry(model=model.name, score=round(score, 1), compatible=True,
                     reason=f"{fit.verdict}: {why}", verdict=fit.verdict, measured=measured)


def rank_models(candidates: Sequence[tuple[ModelInfo, Compatibility, BenchmarkResult | None]]
                ) -> list[RankEntry]:
    """Every candidate scored, best first (incompatible ones last, with their reason)."""
    entries = [model_score(m, fit, bench) for m, fit, bench in candidates]
    return sorted(entries, key=lambda e: (not e.compatible, -e.score, e.model))


@dataclass
class HealthInputs:
    """What the manager gathered for one health report."""

    status: SystemStatus
    ranking: list[RankEntry]
    current: ModelInfo | None
    current_fit: Compatibility | None
    primary_configured: bool
    primary_breaker: str | None  # "closed" | "half_open" | "open" | None
    recent_attempts: list[dict[str, Any]] = field(default_factory=list)  # the last hour
    speed_history: list[float] = field(default_factory=list)  # current model's gen_tps, newest first
    lower_ctx_fits: int | None = None  # an n_ctx at which the current model would fit the GPU
    full_gpu_mb: float | None = None  # VRAM the current model needs fully offloaded


def health_report(inputs: HealthInputs) -> HealthReport:
    """The health score, its factors and what to do about the weak ones."""
    factors: dict[str, Factor] = {}
    advice: list[str] = []
    status, ranking = inputs.status, inputs.ranking
    optimal = next((e for e in ranking if e.compatible), None)
    current_entry = next((e for e in ranking if inputs.current and e.model == inputs.current.name),
                         None)

    def add(name: str, score: float, detail: str) -> None:
        factors[name] = Factor(score=int(round(min(max(score, 0), 100))), weight=WEIGHTS[name],
                               detail=detail)

    if status.gpus:
        free = status.vram_free_mb / max(status.vram_total_mb, 1)
        add("vram", 100 * min(free / 0.3, 1.0),
            f"{status.vram_free_mb / 1024:.1f} of {status.vram_total_mb / 1024:.1f} GiB VRAM free "
            f"({status.vram_source})")
        add("gpu", 100, f"{len(status.gpus)} GPU(s): {', '.join(g.name for g in status.gpus)}")
    else:
        add("vram", 50, "no GPU: VRAM does not apply, local models use system RAM")
        add("gpu", 30, "no GPU found: local models run on the CPU, slower")
        advice.append("No GPU was found: local answers run on the CPU. Keep to small models "
                      "(about 1B parameters or less) for quick replies.")

    if inputs.current is None:
        add("model", 40, "no local model is loaded yet")
        if optimal:
            advice.append(f"Load a local fallback model now so the first failover is quick: "
                          f"{optimal.model} scores best here ({optimal.score:.0f}).")
    elif optimal is None or current_entry is None or optimal.model == inputs.current.name:
        add("model", 100 if current_entry and current_entry.compatible else 30,
            f"{inputs.current.name} is the best model for this machine"
            if current_entry and current_entry.compatible else f"{inputs.current.name} does not fit now")
    else:
        ratio = current_entry.score / optimal.score if optimal.score else 0.0
        add("model", 100 * ratio, f"{inputs.current.name} scores {current_entry.score:.0f}; "
                                  f"{optimal.model} would score {optimal.score:.0f}")
        advice.append(f"Switch to {optimal.model} (score {optimal.score:.0f} against "
                      f"{current_entry.score:.0f} for {inputs.current.name}): {optimal.reason}.")

    fit = inputs.current_fit
    if fit is not None and status.gpus and fit.verdict in ("partial", "cpu", "none"):
        alternative = next((e for e in ranking if e.verdict == "gpu" and e.compatible), None)
        if inputs.full_gpu_mb:
            need = f"{fit.model} needs {inputs.full_gpu_mb / 1024:.1f} GiB on the GPU"
        else:
            need = f"{fit.model} does not fit the GPU"
        options = []
        if alternative is not None:
            options.append(f"use {alternative.model}, which fits entirely")
        if inputs.lower_ctx_fits:
            options.append(f"lower n_ctx to {inputs.lower_ctx_fits}")
        if not options:
            options.append("close other programs that use the GPU, or keep running on the CPU")
        advice.append(f"{need}, {status.vram_free_mb / 1024:.1f} GiB free: " + " or ".join(options)
                      + ".")

    ram_free = status.ram_available_mb / max(status.ram_total_mb, 1)
    add("system", 50 * min(ram_free / 0.25, 1.0) + 50 * (1 - status.cpu_percent / 100),
        f"{status.ram_available_mb / 1024:.1f} of {status.ram_total_mb / 1024:.1f} GiB RAM free, "
        f"CPU {status.cpu_percent:.0f}% busy on {status.cpu_count} cores")
    if ram_free < 0.15:
        advice.append(f"Only {status.ram_available_mb / 1024:.1f} GiB of RAM is free: close other "
                      "programs or use a smaller quantization.")
    if status.cpu_percent > 85:
        advice.append(f"The CPU is {status.cpu_percent:.0f}% busy: CPU generation will be slow.")

    primary = [a for a in inputs.recent_attempts if a.get("source") == "primary"]
    failed = [a for a in primary if not a.get("ok")]
    if not inputs.primary_configured:
        add("primary", 60, "no primary API configured: every answer is local")
    elif inputs.primary_breaker == "open":
        add("primary", 10, "the primary API's circuit breaker is open: it failed repeatedly")
        advice.append("The main API is failing and skipped for now; check that its server is "
                      "running and reachable (zwaif-fallback settings shows primary_url).")
    elif inputs.primary_breaker == "half_open":
        add("primary", 40, "the primary API is being probed after failures")
    else:
        rate = len(failed) / len(primary) if primary else 0.0
        add("primary", 100 * (1 - rate), f"{len(failed)} of {len(primary)} primary requests failed "
                                         "in the last hour" if primary else "no primary requests "
                                         "in the last hour")
        if rate > 0.2:
            advice.append(f"{rate:.0%} of requests to the main API failed in the last hour; raise "
                          "the timeout or check the server's load.")

    errors = [a for a in inputs.recent_attempts if not a.get("ok")]
    add("errors", 100 - 10 * len(errors),
        f"{len(errors)} failed attempt{'' if len(errors) == 1 else 's'} in the last hour")

    history = inputs.speed_history
    if len(history) >= 2:
        latest, earlier = history[0], sum(history[1:]) / len(history[1:])
        trend = latest / earlier if earlier else 1.0
        add("speed_trend", 100 * min(trend / 0.95, 1.0),
            f"latest {latest:.1f} tokens/s against {earlier:.1f} before")
        if trend < 0.8:
            advice.append(f"Generation slowed from {earlier:.1f} to {latest:.1f} tokens/s: another "
                          "program may be using the GPU or CPU.")
    else:
        add("speed_trend", 70, "not enough benchmarks of the current model to see a trend")

    total = sum(f.score * f.weight for f in factors.values()) / sum(f.weight for f in factors.values())
    score = int(round(total))
    return HealthReport(score=score, status=status_band(score), factors=factors,
                        current_model=inputs.current.name if inputs.current else None,
                        optimal_model=optimal.model if optimal else None, recommendations=advice)
