"""The health of the whole system: one score, its factors, and what to do about the weak ones.

A pure function over data the manager gathers (probes, the model ranking, breaker states,
recent attempts, history's state); nothing here loads, switches or reads. The models'
own scores are scoring.py's.

Health score: the weighted mean of the factors below, each 0-100, with status
bands 80-100 Excellent, 60-79 Good, 40-59 Fair, 0-39 Poor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pydantic import Field

from ._model import Model
from .backends.ollama import ollama_root
from .bench import BenchmarkResult
from .fit import Compatibility
from .hardware import SystemStatus
from .model_info import ModelInfo
from .monitor import MetricSummary, Sample, summarize
from .routing import HOST_PREFIX
from .scoring import Optimization, RankEntry
from .units import gib, size_text

__all__ = [
    "Factor",
    "HealthInputs",
    "HealthReport",
    "Optimization",
    "PerformanceStats",
    "health_report",
    "performance_stats",
    "status_band",
]

Status = Literal["Excellent", "Good", "Fair", "Poor"]
WEIGHTS = {"vram": 0.20, "model": 0.20, "system": 0.15, "gpu": 0.10, "primary": 0.15,
           "errors": 0.10, "speed_trend": 0.10}


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



@dataclass
class HealthInputs:
    """What the manager gathered for one health report."""

    status: SystemStatus
    ranking: list[RankEntry]
    current: ModelInfo | None
    current_fit: Compatibility | None
    primary_configured: bool
    primary_breaker: str | None  # "closed" | "half_open" | "open" | None
    primary_name: str = ""  # its URL, or ``host:<name>`` for a host's own API call
    ollamas_v1_primary: str = ""  # the primary's URL when it is Ollama's /v1 (``is_ollamas_v1``)
    recent_attempts: list[dict[str, Any]] = field(default_factory=list)  # the last hour
    #: the primary's (ok, failed) requests of the last hour, straight-through ones included;
    #: None: unknown, and the rate is read from ``recent_attempts``
    primary_counts: tuple[int, int] | None = None
    remotes: int = 0  # servers in remote_urls: they answer when the main API does not
    models_dir: str = ""  # where a local model is looked for (named when none is found)
    history_problem: str | None = None  # why history is not being saved now (Store.problem)
    history_notices: list[str] = field(default_factory=list)  # what happened to it (moved aside)
    preferred_problem: str | None = None  # why preferred_model cannot be the fallback (a typo)
    speed_history: list[float] = field(default_factory=list)  # current model's gen_tps, newest first
    lower_ctx_fits: int | None = None  # an n_ctx at which the current model would fit the GPU
    full_gpu_mb: float | None = None  # VRAM the current model needs fully offloaded
    vram_margin_mb: float = 512.0  # settings.vram_margin_mb: what every load leaves free
    own_pid: int = field(default_factory=os.getpid)

    @property
    def optimal(self) -> RankEntry | None:
        return next((e for e in self.ranking if e.compatible), None)

    @property
    def nothing_answers(self) -> bool:
        """No main API, no remote server, and no local model that fits: every chat fails."""
        return (not self.primary_configured and not self.remotes and self.current is None
                and self.optimal is None)

    def no_local_model(self) -> str:
        """Why no local model can answer, in words: none found, or the best one's reason."""
        if not self.ranking:
            return f"no local model was found (put a .gguf in {self.models_dir or 'the models folder'})"
        return f"no local model fits this machine ({self.ranking[0].model}: {self.ranking[0].reason})"


class _Finding(NamedTuple):
    """One factor of the health score and what to do about it."""

    name: str
    factor: Factor
    advice: list[str]


def _finding(name: str, score: float, detail: str, *advice: str) -> _Finding:
    factor = Factor(score=int(round(min(max(score, 0), 100))), weight=WEIGHTS[name], detail=detail)
    return _Finding(name, factor, list(advice))


def health_report(inputs: HealthInputs) -> HealthReport:
    """The health score, its factors and what to do about the weak ones."""
    findings = [check(inputs) for check in FACTORS]
    factors = {f.name: f.factor for f in findings}
    total = sum(f.score * f.weight for f in factors.values()) / sum(f.weight for f in factors.values())
    score = int(round(total))
    if inputs.nothing_answers:  # the other factors may look fine; no chat can be answered
        score = min(score, 20)
    optimal = inputs.optimal
    return HealthReport(score=score, status=status_band(score), factors=factors,
                        current_model=inputs.current.name if inputs.current else None,
                        optimal_model=optimal.model if optimal else None,
                        recommendations=[line for f in findings for line in f.advice])


def _vram(inputs: HealthInputs) -> _Finding:
    status = inputs.status
    if not status.gpus:
        return _finding("vram", 50, "no GPU: local models use system RAM, slower than VRAM")
    if status.vram_free_mb < inputs.vram_margin_mb * len(status.gpus):
        return _contended(inputs)
    free = status.vram_free_mb / max(status.vram_total_mb, 1)
    return _finding("vram", 100 * min(free / 0.3, 1.0),
                    f"{gib(status.vram_free_mb)} of {gib(status.vram_total_mb)} GiB VRAM free "
                    f"({status.vram_source})")


def _contended(inputs: HealthInputs) -> _Finding:
    """Less VRAM is free than a load leaves: the main LLM and the fallback crowd each other."""
    status = inputs.status
    holders = sorted((p for g in status.gpus for p in g.processes), key=lambda p: -(p.used_mb or 0))
    named = [(f"this process (pid {p.pid})" if p.pid == inputs.own_pid else f"{p.name} (pid {p.pid})")
             + (f", {size_text(p.used_mb)}" if p.used_mb is not None else "") for p in holders[:3]]
    who = f"; held by {', '.join(named)}" if named else ""
    fit = inputs.current_fit
    on_gpu = fit is not None and fit.gpu_layers > 0
    return _finding(
        "vram", 10,
        f"the GPU is contended: {size_text(status.vram_free_mb)} free, under the "
        f"{size_text(inputs.vram_margin_mb)} margin{who}",
        "The GPU is nearly full" + (f" ({named[0]} holds the most)" if named else "") + ". "
        + (f"{fit.model} keeps its place until its answer ends; " if on_gpu and fit else "")
        + "the next load plans against what is free then and steps down to fewer GPU layers "
        "or the CPU. To keep the fallback on the GPU, give the main LLM less VRAM (a smaller "
        "model or context) or close other programs that use the GPU.")


def _gpu(inputs: HealthInputs) -> _Finding:
    gpus = inputs.status.gpus
    if gpus:
        return _finding("gpu", 100, f"{len(gpus)} GPU(s): {', '.join(g.name for g in gpus)}")
    return _finding("gpu", 30, "no GPU found: local models run on the CPU, slower",
                    "No GPU was found: local answers run on the CPU. Keep to small models "
                    "(about 1B parameters or less) for quick replies.")


def _model(inputs: HealthInputs) -> _Finding:
    """The current model against the best one here, and what to do when it does not fit the GPU."""
    optimal, current = inputs.optimal, inputs.current
    offload = _offload_advice(inputs)
    if inputs.preferred_problem:  # the model a person chose is not the one that answers
        offload.insert(0, f"The model you chose does not answer: {inputs.preferred_problem}. Set "
                          "preferred_model to a model listed by `zwaif-fallback models` (or pick "
                          "one in the Management tab), or clear it.")
    if current is None and optimal is None:
        return _finding("model", 0, inputs.no_local_model(), *offload)
    if current is None:
        load = [f"No local model is loaded in this process yet, so the first failover waits for "
                f"{optimal.model} (the best here, {optimal.score:.0f}) to load. To load it now, "
                "press ⚡ Auto-Optimize System in the tabs of the running serve or UI (a CLI "
                "command's process holds no model)."] if optimal else []
        return _finding("model", 40, "no local model is loaded yet", *load, *offload)
    entry = next((e for e in inputs.ranking if e.model == current.name), None)
    if optimal is None or entry is None or optimal.model == current.name:
        fits = entry is not None and entry.compatible
        return _finding("model", 100 if fits else 30,
                        f"{current.name} is the best model for this machine" if fits
                        else f"{current.name} does not fit now", *offload)
    ratio = entry.score / optimal.score if optimal.score else 0.0
    return _finding("model", 100 * ratio,
                    f"{current.name} scores {entry.score:.0f}; {optimal.model} would score "
                    f"{optimal.score:.0f}",
                    f"Switch to {optimal.model} (score {optimal.score:.0f} against "
                    f"{entry.score:.0f} for {current.name}): {optimal.reason}.", *offload)


def _offload_advice(inputs: HealthInputs) -> list[str]:
    """What to do when the current model runs partly or wholly off the GPU."""
    fit, status = inputs.current_fit, inputs.status
    if fit is None or not status.gpus or fit.verdict not in ("partial", "cpu", "none"):
        return []
    alternative = next((e for e in inputs.ranking if e.verdict == "gpu" and e.compatible), None)
    if inputs.full_gpu_mb:
        need = f"{fit.model} needs {size_text(inputs.full_gpu_mb, smallest='GiB')} on the GPU"
    else:
        need = f"{fit.model} does not fit the GPU"
    options = []
    if alternative is not None:
        options.append(f"use {alternative.model}, which fits entirely")
    if inputs.lower_ctx_fits:
        options.append(f"lower n_ctx to {inputs.lower_ctx_fits}")
    if not options:
        options.append("close other programs that use the GPU, or keep running on the CPU")
    return [f"{need}, {gib(status.vram_free_mb)} GiB free: " + " or ".join(options) + "."]


def _system(inputs: HealthInputs) -> _Finding:
    status = inputs.status
    ram_free = status.ram_available_mb / max(status.ram_total_mb, 1)
    advice = []
    if ram_free < 0.15:
        advice.append(f"Only {gib(status.ram_available_mb)} GiB of RAM is free: close other "
                      "programs or use a smaller quantization.")
    if status.cpu_percent > 85:
        advice.append(f"The CPU is {status.cpu_percent:.0f}% busy: CPU generation will be slow.")
    return _finding("system", 50 * min(ram_free / 0.25, 1.0) + 50 * (1 - status.cpu_percent / 100),
                    f"{gib(status.ram_available_mb)} of {gib(status.ram_total_mb)} GiB RAM free, "
                    f"CPU {status.cpu_percent:.0f}% busy on {status.cpu_count} cores", *advice)


def _primary(inputs: HealthInputs) -> _Finding:
    finding = _primary_state(inputs)
    if inputs.ollamas_v1_primary:
        return finding._replace(advice=[*finding.advice, (
            f"The main API is Ollama through its OpenAI-compatible /v1 ({inputs.ollamas_v1_primary}), "
            "which drops num_ctx, top_k, min_p, repeat_penalty and keep_alive: set "
            f"FALLBACK_PRIMARY_API=ollama, and its own API at {ollama_root(inputs.ollamas_v1_primary)} "
            "is used, which takes them.")])
    return finding


def _primary_state(inputs: HealthInputs) -> _Finding:
    if not inputs.primary_configured and inputs.nothing_answers:
        return _finding("primary", 0, "no primary API configured, and " + inputs.no_local_model(),
                        "Nothing can answer a chat: no main API is set, no remote server, and "
                        + inputs.no_local_model() + ". Set primary_url, or add a model that fits "
                        "(zwaif-fallback recommend lists some).")
    if not inputs.primary_configured:
        return _finding("primary", 60, "no primary API configured: every answer is local"
                        if not inputs.remotes else "no primary API configured: remote servers "
                        "and local models answer")
    if inputs.primary_breaker == "open":
        where = (f"the host's own API call ({inputs.primary_name}) is failing and skipped for now; check "
                 "the LLM server the host talks to (Oobabooga, Ollama): is it running and reachable?"
                 if inputs.primary_name.startswith(HOST_PREFIX) else
                 "The main API is failing and skipped for now; check that its server is running and "
                 "reachable (the Management tab's Main API, or zwaif-fallback settings, shows primary_url).")
        return _finding("primary", 10, "the primary API's circuit breaker is open: it failed repeatedly",
                        where[0].upper() + where[1:])
    if inputs.primary_breaker == "half_open":
        return _finding("primary", 40, "the primary API is being probed after failures")
    # this main API's attempts: those of one set before are no news of it
    primary = [a for a in inputs.recent_attempts
               if a.get("source") == "primary" and a.get("target") == inputs.primary_name]
    failed = [a for a in primary if not a.get("ok")]
    # the counts hold every request; the attempts only those of chats that fell back
    ok, failures = inputs.primary_counts or (len(primary) - len(failed), len(failed))
    total = ok + failures
    rate = failures / total if total else 0.0
    detail = (f"{failures} of {total} primary requests failed in the last hour" if total
              else "no primary requests in the last hour")
    advice = _primary_advice(failed, rate) if rate > 0.2 else []
    return _finding("primary", 100 * (1 - rate), detail, *advice)


def _primary_advice(failed: list[dict[str, Any]], rate: float) -> list[str]:
    """What to do about the main API's failures, by what most of them were: a server that is
    not there wants starting, one that is slow a longer timeout."""
    errors = [str(a.get("error") or "") for a in failed]
    gone = sum("connection refused" in e or "does not resolve" in e for e in errors)
    if gone * 2 > len(errors):
        return [f"{rate:.0%} of requests to the main API failed in the last hour, most of them because "
                "nothing answered at its address: start it, or check primary_url."]
    return [f"{rate:.0%} of requests to the main API failed in the last hour; raise the timeout or "
            "check the server's load."]


def _errors(inputs: HealthInputs) -> _Finding:
    notices = [f"History: {n}." for n in inputs.history_notices]
    if inputs.history_problem:  # failures are not being recorded: "0 failed" would be a guess
        return _finding("errors", 50, f"unknown: history is not being saved ({inputs.history_problem})",
                        f"History is not being saved, so failovers, benchmarks and monitoring "
                        f"are lost: {inputs.history_problem}. Free disk space, make data_dir "
                        "writable, close the program that holds history.sqlite3, or set data_dir "
                        "(FALLBACK_DATA_DIR) to another folder.", *notices)
    errors = [a for a in inputs.recent_attempts if not a.get("ok")]
    return _finding("errors", 100 - 10 * len(errors),
                    f"{len(errors)} failed attempt{'' if len(errors) == 1 else 's'} in the last hour",
                    *notices)


def _speed_trend(inputs: HealthInputs) -> _Finding:
    history = inputs.speed_history
    if len(history) < 2:
        return _finding("speed_trend", 70, "not enough benchmarks of the current model to see a trend")
    latest, earlier = history[0], sum(history[1:]) / len(history[1:])
    trend = latest / earlier if earlier else 1.0
    advice = [f"Generation slowed from {earlier:.1f} to {latest:.1f} tokens/s: another "
              "program may be using the GPU or CPU."] if trend < 0.8 else []
    return _finding("speed_trend", 100 * min(trend / 0.95, 1.0),
                    f"latest {latest:.1f} tokens/s against {earlier:.1f} before", *advice)


#: the factors in the order the report lists them (and their advice)
FACTORS: tuple[Callable[[HealthInputs], _Finding], ...] = (
    _vram, _gpu, _model, _system, _primary, _errors, _speed_trend)


class PerformanceStats(Model):
    """The Health tab's performance summary, in one result."""

    current_model: str | None
    #: the current model's newest benchmark, when that one succeeded
    current_benchmark: BenchmarkResult | None
    benchmarked_models: int  # among the saved runs read
    benchmark_runs: int  # saved runs read, at most ``STATS_RUNS``
    attempts_last_hour: int  # attempts of chats that did not go straight through
    failed_last_hour: int
    background_samples: int
    background_summary: dict[str, MetricSummary]
    recommendations: list[str]


STATS_RUNS = 200


def performance_stats(report: HealthReport, runs: Sequence[BenchmarkResult],
                      attempts: Sequence[dict[str, Any]], samples: Sequence[Sample]) -> PerformanceStats:
    """Summarize the saved benchmark ``runs`` (newest first), the last hour's ``attempts``
    and the background ``samples`` next to a health report."""
    newest: dict[str, BenchmarkResult] = {}
    for run in runs:
        newest.setdefault(run.model, run)
    mine = newest.get(report.current_model) if report.current_model is not None else None
    return PerformanceStats(
        current_model=report.current_model,
        current_benchmark=mine if mine is not None and mine.ok else None,
        benchmarked_models=len(newest), benchmark_runs=len(runs),
        attempts_last_hour=len(attempts),
        failed_last_hour=sum(1 for a in attempts if not a.get("ok")),
        background_samples=len(samples), background_summary=summarize(samples),
        recommendations=report.recommendations)
