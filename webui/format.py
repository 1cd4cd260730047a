"""Turning the manager's typed results into what Gradio shows: Markdown text and DataFrames.

Pure functions over the result types (no manager, no clock), shared by the three tabs.
``failure`` is the one exception: it is where a ``FallbackError`` becomes a toast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gradio as gr
import pandas as pd

from zwaif_fallback import (
    Attempt,
    ChatResult,
    Compatibility,
    FallbackSettings,
    GPUInfo,
    HealthReport,
    JobStatus,
    ModelInfo,
    Optimization,
    PerformanceStats,
    SystemStatus,
)
from zwaif_fallback.fit import layers_text
from zwaif_fallback.health import Factor
from zwaif_fallback.monitor import MetricSummary, saved_session_heading
from zwaif_fallback.scoring import RankEntry
from zwaif_fallback.units import size_text

MODEL_COLUMNS = ["name", "format", "source", "size", "quantization", "context", "fit"]
BENCH_COLUMNS = ["model", "ok", "gen_tps", "prompt_tps", "ttft_s", "load_s", "response_time_s",
                 "peak_ram_mb", "peak_vram_mb", "perplexity", "quality_score", "error"]
ATTEMPT_COLUMNS = ["target", "source", "ok", "latency_s", "tries", "error"]
RANK_COLUMNS = ["model", "score", "compatible", "verdict", "reason"]
GPU_COLUMNS = ["GPU", "name", "free VRAM", "used", "total", "load", "temp"]
FACTOR_COLUMNS = ["factor", "score", "weight", "detail"]
SUMMARY_COLUMNS = ["metric", "min", "mean", "max", "p95"]
SAMPLE_LABELS = {"ram_used_mb": "RAM used (MiB)", "vram_used_mb": "VRAM used (MiB)",
                 "cpu_percent": "CPU (%)", "gpu_utilization_pct": "GPU (%)", "tokens_per_s": "tokens/s"}
VERDICT_ICONS = {"gpu": "🟢", "partial": "🟡", "cpu": "🔵", "none": "🔴"}
STATUS_ICONS = {"Excellent": "🟢", "Good": "🟢", "Fair": "🟡", "Poor": "🔴"}


def element_id(prefix: str, name: str) -> str:
    """The id of one of the tabs' elements: ``prefix`` keeps two copies of the tabs on one page,
    and the host's own elements, apart."""
    return f"{prefix}-{name}"


def failure(exc: Exception, doing: str) -> str:
    """Show ``exc`` as a warning toast and return the same message for an output."""
    gr.Warning(f"{doing} failed: {exc}")
    return f"❌ **{doing} failed:** {exc}"


def settings_problems_markdown(settings: FallbackSettings) -> str:
    """The settings file's problems (``settings.problems``) as a warning; empty when none."""
    if not settings.problems:
        return ""
    return "⚠️ **The settings file has problems:**  \n" + "  \n".join(
        f"- {problem}" for problem in settings.problems)


def setting_updates(settings: FallbackSettings, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Each settings control's value (a list as comma-separated text), with ``setting_note``."""
    updates = []
    for field in fields:
        value = getattr(settings, field)
        updates.append(gr.update(value=", ".join(value) if isinstance(value, list) else value,
                                 info=setting_note(settings, field)))
    return updates


def setting_note(settings: FallbackSettings, field: str) -> str:
    """Where ``field``'s value came from, and what to do when something outside the UI pins it."""
    origin = settings.origin(field)
    if origin == "environment":
        return (f"🔒 pinned by the environment variable {settings.env_name(field)}: "
                "unset it to change this here")
    if origin == "argument":
        return "🔒 set by the host program (an explicit argument): it cannot be saved here"
    return {"file": "saved in the settings file", "default": "default value"}[origin]


def pinned(settings: FallbackSettings, field: str) -> bool:
    """Whether the page cannot change ``field``: the environment or the host program sets it."""
    return settings.origin(field) in ("environment", "argument")


def size(mb: float | None) -> str:
    return "–" if mb is None else size_text(mb, smallest="KiB")


def verdict_text(fit: Compatibility) -> str:
    icon = VERDICT_ICONS.get(fit.verdict, "")
    if fit.verdict == "partial":
        return f"{icon} partial ({fit.gpu_layers}/{fit.n_layers} layers)"
    return f"{icon} {fit.verdict}"


def models_frame(models: Sequence[ModelInfo], fits: Mapping[str, Compatibility | str]) -> pd.DataFrame:
    """One row per discovered model; ``fits`` maps a name to its verdict or why there is none."""
    rows = []
    for model in models:
        fit = fits.get(model.name, "")
        if not model.valid:
            fit_text = f"⚠️ invalid: {model.error}"
        else:
            fit_text = verdict_text(fit) if isinstance(fit, Compatibility) else str(fit)
        rows.append([model.name, model.format, model.source, size(model.size_mb),
                     model.quantization or "–", model.context_length or "–", fit_text])
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)


def status_markdown(status: SystemStatus, current: ModelInfo | None) -> str:
    """The machine overview: probe, RAM, CPU, the current model, and who holds each GPU
    (the GPUs themselves are ``gpus_frame``)."""
    lines = [
        "### System status",
        f"- **Platform:** {status.platform}",
        f"- **CPU:** {status.cpu_count} logical cores, {status.cpu_percent:.0f}% busy",
        f"- **RAM:** {size(status.ram_available_mb)} available of {size(status.ram_total_mb)}",
        f"- **VRAM probe that answered:** `{status.vram_source}`",
        f"- **Current local model:** {current.name if current else 'none loaded yet'}",
    ]
    if status.gpus:
        lines += [f"- **GPU {gpu.index} held by:** {holders_text(gpu)}" for gpu in status.gpus
                  if gpu.processes]
        lines.append(f"- **llama.cpp can offload to:** {offload_text(status)}")
    else:
        lines += ["", "**No GPU found:** local models run on the CPU, from system RAM."]
    if status.notes:
        lines += ["", "Probes that did not answer: " + "; ".join(status.notes)]
    return "\n".join(lines)


def gpus_frame(status: SystemStatus) -> pd.DataFrame:
    """One row per GPU: its free, used and total VRAM, load and temperature."""
    rows = [[gpu.index, gpu.name, size(gpu.vram_free_mb), size(gpu.vram_used_mb), size(gpu.vram_total_mb),
             f"{gpu.utilization_pct:.0f}%" if gpu.utilization_pct is not None else "–",
             f"{gpu.temperature_c:.0f} °C" if gpu.temperature_c is not None else "–"]
            for gpu in status.gpus]
    return pd.DataFrame(rows, columns=GPU_COLUMNS)


def holders_text(gpu: GPUInfo) -> str:
    """Who holds a GPU's memory, biggest first (NVML's per-process figures)."""
    ranked = sorted(gpu.processes, key=lambda p: -(p.used_mb or 0))
    return ", ".join(f"{p.name} (pid {p.pid}" + (f", {size(p.used_mb)})" if p.used_mb is not None
                                                 else ")") for p in ranked)


def offload_text(status: SystemStatus) -> str:
    if status.llama_gpus is None:
        return "unknown (llama-cpp-python could not be read)"
    if not status.llama_gpus:
        return ("nothing: this llama-cpp-python is a CPU-only build" + (
            f" (to use the GPU, {status.gpu_build_command})" if status.gpus else ""))
    return ", ".join(status.llama_gpus)


def compatibility_markdown(fit: Compatibility) -> str:
    """The verdict, the reason, how many layers fit and how much memory it needs
    (where that memory goes is ``memory_frame``)."""
    verdict = {"gpu": "Fits on the GPU", "partial": "Fits partly on the GPU",
               "cpu": "Runs on the CPU", "none": "Does not fit"}[fit.verdict]
    return "\n".join([
        f"### {VERDICT_ICONS[fit.verdict]} {fit.model}: {verdict} (`{fit.verdict}`)",
        fit.reason,
        "",
        f"- **Layers:** {layers_text(fit)}",
        f"- **Context:** {fit.n_ctx} tokens, KV cache `{fit.kv_type}`, flash attention "
        f"{'on' if fit.flash_attn else 'off'}",
        f"- **Needs:** {size(fit.vram_mb)} VRAM ({size(fit.available_vram_mb)} free) and "
        f"{size(fit.ram_mb)} RAM ({size(fit.available_ram_mb)} free)"
        + (" · calibrated by a measured load" if fit.calibrated else ""),
    ])


def model_choices(models: Iterable[ModelInfo]) -> list[str]:
    return [m.name for m in models if m.usable]


def current_model_markdown(current: ModelInfo | None) -> str:
    if current is None:
        return "**Current model:** none loaded yet (the first fallback answer loads the best one)"
    details = ", ".join(str(x) for x in (current.format, current.quantization, size(current.size_mb),
                                         current.source) if x)
    return f"**Current model:** `{current.name}` ({details})"


def vram_markdown(status: SystemStatus, auto_optimize: bool, best: str | None, current: str | None) -> str:
    """Current VRAM use and whether the current model is the optimal one."""
    if status.gpus:
        used = sum(g.vram_used_mb for g in status.gpus)
        usage = (f"**VRAM:** {size(used)} used of {size(status.vram_total_mb)} "
                 f"({size(status.vram_free_mb)} free, via `{status.vram_source}`)")
    else:
        usage = (f"**VRAM:** no GPU found; models use system RAM "
                 f"({size(status.ram_available_mb)} of {size(status.ram_total_mb)} available)")
    if best is None:
        state = "no local model fits this machine"
    elif best == current:
        state = f"✅ the current model `{current}` is the optimal one"
    else:
        state = f"the optimal model is `{best}` (current: `{current or 'none'}`)"
    auto = "on" if auto_optimize else "off"
    return f"{usage}  \n**Optimization:** {state}; auto-optimize is {auto}."


def optimization_markdown(result: Optimization) -> str:
    """Which model the optimizer chose and why, and whether it switched to it."""
    if result.selected is None:
        return f"⚠️ Nothing to optimize: {result.reason}"
    if result.switched:
        return f"⚡ Switched to the optimal model **{result.selected}**: {result.reason}"
    return f"✅ **{result.selected}** is already the optimal model: {result.reason}"


def ranking_frame(ranking: Sequence[RankEntry]) -> pd.DataFrame:
    return pd.DataFrame([[e.model, e.score, e.compatible, e.verdict, e.reason] for e in ranking],
                        columns=RANK_COLUMNS)


def benchmark_frame(results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([[r.get(c) for c in BENCH_COLUMNS] for r in results], columns=BENCH_COLUMNS)


def latest_per_model(history: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The newest benchmark of each model (history comes newest first)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for row in history:
        latest.setdefault(str(row.get("model")), row)
    return list(latest.values())


def progress_markdown(status: JobStatus) -> str:
    """A job's state as a line with a text progress bar."""
    filled = int(round(status.progress * 20))
    bar = "█" * filled + "░" * (20 - filled)
    icon = {"running": "⏳", "done": "✅", "failed": "❌", "cancelled": "⏹️"}[status.state]
    line = (f"{icon} **{status.name}**: {status.state} `{bar}` {status.progress:.0%} · "
            f"{status.message} · {status.elapsed_s:.1f} s")
    return line + (f"  \n**Error:** {status.error}" if status.error else "")


def chat_markdown(result: ChatResult) -> str:
    how = "after a failover" if result.fell_back else "directly"
    ttft = f"{result.ttft_s:.2f} s" if result.ttft_s is not None else "–"
    return (f"**Answered by** `{result.model}` ({result.source}) {how} · {result.tokens} tokens · "
            f"first token {ttft} · total {result.latency_s:.2f} s")


def attempts_frame(attempts: Iterable[Attempt]) -> pd.DataFrame:
    rows = [[a.target, a.source, a.ok, round(a.latency_s, 3), a.tries, a.error or ""] for a in attempts]
    return pd.DataFrame(rows, columns=ATTEMPT_COLUMNS)


def health_markdown(report: HealthReport) -> str:
    icon = STATUS_ICONS.get(report.status, "")
    return (f"## {icon} Health {report.score}/100: {report.status}\n"
            f"- **Current model:** `{report.current_model or 'none'}`\n"
            f"- **Optimal model:** `{report.optimal_model or 'none fits'}`")


def factors_frame(factors: Mapping[str, Factor]) -> pd.DataFrame:
    rows = [[name, f.score, f.weight, f.detail] for name, f in factors.items()]
    return pd.DataFrame(rows, columns=FACTOR_COLUMNS)


def recommendations_markdown(recommendations: Sequence[str]) -> str:
    if not recommendations:
        return "**Recommendations:** none, everything looks fine."
    return "**Recommendations:**\n" + "\n".join(f"- {r}" for r in recommendations)


def health_check_markdown(status: SystemStatus) -> str:
    """VRAM usage, system memory, CPU information and each GPU's status."""
    ram_used = status.ram_total_mb - status.ram_available_mb
    if status.gpus:
        vram = (f"{size(status.vram_total_mb - status.vram_free_mb)} used of {size(status.vram_total_mb)} "
                f"({size(status.vram_free_mb)} free)")
    else:
        vram = "no GPU, so no VRAM in use"
    lines = ["### 🔍 Health check",
             f"- **VRAM usage:** {vram}",
             f"- **System memory:** {size(ram_used)} used of {size(status.ram_total_mb)} "
             f"({ram_used / max(status.ram_total_mb, 1):.0%}), {size(status.ram_available_mb)} available",
             f"- **CPU information:** {status.cpu_count} logical cores, {status.cpu_percent:.0f}% busy, "
             f"{status.platform}",
             f"- **GPU status:** probe `{status.vram_source}`"]
    for gpu in status.gpus:
        load = f", {gpu.utilization_pct:.0f}% busy" if gpu.utilization_pct is not None else ""
        temp = f", {gpu.temperature_c:.0f} °C" if gpu.temperature_c is not None else ""
        lines.append(f"  - GPU {gpu.index} {gpu.name}: {size(gpu.vram_free_mb)} free of "
                     f"{size(gpu.vram_total_mb)}{load}{temp}")
        if gpu.processes:
            lines.append(f"    held by {holders_text(gpu)}")
    if not status.gpus:
        lines.append("  - no GPU found" + (f" ({'; '.join(status.notes)})" if status.notes else ""))
    return "\n".join(lines)


def performance_markdown(stats: PerformanceStats) -> str:
    """The current model's newest benchmark, the saved runs, the last hour's failovers and the
    background samples."""
    lines = ["### 📊 Performance stats"]
    bench = stats.current_benchmark
    if bench is not None:
        lines.append(f"- **{stats.current_model}:** {bench.gen_tps or 0:.1f} tokens/s, first token in "
                     f"{bench.ttft_s or 0:.2f} s, quality {bench.quality_score or 0:.2f}")
    else:
        lines.append(f"- **Current model** `{stats.current_model or 'none'}`: no benchmark yet")
    lines += [f"- **Benchmarked models:** {stats.benchmarked_models} ({stats.benchmark_runs} runs saved)",
              f"- **Last hour:** {stats.attempts_last_hour} attempts in chats that fell back, "
              f"{stats.failed_last_hour} failed"]
    if stats.background_summary:
        parts = [f"{SAMPLE_LABELS.get(name, name)} mean {s.mean:.1f} (max {s.max:.1f})"
                 for name, s in stats.background_summary.items()]
        lines.append(f"- **Background samples** ({stats.background_samples}): " + ", ".join(parts))
    else:
        lines.append("- **Background samples:** none (VRAM monitoring is off or just started)")
    return "\n".join(lines)


def summary_frame(summary: Mapping[str, MetricSummary]) -> pd.DataFrame:
    rows: list[list[Any]] = [[SAMPLE_LABELS.get(name, name), round(s.min, 1), round(s.mean, 1),
                              round(s.max, 1), round(s.p95, 1)] for name, s in summary.items()]
    if summary and "tokens_per_s" not in summary:  # this process generated nothing: not a 0
        rows.append([SAMPLE_LABELS["tokens_per_s"], None, None, None, None])
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


SESSION_COLUMNS = ["started", "seconds", "ended", *(f"{label}, mean" for label in SAMPLE_LABELS.values())]


def sessions_frame(sessions: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Saved monitoring sessions, newest first: each metric's mean (blank where not measured)."""
    rows = []
    for s in sessions:
        started, ended = saved_session_heading(s)
        rows.append([started, s["duration_s"], ended,
                     *(round(s["summary"][name]["mean"], 1) if name in s["summary"] else None
                       for name in SAMPLE_LABELS)])
    return pd.DataFrame(rows, columns=SESSION_COLUMNS)


def text(value: Any) -> str:
    """A text field's value, stripped; anything that is not text counts as empty."""
    return value.strip() if isinstance(value, str) else ""


def whole_number(value: Any, field: str) -> int | None:
    """A numeric field's value as an int (None when empty); InvalidSettings when it is not one."""
    from zwaif_fallback import InvalidSettings

    if value is None or value == "":
        return None
    try:
        number = float(value)
        if number != int(number):
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise InvalidSettings(f"{field} must be a whole number, not {value!r}") from None
