"""Z-WAIF's ``API.fallback_api``: speed, ranking, health and monitoring, as its Health tab
reads them.

Each function answers from the default manager in the dict Z-WAIF's web UI reads, and
signals failure as it expects: a dict with ``error`` (``status: "error"`` for the
optimizer). None of them raises.

What differs from Z-WAIF's own module: speed comes from a real benchmark, saved in the
history and reused; the health score is the manager's (VRAM, the model, the system, the
main API, errors and speed; it changes nothing, where Z-WAIF's switched models to find
out); and monitoring really samples VRAM, RAM, CPU and tokens/s in the background.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .fallback_api_models import default_manager, get_available_vram_gb, get_model_info, get_system_info

__all__ = [
    "get_fallback_model_performance_stats",
    "get_fallback_system_health",
    "get_health_recommendations",
    "monitor_fallback_performance",
    "optimize_fallback_model_selection",
]

log = logging.getLogger(__name__)


def _when(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_s))


def get_fallback_model_performance_stats(model_name: str | None = None) -> dict[str, Any]:
    """How fast ``model_name`` (None: the model held now, else the best ranked) answers.

    The newest saved benchmark of that model is used; when there is none, the model is
    benchmarked now (it loads its own copy, which takes a while) and the result saved.

    Returns:
        ``model_name``, ``response_time_seconds``, ``response_length_chars``,
        ``speed_chars_per_second``, ``tokens_per_second``, ``vram_required_gb``,
        ``is_compatible``, ``model_type`` and ``last_tested``; or ``{"error": why}``.
    """
    try:
        manager = default_manager()
        if model_name is None:
            current = manager.current_model
            model_name = current.name if current is not None else manager.optimize(apply=False).selected
        if not model_name:
            return {"error": "no local model can answer on this machine (see get_fallback_system_health)"}
        model_name = manager.find_model(model_name).name
        saved = [row for row in manager.benchmark_history(model_name, limit=5) if row.get("ok")]
        if saved:
            run, at = saved[0], float(saved[0]["at"])
        else:
            result = manager.benchmark(model_name)
            if not result.ok:
                return {"error": f"benchmark of {model_name} failed: {result.error}"}
            run, at = result.model_dump(), time.time()
    except Exception as exc:
        return {"error": str(exc)}
    seconds = float(run.get("response_time_s") or 0.0)
    speed = float(run.get("chars_per_s") or 0.0)
    info = get_model_info(model_name)
    return {"model_name": model_name, "response_time_seconds": seconds,
            "response_length_chars": round(speed * seconds), "speed_chars_per_second": speed,
            "tokens_per_second": float(run.get("gen_tps") or 0.0),
            "vram_required_gb": info["vram_required_gb"], "is_compatible": info["is_compatible"],
            "model_type": info["model_type"], "last_tested": _when(at)}


def optimize_fallback_model_selection() -> dict[str, Any]:
    """Rank the local models and switch to the best one (loading it now).

    Returns:
        ``status`` "success" (``selected_model`` is loaded), "warning" (no model can
        answer here: ``selected_model`` None) or "error" (with ``error``), ``reason``, and
        ``all_models``: each ranked model's ``model``, ``score`` (0-100, higher is better),
        ``compatible``, ``verdict`` (gpu, partial, cpu, none) and ``reason``.
    """
    try:
        optimization = default_manager().optimize(apply=True)
    except Exception as exc:
        return {"status": "error", "error": str(exc)}
    ranking = [{"model": e.model, "score": e.score, "compatible": e.compatible, "verdict": e.verdict,
                "reason": e.reason} for e in optimization.ranking]
    status = "success" if optimization.selected else "warning"
    return {"status": status, "selected_model": optimization.selected, "reason": optimization.reason,
            "all_models": ranking}


def get_fallback_system_health() -> dict[str, Any]:
    """The fallback system's health, scored 0-100; changes nothing.

    Returns:
        ``health_score`` (int), ``health_status`` (Excellent, Good, Fair, Poor),
        ``current_model`` ("None" when no model is held), ``optimal_model``,
        ``available_vram_gb``, ``system_memory_gb``, ``cpu_cores``, ``gpu_available``,
        ``optimization_status`` ("success" when the best model is held, else "warning"),
        ``recommendations`` (what to do, in words) and ``factors`` (each factor's score and
        detail); or ``{"error": why}``.
    """
    try:
        report = default_manager().health()
    except Exception as exc:
        return {"error": str(exc)}
    system = get_system_info()
    optimal = report.optimal_model
    return {"health_score": report.score, "health_status": report.status,
            "current_model": report.current_model or "None", "optimal_model": optimal,
            "available_vram_gb": get_available_vram_gb(),
            "system_memory_gb": system.get("memory_total_gb", 0.0), "cpu_cores": system.get("cpu_cores", 0),
            "gpu_available": system.get("gpu_available", False),
            "optimization_status": "success" if optimal and optimal == report.current_model else "warning",
            "recommendations": list(report.recommendations),
            "factors": {name: {"score": f.score, "detail": f.detail} for name, f in report.factors.items()}}


def get_health_recommendations(health_score: int, available_vram: float, current_model: str,
                               optimal_model: str) -> list[str]:
    """What to do to make the fallback better: the health report's own advice.

    The report measures the VRAM and the models itself, so the arguments only matter when
    it cannot be made: then the advice comes from them.
    """
    try:
        return list(default_manager().health().recommendations)
    except Exception as exc:
        log.warning("no health report (%s): advice from the figures given", exc)
    advice = []
    if optimal_model and current_model != optimal_model:
        advice.append(f"Switch to {optimal_model}: it ranks best on this machine.")
    if available_vram < 2.0:
        advice.append("Less than 2 GiB of VRAM is free: keep to small models, or close programs "
                      "that hold the GPU.")
    if health_score >= 80 and not advice:
        advice.append("The fallback is in good shape.")
    return advice


def monitor_fallback_performance(duration_seconds: int = 60) -> dict[str, Any]:
    """Start sampling VRAM, RAM, CPU, GPU load and tokens/s every second for
    ``duration_seconds`` (10-300), in the background; it returns at once.

    Returns:
        ``start_time``, ``duration_seconds``, ``interval_seconds`` and ``status`` (where to
        read the report); or ``{"error": why}`` (a duration out of range, a session
        already running).
    """
    try:
        manager = default_manager()
        manager.start_monitoring(duration_seconds, 1.0)
        started = manager.monitoring_report().started_at or time.time()
    except Exception as exc:
        return {"error": str(exc)}
    return {"start_time": _when(started), "duration_seconds": duration_seconds, "interval_seconds": 1.0,
            "status": "Monitoring: its report shows in the System Health Monitor tab while it runs, "
                      "and stays in that tab's history"}
