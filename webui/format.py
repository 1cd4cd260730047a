"""Turning the manager's typed results into what Gradio shows: Markdown text and DataFrames.

Pure functions over the result types (no manager, no clock), shared by the three tabs.
``failure`` is the one exception: it is where a ``FallbackError`` becomes a toast.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import gradio as gr
import pandas as pd

from zwaif_fallback import (
    ChatResult,
    Compatibility,
    GPUInfo,
    HealthReport,
    JobStatus,
    ModelInfo,
    SystemStatus,
)
from zwaif_fallback.fit import layers_text
from zwaif_fallback.units import size_text

MODEL_COLUMNS = ["name", "format", "source", "size", "quantization", "context", "fit"]
BENCH_COLUMNS = ["model", "ok", "gen_tps", "prompt_tps", "ttft_s", "load_s", "response_time_s",
                 "peak_ram_mb", "peak_vram_mb", "perplexity", "quality_score", "error"]
ATTEMPT_COLUMNS = ["target", "source", "ok", "latency_s", "tries", "error"]
RANK_COLUMNS = ["model", "score", "compatible", "verdict", "reason"]
SAMPLE_LABELS = {"ram_used_mb": "RAM used (MiB)", "vram_used_mb": "VRAM used (MiB)",
                 "cpu_percent": "CPU (%)", "gpu_utilization_pct": "GPU (%)", "tokens_per_s": "tokens/s"}
MEMORY_METRICS = ("ram_used_mb", "vram_used_mb")
LOAD_METRICS = ("cpu_percent", "gpu_utilization_pct", "tokens_per_s")
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
    """The machine overview: probe, per-GPU VRAM, RAM, CPU and the current model."""
    lines = [
        "### System status",
        f"- **Platform:** {status.platform}",
        f"- **CPU:** {status.cpu_count} logical cores, {status.cpu_percent:.0f}% busy",
        f"- **RAM:** {size(status.ram_available_mb)} available of {size(status.ram_total_mb)}",
        f"- **VRAM probe that answered:** `{status.vram_source}`",
        f"- **Current local model:** {current.name if current else 'none loaded yet'}",
        "",
    ]
    if status.gpus:
        lines += ["| GPU | name | free VRAM | used | total | load | temp |",
                  "|---|---|---|---|---|---|---|"]
        for gpu in status.gpus:
            load = f"{gpu.utilization_pct:.0f}%" if gpu.utilization_pct is not None else "–"
            temp = f"{gpu.temperature_c:.0f} °C" if gpu.temperature_c is not None else "–"
            lines.append(f"| {gpu.index} | {gpu.name} | **{size(gpu.vram_free_mb)}** | "
                         f"{size(gpu.vram_used_mb)} | {size(gpu.vram_total_mb)} | {load} | {temp} |")
        lines.append("")
        lines += [f"- **GPU {gpu.index} held by:** {holders_text(gpu)}" for gpu in status.gpus
                  if gpu.processes]
        lines.append(f"- **llama.cpp can offload to:** {offload_text(status)}")
    else:
        lines.append("**No GPU found:** local models run on the CPU, from system RAM.")
    if status.notes:
        lines += ["", "Probes that did not answer: " + "; ".join(status.notes)]
    return "\n".join(lines)


def holders_text(gpu: GPUInfo) -> str:
    """Who holds a GPU's memory, biggest first (NVML's per-process figures)."""
    ranked = sorted(gpu.processes, key=lambda p: -(p.used_mb or 0))
    return ", ".join(f"{p.name} (pid {p.pid}" + (f", {size(p.used_mb)})" if p.used_mb is not None
                                                 else ")") for p in ranked)


def offload_text(status: SystemStatus) -> str:
    if status.llama_gpus is None:
        return "unknown (llama-cpp-python could not be read)"
    if not status.llama_gpus:
        return "nothing: this llama-cpp-python is a CPU-only build (reinstall it with CUDA, Vulkan or Metal)"
    return ", ".join(status.llama_gpus)


def compatibility_markdown(fit: Compatibility) -> str:
    """The verdict, the reason, where the memory goes and how many layers fit."""
    verdict = {"gpu": "Fits on the GPU", "partial": "Fits partly on the GPU",
               "cpu": "Runs on the CPU", "none": "Does not fit"}[fit.verdict]
    total, vram, ram = fit.breakdown, fit.vram_breakdown, fit.ram_breakdown
    rows = [("weights", "weights_mb"), ("KV cache", "kv_mb"), ("compute buffers", "compute_mb"),
            ("runtime overhead", "overhead_mb")]
    lines = [
        f"### {VERDICT_ICONS[fit.verdict]} {fit.model}: {verdict} (`{fit.verdict}`)",
        fit.reason,
        "",
        f"- **Layers:** {layers_text(fit)}",
        f"- **Context:** {fit.n_ctx} tokens, KV cache `{fit.kv_type}`, flash attention "
        f"{'on' if fit.flash_attn else 'off'}",
        f"- **Needs:** {size(fit.vram_mb)} VRAM ({size(fit.available_vram_mb)} free) and "
        f"{size(fit.ram_mb)} RAM ({size(fit.available_ram_mb)} free)"
        + (" · calibrated by a measured load" if fit.calibrated else ""),
        "",
        "| estimate | VRAM | RAM | total |",
        "|---|---|---|---|",
    ]
    for label, field in rows:
        lines.append(f"| {label} | {getattr(vram, field):.1f} MiB | {getattr(ram, field):.1f} MiB | "
                     f"{getattr(total, field):.1f} MiB |")
    lines.append(f"| **total** | **{vram.total_mb:.1f} MiB** | **{ram.total_mb:.1f} MiB** | "
                 f"**{total.total_mb:.1f} MiB** |")
    return "\n".join(lines)


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


def ranking_frame(ranking: Sequence[Any]) -> pd.DataFrame:
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


def speed_chart_frame(results: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Generation tokens/s of each model that measured one."""
    rows = [[str(r["model"]), float(r["gen_tps"])] for r in results if r.get("ok") and r.get("gen_tps")]
    return pd.DataFrame(rows, columns=["model", "gen_tps"])


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


def attempts_frame(attempts: Iterable[Any]) -> pd.DataFrame:
    rows = [[a.target, a.source, a.ok, round(a.latency_s, 3), a.tries, a.error or ""] for a in attempts]
    return pd.DataFrame(rows, columns=ATTEMPT_COLUMNS)


def health_markdown(report: HealthReport) -> str:
    icon = STATUS_ICONS.get(report.status, "")
    return (f"## {icon} Health {report.score}/100: {report.status}\n"
            f"- **Current model:** `{report.current_model or 'none'}`\n"
            f"- **Optimal model:** `{report.optimal_model or 'none fits'}`")


def factors_frame(factors: Mapping[str, Any]) -> pd.DataFrame:
    rows = [[name, f.score, f.weight, f.detail] for name, f in factors.items()]
    return pd.DataFrame(rows, columns=["factor", "score", "weight", "detail"])


def recommendations_markdown(recommendations: Sequence[str]) -> str:
    if not recommendations:
        return "**Recommendations:** none, everything looks fine."
    return "**Recommendations:**\n" + "\n".join(f"- {r}" for r in recommendations)


def samples_frame(samples: Iterable[Any], metrics: Sequence[str]) -> pd.DataFrame:
    """Samples in long form (t_s, value, metric) for a LinePlot coloured by metric."""
    rows = [[s.t_s, float(v), SAMPLE_LABELS[m]] for s in samples for m in metrics
            if (v := getattr(s, m)) is not None]
    return pd.DataFrame(rows, columns=["t_s", "value", "metric"])


def summary_frame(summary: Mapping[str, Any]) -> pd.DataFrame:
    rows = [[SAMPLE_LABELS.get(name, name), round(s.min, 1), round(s.mean, 1), round(s.max, 1),
             round(s.p95, 1)] for name, s in summary.items()]
    return pd.DataFrame(rows, columns=["metric", "min", "mean", "max", "p95"])


def benchmark_history_frame(history: Iterable[Mapping[str, Any]], *, last: int = 30) -> pd.DataFrame:
    """The last runs, oldest first, each labelled by when it ran (a bar each: one run is visible too)."""
    rows = [[dt.datetime.fromtimestamp(r["at"]).strftime("%m-%d %H:%M:%S"), str(r["model"]),
             float(r["gen_tps"])] for r in history if r.get("ok") and r.get("gen_tps") and r.get("at")]
    return pd.DataFrame(rows[:last][::-1], columns=["run", "model", "gen_tps"])


def failover_history_frame(attempts: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Attempts counted by target and outcome."""
    counts: dict[tuple[str, str], int] = {}
    for a in attempts:
        key = (str(a.get("target")), "ok" if a.get("ok") else "failed")
        counts[key] = counts.get(key, 0) + 1
    rows = [[target, outcome, n] for (target, outcome), n in sorted(counts.items())]
    return pd.DataFrame(rows, columns=["target", "outcome", "attempts"])


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
