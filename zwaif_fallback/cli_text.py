"""What the CLI prints for a person: tables and summaries of the library's typed results.

Pure functions over those results; ``print_json`` is the ``--json`` side of every command.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import AllTargetsFailed, FallbackError, InvalidSettings
from .fit import Compatibility, layers_text
from .gpu_probes import GPUProcess
from .hardware import SystemStatus
from .model_info import ModelInfo
from .monitor import saved_session_heading
from .units import size_text

if TYPE_CHECKING:
    from .bench import BenchmarkResult
    from .health import HealthReport, Optimization
    from .monitor import MonitoringReport, Sample
    from .pull import PullProgress
    from .recommend import Recommendation
    from .results import ChatResult
    from .settings import FallbackSettings

__all__ = ["error_json", "format_benchmarks", "format_chat_footer", "format_check", "format_health",
           "format_models", "format_monitor_sessions", "format_monitor_summary", "format_optimization",
           "format_pull_progress", "format_recommendations", "format_sample", "format_settings",
           "format_status", "num", "print_json", "table"]


def print_json(data: Any) -> int:
    print(json.dumps(data, indent=2, default=str))
    return 0


def error_json(exc: FallbackError) -> dict[str, Any]:
    """A failure as ``--json`` prints it: its type, message and exit status, and what it
    carries (the settings refused, every target's attempt)."""
    said: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}
    if isinstance(exc, InvalidSettings):
        said["problems"] = exc.problems
    if isinstance(exc, AllTargetsFailed):
        said["attempts"] = [a.model_dump() if hasattr(a, "model_dump") else str(a) for a in exc.attempts]
    return said


def format_status(status: SystemStatus) -> str:
    lines = [f"GPU probe : {status.vram_source}"]
    if status.gpus:
        for g in status.gpus:
            extra = []
            if g.utilization_pct is not None:
                extra.append(f"{g.utilization_pct:.0f}% busy")
            if g.temperature_c is not None:
                extra.append(f"{g.temperature_c:.0f} C")
            free, total = (size_text(mb, smallest="GiB") for mb in (g.vram_free_mb, g.vram_total_mb))
            lines.append(f"GPU {g.index}     : {g.name}, {free} free of {total}"
                         + (f" ({', '.join(extra)})" if extra else ""))
            if g.processes:
                lines.append("  held by : " + ", ".join(_holder(p) for p in g.processes))
    else:
        lines.append("GPUs      : none" + "".join(f"\n  {note}" for note in status.notes))  # each probe's
    lines.append(f"RAM       : {size_text(status.ram_available_mb, smallest='GiB')} available of "
                 f"{size_text(status.ram_total_mb, smallest='GiB')}")
    lines.append(f"CPU       : {status.cpu_count} logical cores, {status.cpu_percent:.0f}% busy")
    lines.append(f"Platform  : {status.platform}")
    return "\n".join(lines)


def _holder(process: GPUProcess) -> str:
    used = "" if process.used_mb is None else f", {size_text(process.used_mb)}"
    return f"{process.name} (pid {process.pid}{used})"


def num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Columns aligned as a terminal shows them: a Japanese or Chinese character or an emoji
    takes two cells, a combining mark none."""
    widths = [max(cells(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ("  ".join(c + " " * (w - cells(c)) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
             for r in rows)
    return "\n".join(lines)


def cells(text: str) -> int:
    """How many terminal cells ``text`` takes (East Asian wide and full-width: two)."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def format_models(models: list[ModelInfo]) -> str:
    if not models:
        return "no models found: put .gguf files or HF model folders in the models folder"
    rows = [("NAME", "FORMAT", "SOURCE", "SIZE", "QUANT", "CTX", "PARAMS", "STATUS")]
    for m in models:
        params = f"{m.parameters / 1e9:.2f}B" if m.parameters else "-"
        rows.append((m.name, m.format, m.source, f"{m.size_bytes / 2**20:.0f} MiB",
                     m.quantization or "-", str(m.context_length or "-"), params,
                     "ok" if m.valid else f"invalid: {m.error}"))
    return table(rows)


def format_check(c: Compatibility) -> str:
    b = c.breakdown
    return "\n".join([
        f"{c.model}: {c.verdict.upper()}" + ("" if c.compatible else " (cannot run here)"),
        f"  {c.reason}",
        *([f"  runtime: {c.runtime}"] if c.runtime else []),
        f"  n_ctx {c.n_ctx}, {layers_text(c)}, KV {c.kv_type}, "
        f"flash attention {'on' if c.flash_attn else 'off'}",
        f"  VRAM {c.vram_mb:.0f} MiB, RAM {c.ram_mb:.0f} MiB = weights {b.weights_mb:.0f} + "
        f"KV {b.kv_mb:.0f} + compute {b.compute_mb:.0f} + overhead {b.overhead_mb:.0f} MiB",
        *_dry_run_lines(c),
    ])


def _dry_run_lines(c: Compatibility) -> list[str]:
    d = c.dry_run
    if d is None:
        return [f"  llama.cpp dry run: {c.dry_run_note}"] if c.dry_run_note else []
    return [f"  llama.cpp dry run ({d.seconds:.2f} s), buffers without the runtime's overhead: "
            f"VRAM {d.vram_mb:.0f} MiB (estimate {d.estimate_vram_mb:.0f}, {d.vram_diff_mb:+.0f}), "
            f"RAM {d.ram_mb:.0f} MiB (estimate {d.estimate_ram_mb:.0f}, {d.ram_diff_mb:+.0f})"]


def format_recommendations(items: list[Recommendation]) -> str:
    if not items:
        return "no candidates"
    rows = [("MODEL", "PARAMS", "QUANT", "SIZE", "FITS", "SCORE", "WHY")]
    for r in items:
        params = f"{r.params / 1e9:.1f}B" if r.params else "-"
        size = size_text(r.size_bytes / 2**20, smallest="GiB") if r.size_bytes else "-"
        rows.append((f"{r.repo}/{r.file}" if r.repo else r.url, params, r.quantization or "-", size,
                     r.verdict, f"{r.score:.1f}", r.reason))
    return table(rows)


def format_pull_progress(p: PullProgress) -> str:
    """One progress line: "model.gguf: 12.0 MiB of 380 MiB (3%), 25 MiB/s, 14 s left", the
    file preceded by "file 2 of 5, " when the pull fetches several."""
    name = f"file {p.part} of {p.parts}, {p.file}" if p.parts > 1 else p.file
    done = size_text(p.downloaded_bytes / 2**20, smallest="KiB")
    if p.total_bytes:
        done += (f" of {size_text(p.total_bytes / 2**20, smallest='KiB')} "
                 f"({100 * p.downloaded_bytes / p.total_bytes:.0f}%)")
    rate = f"{size_text(p.rate_bytes_per_s / 2**20, smallest='KiB')}/s"
    if p.done:
        return f"{name}: {done}, {rate}, done"
    left = f"{p.eta_s:.0f} s left" if p.eta_s is not None else "time left unknown"
    resumed = (f", resumed at {size_text(p.resumed_from_bytes / 2**20, smallest='KiB')}"
               if p.resumed_from_bytes else "")
    return f"{name}: {done}, {rate}, {left}{resumed}"


def format_benchmarks(results: list[BenchmarkResult]) -> str:
    rows = [("MODEL", "LOAD s", "TTFT s", "PP tok/s", "GEN tok/s", "RAM MiB", "PPL", "QUALITY",
             "STATUS")]
    for r in results:
        rows.append((r.model, num(r.load_s, 2), num(r.ttft_s, 3), num(r.prompt_tps, 0),
                     num(r.gen_tps, 1), num(r.peak_ram_mb, 0), num(r.perplexity, 1),
                     num(r.quality_score, 2), "ok" if r.ok else f"failed: {r.error}"))
    return table(rows)


def format_optimization(result: Optimization) -> str:
    rows = [("MODEL", "SCORE", "FITS", "WHY")]
    rows += [(e.model, f"{e.score:.1f}", e.verdict, e.reason) for e in result.ranking]
    return result.reason + (" (switched)" if result.switched else "") + "\n" + table(rows)


def format_health(report: HealthReport) -> str:
    lines = [f"Health {report.score}/100: {report.status}",
             f"Current model: {report.current_model or '-'}; optimal: {report.optimal_model or '-'}"]
    lines += [f"  {name:<12} {factor.score:>3}  {factor.detail}" for name, factor in report.factors.items()]
    lines += [f"- {line}" for line in report.recommendations]
    return "\n".join(lines)


def format_chat_footer(done: ChatResult) -> str:
    """The line after a chat's answer: who answered, how much, how fast, and what failed first."""
    failed = [f"{a.target}: {a.error}" for a in done.attempts if not a.ok]
    note = f"; fell back after {'; '.join(failed)}" if failed else ""
    return f"[{done.model} ({done.source}), {done.tokens} tokens in {done.latency_s:.1f} s{note}]"


def format_sample(s: Sample) -> str:
    """One monitoring sample, as the live line shows it."""
    return (f"{s.t_s:6.1f} s  RAM {s.ram_used_mb:8.0f} MiB  CPU {s.cpu_percent:5.1f}%  "
            + (f"{s.tokens_per_s:5.1f} tok/s" if s.tokens_per_s is not None else "  n/a tok/s"))


def format_monitor_summary(report: MonitoringReport) -> str:
    lines = [f"{name:<20} min {m.min:10.1f}  mean {m.mean:10.1f}  max {m.max:10.1f}  p95 {m.p95:10.1f}"
             for name, m in report.summary.items()]
    if "tokens_per_s" not in report.summary:
        lines.append(f"{'tokens_per_s':<20} n/a: nothing was generated in this process (a serve "
                     "running beside it shows its rate on /metrics)")
    return "\n".join(lines)


def format_monitor_sessions(sessions: Sequence[dict[str, Any]]) -> str:
    """Saved monitoring sessions, newest first: when, how long, and each metric's mean and max."""
    if not sessions:
        return "no monitoring session saved yet: `zwaif-fallback monitor --duration 60` records one"
    lines = []
    for session in sessions:
        when, ended = saved_session_heading(session)
        figures = [f"{name} mean {m['mean']:.1f} max {m['max']:.1f}"
                   for name, m in session["summary"].items()]
        lines.append(f"{when}  {session['duration_s']:>5g} s  {ended:<13}  " + ", ".join(figures))
    return "\n".join(lines)


def format_settings(settings: FallbackSettings) -> str:
    """Each setting, its value and where the value comes from; then the file's problems."""
    lines = [f"{name:<20} {json.dumps(value, ensure_ascii=False):<32} ({settings.origin(name)})"
             for name, value in settings.public_dict().items()]
    return "\n".join(lines + [f"problem: {problem}" for problem in settings.problems])
