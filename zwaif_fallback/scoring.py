"""Model scores: how good a model is for this machine, and the ranking they make.

A pure function of a model's fit verdict and its latest benchmark, so that optimize, the
health report and recommend (models not downloaded yet) rank by the same rule; nothing
here loads, switches or reads.

Model score (0-100), quality first::

    score = 100 * (0.60 * quality + 0.25 * speed + 0.15 * headroom)

* quality: the benchmark's quality_score (perplexity and instruction checks, 0-1).
  Without a benchmark, a prior from the parameter count (0.2 for 100M, rising
  with log2 of the size, capped at 0.8 for about 14B): a guess, which a benchmark
  replaces (a measured small model can score below a big one that was not measured).
* speed: generation tokens/s over 20 (a comfortable reading pace), capped at 1.
  Without a benchmark: 0.9 on the GPU, 0.5 partly offloaded, 0.3 on the CPU.
* headroom: 1 - needed / available memory where the model runs.
* A model whose quality is below 0.15 (it writes garbage) scores half; an
  incompatible model scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._model import Model
from .bench import BenchmarkResult
from .fit import Compatibility
from .model_info import ModelInfo

__all__ = ["Optimization", "RankEntry", "model_score", "rank_models"]

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


def _prior_quality(model: ModelInfo) -> float:
    """Quality guessed from the size before a benchmark says: 0.2 at 100M parameters, +0.08 a
    doubling, up to 0.8 (about 14B), so that bigger models keep ranking ahead up to the sizes
    a consumer GPU holds; measured quality (0 to 1) replaces it."""
    params = model.parameters or 0
    if params <= 0:
        return 0.2
    return min(max(0.2 + 0.08 * math.log2(params / 1e8), 0.2), 0.8)


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
