"""The "System Health Monitor" tab: health score, checks, stats, live monitoring and history.

Monitoring runs on the manager's own sampling thread; a poll (a gr.Timer where Gradio has
one) reads the live report once a second while it runs and stops itself when the session ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr
import pandas as pd

from zwaif_fallback import FallbackError, FallbackManager, MonitoringReport
from zwaif_fallback.monitor import Sample

from . import charts, compat
from . import format as fmt

__all__ = ["HealthHandlers", "HealthTab", "build_health_tab"]

TAB_LABEL = "System Health Monitor"
POLL_S = 1.0
INTERVAL_S = 1.0
SESSIONS_SHOWN = 20
SAVE_WAIT_S = 5.0  # a session that has ended is saving itself to history


class HealthHandlers:
    """The tab's event handlers: each calls the manager and formats what it returns."""

    def __init__(self, manager: FallbackManager) -> None:
        self.manager = manager

    def refresh_health(self) -> tuple[str, pd.DataFrame, str]:
        """Score and status, current vs optimal model, the factors and recommendations."""
        try:
            report = self.manager.health()
        except FallbackError as exc:
            return fmt.failure(exc, "Reading the health status"), gr.skip(), gr.skip()
        return (fmt.health_markdown(report), fmt.factors_frame(report.factors),
                fmt.recommendations_markdown(report.recommendations))

    def auto_optimize(self) -> tuple[str, str, pd.DataFrame, str]:
        """Switch to the optimal model, then show the health that results."""
        try:
            optimization = self.manager.optimize(apply=True)
        except FallbackError as exc:
            return fmt.failure(exc, "Auto-optimizing"), gr.skip(), gr.skip(), gr.skip()
        return (fmt.optimization_markdown(optimization), *self.refresh_health())

    def health_check(self) -> str:
        """VRAM usage, system memory, CPU information and GPU status, now."""
        try:
            status = self.manager.system_status(refresh=True)
        except FallbackError as exc:
            return fmt.failure(exc, "The health check")
        return fmt.health_check_markdown(status)

    def performance_stats(self) -> tuple[str, str]:
        """The current model's latest benchmark, background samples, failovers, and what to do."""
        try:
            stats = self.manager.performance_stats()
        except FallbackError as exc:
            return fmt.failure(exc, "Reading performance stats"), gr.skip()
        return fmt.performance_markdown(stats), fmt.recommendations_markdown(stats.recommendations)

    def start_monitoring(self, duration_s: float) -> tuple[Any, ...]:
        """Start a session on the manager's sampling thread and the poll timer."""
        try:
            seconds = fmt.whole_number(duration_s, "Monitoring duration")
            self.manager.start_monitoring(seconds if seconds is not None else -1, INTERVAL_S)
        except FallbackError as exc:
            return fmt.failure(exc, "Starting monitoring"), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return (f"📈 Monitoring for {seconds} s, one sample a second…", *self._plots([], 0),
                fmt.summary_frame({}),
                compat.timer_update(active=True))

    def poll_monitoring(self) -> tuple[Any, ...]:
        """The live samples; once the session ends, its summary and the timer stopped."""
        try:
            report = self.manager.monitoring_report()
        except FallbackError as exc:
            return fmt.failure(exc, "Reading monitoring"), gr.skip(), gr.skip(), gr.skip(), \
                compat.timer_update(active=False)
        if report.running:
            return (f"📈 Monitoring: {len(report.samples)} samples so far of {report.duration_s:.0f} s…",
                    *self._plots(report.samples, report.duration_s), gr.skip(), gr.skip())
        self.manager.wait_monitoring(timeout=SAVE_WAIT_S)  # saved, for the history the summary redraws
        return self._finished(report)

    def stop_monitoring(self) -> tuple[Any, ...]:
        try:
            report = self.manager.stop_monitoring()
        except FallbackError as exc:
            return fmt.failure(exc, "Stopping monitoring"), gr.skip(), gr.skip(), gr.skip(), \
                compat.timer_update(active=False)
        return self._finished(report)

    def _finished(self, report: MonitoringReport) -> tuple[Any, ...]:
        how = "stopped early" if report.stopped_early else "finished"
        return (f"⏹️ Monitoring {how}: {len(report.samples)} samples over "
                f"{report.samples[-1].t_s if report.samples else 0:.1f} s. Summary below.",
                *self._plots(report.samples, report.duration_s), fmt.summary_frame(report.summary),
                compat.timer_update(active=False))

    @staticmethod
    def _plots(samples: Sequence[Sample], duration_s: float) -> tuple[Any, Any]:
        """The live charts over the whole session (its x range), left as they are until its
        first sample: 5.x drew nothing once it had had an empty frame between two timer ticks."""
        if not samples:
            return gr.skip(), gr.skip()
        x_lim = [0, duration_s]
        return (gr.update(value=charts.samples_frame(samples, charts.MEMORY_METRICS), x_lim=x_lim),
                gr.update(value=charts.samples_frame(samples, charts.LOAD_METRICS), x_lim=x_lim))

    def history(self) -> tuple[Any, Any, Any]:
        """Past benchmarks (speed over time), failover attempts (by target and outcome) and
        monitoring sessions."""
        try:
            benchmarks = self.manager.benchmark_history(limit=500)
            failovers = self.manager.failover_history()
            sessions = self.manager.monitor_history(limit=SESSIONS_SHOWN)
        except FallbackError as exc:
            fmt.failure(exc, "Reading history")
            return gr.skip(), gr.skip(), gr.skip()
        problem = self.manager.store_problem()
        if problem:  # the charts would look complete; what is not being saved is missing
            gr.Warning(f"History is not being saved: {problem}")
        return (compat.colored(charts.benchmark_history_frame(benchmarks), "model", charts.MODEL_COLORS),
                compat.colored(charts.failover_history_frame(failovers), "outcome", charts.OUTCOME_COLORS),
                fmt.sessions_frame(sessions))


@dataclass
class HealthTab:
    tab: gr.Tab
    health: gr.Markdown
    monitor_status: gr.Markdown


def build_health_tab(manager: FallbackManager, prefix: str = "fallback") -> HealthTab:
    """Build the tab inside the caller's gr.Tabs context and bind its events."""
    eid = partial(fmt.element_id, prefix)
    h = HealthHandlers(manager)
    with gr.Tab(TAB_LABEL, id=eid("health"), elem_id=eid("health")) as tab:
        health = gr.Markdown("Loading the health status…", elem_id=eid("health-score"))
        with gr.Row():
            refresh = gr.Button("🔄 Refresh Health Status", variant="primary",
                                elem_id=eid("health-refresh"))
            optimize = gr.Button("⚡ Auto-Optimize System", elem_id=eid("health-optimize"))
            check = gr.Button("🔍 Run Health Check", elem_id=eid("health-check"))
            stats = gr.Button("📊 Get Performance Stats", elem_id=eid("health-stats"))
        action = gr.Markdown(elem_id=eid("health-action"))
        factors = gr.Dataframe(headers=fmt.FACTOR_COLUMNS, label="Health factors",
                               interactive=False, wrap=True, elem_id=eid("health-factors"))
        recommendations = gr.Markdown(elem_id=eid("health-recommendations"))

        gr.Markdown("## Monitoring")
        with gr.Row(equal_height=True):
            duration = gr.Slider(10, 300, value=manager.settings.monitor_duration, step=10, scale=2,
                                 label="Monitoring duration (seconds)", elem_id=eid("monitor-duration"))
            start = gr.Button("📈 Start Monitoring", variant="primary", scale=1,
                              elem_id=eid("monitor-start"))
            stop = gr.Button("⏹️ Stop Monitoring", variant="stop", scale=1, elem_id=eid("monitor-stop"))
        monitor_status = gr.Markdown("Not monitoring.", elem_id=eid("monitor-status"))
        with gr.Row():
            memory_plot = compat.plot(gr.LinePlot, value=charts.zero_samples_frame(charts.MEMORY_METRICS),
                                      x="t_s", y="value", color="metric", title="Memory (MiB)",
                                      x_title="seconds", y_title="MiB", elem_id=eid("monitor-memory"))
            load_plot = compat.plot(gr.LinePlot, value=charts.zero_samples_frame(charts.LOAD_METRICS),
                                    x="t_s", y="value", color="metric",
                                    title="CPU, GPU and tokens/s", x_title="seconds", y_title="% or tokens/s",
                                    elem_id=eid("monitor-load"))
        summary = gr.Dataframe(headers=fmt.SUMMARY_COLUMNS, label="Monitoring summary",
                               interactive=False, elem_id=eid("monitor-summary"))
        poll = compat.Poll(POLL_S)

        gr.Markdown("## History")
        with gr.Row():
            bench_history = compat.plot(gr.BarPlot, x="run", y="gen_tps", color="model", sort="x",
                                        title="Past benchmarks: tokens/s per run", x_title="run",
                                        y_title="tokens/s", elem_id=eid("history-benchmarks"))
            failover_history = compat.plot(gr.BarPlot, x="target", y="attempts", color="outcome",
                                           title="Failover attempts by target",
                                           elem_id=eid("history-failovers"))
        sessions = gr.Dataframe(headers=fmt.SESSION_COLUMNS, label="Past monitoring sessions",
                                interactive=False, elem_id=eid("history-sessions"))

    health_outputs = [health, factors, recommendations]
    monitor_outputs = [monitor_status, memory_plot, load_plot, summary, poll.component]
    history_outputs = [bench_history, failover_history, sessions]
    for fn, outputs in ((h.refresh_health, health_outputs), (h.history, history_outputs)):
        compat.on_show(tab, fn, outputs)
        compat.on_page_load(fn, outputs)
    compat.redraw_on_show(tab, [summary])  # filled when monitoring ends, maybe in another tab
    refresh.click(h.refresh_health, outputs=health_outputs, api_name="fallback_health")
    optimize.click(h.auto_optimize, outputs=[action, *health_outputs], api_name="fallback_auto_optimize")
    check.click(h.health_check, outputs=action, api_name="fallback_health_check")
    stats.click(h.performance_stats, outputs=[action, recommendations], api_name="fallback_performance_stats")
    start.click(h.start_monitoring, inputs=duration, outputs=monitor_outputs,
                api_name="fallback_monitor_start")
    poll.on_tick(h.poll_monitoring, inputs=[], outputs=monitor_outputs)
    stop.click(h.stop_monitoring, outputs=monitor_outputs, api_name="fallback_monitor_stop")
    # a session's summary is drawn when it ends, stopped or run to its end: its row joins the history
    summary.change(h.history, outputs=history_outputs, **compat.PRIVATE)
    return HealthTab(tab=tab, health=health, monitor_status=monitor_status)
