"""The "Advanced Fallback Management" tab: switch, get (get_model.py) and optimize models, the
main API (main_api.py) and the other settings, benchmarks, a try-out.

Benchmarks run as the manager's background jobs; a poll (a gr.Timer where Gradio has one)
reads the job's status once a second while it runs, so the page keeps answering. The job id
lives in the session's gr.State.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr
import pandas as pd

from zwaif_fallback import AllTargetsFailed, FallbackError, FallbackManager, InvalidSettings
from zwaif_fallback.settings import validate_field

from . import charts, compat
from . import format as fmt
from .get_model import GetModelSection, build_get_model_section
from .main_api import MainApiSection, build_main_api_section

__all__ = ["ManagementHandlers", "ManagementTab", "build_management_tab"]

TAB_LABEL = "Advanced Fallback Management"
POLL_S = 1.0
#: The Advanced Settings controls, in the order of the handlers' arguments.
SETTING_FIELDS = ("timeout", "max_retries", "auto_switch", "vram_monitoring")
DEFAULT_PROMPT = "Tell me, in a few friendly sentences, how you would spend a rainy afternoon."


class ManagementHandlers:
    """The tab's event handlers: each calls the manager and formats what it returns."""

    def __init__(self, manager: FallbackManager) -> None:
        self.manager = manager

    # -- model management ---------------------------------------------------------

    def refresh_models(self, switch_to: str | None = None
                       ) -> tuple[str, pd.DataFrame, dict[str, Any], dict[str, Any]]:
        """Current model, the models that can be switched to, and both model dropdowns;
        ``switch_to`` (a model just downloaded) is put in the switch dropdown."""
        try:
            models = self.manager.discover_models(refresh=True)
        except FallbackError as exc:
            return fmt.failure(exc, "Listing models"), gr.skip(), gr.skip(), gr.skip()
        usable = [m for m in models if m.usable]
        table = fmt.models_frame(usable, {}).drop(columns=["fit"])
        choices = fmt.model_choices(models)
        switch = gr.update(choices=choices, value=switch_to) if switch_to else gr.update(choices=choices)
        return (fmt.current_model_markdown(self.manager.current_model), table, switch,
                gr.update(choices=choices))

    def switch_model(self, name: str | None) -> str:
        """Load ``name`` as the fallback model (it blocks only this event while it loads)."""
        name = fmt.text(name)
        if not name:
            gr.Warning("Choose the model to switch to.")
            return fmt.current_model_markdown(self.manager.current_model)
        try:
            model = self.manager.switch_model(name)
        except FallbackError as exc:
            return fmt.failure(exc, f"Switching to {name!r}") + "  \n" + \
                fmt.current_model_markdown(self.manager.current_model)
        gr.Info(f"Switched to {model.name}")
        return fmt.current_model_markdown(model)

    # -- VRAM optimization ------------------------------------------------------------

    def vram_status(self) -> tuple[str, bool, pd.DataFrame]:
        """VRAM use now, whether the current model is optimal (with the ranking), and auto-optimize."""
        try:
            optimization = self.manager.optimize(apply=False)
            status = self.manager.system_status()
        except FallbackError as exc:
            return fmt.failure(exc, "Reading the VRAM status"), gr.skip(), gr.skip()
        current = self.manager.current_model
        auto = self.manager.settings.auto_optimize_vram
        return (fmt.vram_markdown(status, auto, optimization.selected, current.name if current else None),
                auto, fmt.ranking_frame(optimization.ranking))

    def optimize(self) -> tuple[str, pd.DataFrame, str]:
        """Switch to the optimal model; say which and why, with the full ranking."""
        try:
            optimization = self.manager.optimize(apply=True)
        except FallbackError as exc:
            return fmt.failure(exc, "Optimizing"), gr.skip(), gr.skip()
        return (fmt.optimization_markdown(optimization), fmt.ranking_frame(optimization.ranking),
                fmt.current_model_markdown(self.manager.current_model))

    def save_auto_optimize(self, enabled: bool) -> tuple[str, bool]:
        try:
            settings = self.manager.update_settings(auto_optimize_vram=bool(enabled))
        except FallbackError as exc:
            return fmt.failure(exc, "Saving auto-optimize"), self.manager.settings.auto_optimize_vram
        state = "on" if settings.auto_optimize_vram else "off"
        return f"✅ Saved: auto-optimize VRAM is {state}.", settings.auto_optimize_vram

    # -- advanced settings -------------------------------------------------------------

    def _controls(self) -> list[dict[str, Any]]:
        return fmt.setting_updates(self.manager.settings, SETTING_FIELDS)

    def load_settings(self) -> tuple[Any, ...]:
        """The controls as the settings stand now (on page load; save and reset return them too)."""
        return (*self._controls(), self.manager.settings.auto_optimize_vram)

    def settings_problems(self) -> str:
        """What went wrong reading the settings file (a value ignored, a corrupt file), as the
        CLI warns of it; empty when nothing did."""
        return fmt.settings_problems_markdown(self.manager.settings)

    def save_settings(self, timeout: float, max_retries: float, auto_switch: bool,
                      vram_monitoring: bool) -> tuple[Any, ...]:
        """Save the values that changed; a refused value is explained and nothing is written."""
        settings = self.manager.settings
        values = (timeout, max_retries, auto_switch, vram_monitoring)
        try:  # as the CLI reads them: 2.7 is no count of retries, "false" is false
            typed = {f: validate_field(f, v) for f, v in zip(SETTING_FIELDS, values, strict=True)}
        except InvalidSettings as exc:
            message = fmt.failure(exc, "Saving settings") + "  \nNothing was saved."
            return (message, *[gr.update(info=c["info"]) for c in self._controls()])
        # Only what changed: an unchanged value pinned by the environment must not refuse the rest.
        changes = {f: v for f, v in typed.items() if getattr(settings, f) != v}
        if not changes:
            return ("Nothing to save: the values are the saved ones.", *self._controls())
        try:
            self.manager.update_settings(**changes)
        except FallbackError as exc:
            message = fmt.failure(exc, "Saving settings") + "  \nNothing was saved."
            return (message, *[gr.update(info=c["info"]) for c in self._controls()])
        saved = ", ".join(f"{f} = {v}" for f, v in changes.items())
        message = f"✅ Saved {saved} to {self.manager.settings.settings_file}."
        problems = fmt.settings_problems_markdown(self.manager.settings)
        return (message + (problems and "  \n" + problems), *self._controls())

    def reset_settings(self) -> tuple[Any, ...]:
        """Forget this section's saved values (and auto-optimize's); the main API, the models
        and the rest stay as saved."""
        try:
            self.manager.reset_settings(fields=[*SETTING_FIELDS, "auto_optimize_vram"])
        except FallbackError as exc:
            return (fmt.failure(exc, "Resetting settings"), *self._controls(), gr.skip())
        return ("✅ Reset: these settings and auto-optimize are back to their defaults (values pinned by "
                "the environment stay; the main API and the models are kept).",
                *self._controls(), self.manager.settings.auto_optimize_vram)

    # -- performance testing ------------------------------------------------------------

    def _start(self, name: str | None, prompt: str, job_id: str | None) -> tuple[Any, ...]:
        if job_id:
            try:
                if self.manager.job(job_id).status().state == "running":
                    gr.Warning("A benchmark is already running: wait for it or cancel it.")
                    return job_id, gr.skip(), gr.skip()
            except FallbackError:
                pass  # an unknown id (another manager): start afresh
        try:
            job = self.manager.start_benchmark(name, fmt.text(prompt) or None)
        except FallbackError as exc:
            return job_id, fmt.failure(exc, "Starting the benchmark"), gr.skip()
        return job.id, fmt.progress_markdown(job.status()), compat.timer_update(active=True)

    def start_benchmark(self, name: str | None, prompt: str, job_id: str | None) -> tuple[Any, ...]:
        """Benchmark one model in the background; returns the job id and starts the poll timer."""
        name = fmt.text(name)
        if not name:
            gr.Warning("Choose the model to test.")
            return job_id, gr.skip(), gr.skip()
        return self._start(name, prompt, job_id)

    def start_benchmark_all(self, prompt: str, job_id: str | None) -> tuple[Any, ...]:
        """Benchmark every compatible model in the background."""
        return self._start(None, prompt, job_id)

    def poll_benchmark(self, job_id: str | None) -> tuple[Any, ...]:
        """The job's progress; when it has ended, its results, the chart, and the timer stopped."""
        if not job_id:
            return gr.skip(), gr.skip(), gr.skip(), compat.timer_update(active=False)
        try:
            job = self.manager.job(job_id)
        except FallbackError as exc:
            return (fmt.failure(exc, "Reading the benchmark"), gr.skip(), gr.skip(),
                    compat.timer_update(active=False))
        status = job.status()
        if status.state == "running":
            return fmt.progress_markdown(status), gr.skip(), gr.skip(), gr.skip()
        result = job.result()
        results = result if isinstance(result, list) else [result] if result is not None else []
        table = fmt.benchmark_frame([r.model_dump() for r in results]) if results else gr.skip()
        return fmt.progress_markdown(status), table, self.speed_chart(), compat.timer_update(active=False)

    def cancel_benchmark(self, job_id: str | None) -> str:
        if not job_id:
            return "No benchmark was started."
        try:
            job = self.manager.job(job_id)
        except FallbackError as exc:
            return fmt.failure(exc, "Cancelling")
        job.cancel()
        return fmt.progress_markdown(job.status()) + "  \nCancel asked: it stops at its next step."

    def speed_chart(self) -> pd.DataFrame:
        """Generation tokens/s of the latest benchmark of each model."""
        return charts.speed_chart_frame(fmt.latest_per_model(self.manager.benchmark_history()))

    def benchmark_results(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The latest saved benchmark of each model and the chart (shown before any run)."""
        latest = fmt.latest_per_model(self.manager.benchmark_history())
        return fmt.benchmark_frame(latest), charts.speed_chart_frame(latest)

    # -- try the fallback ----------------------------------------------------------------

    def send(self, message: str, primary_url: str, max_tokens: float) -> tuple[str, str, pd.DataFrame]:
        """One answer through the failover chain: who answered, and every attempt with its time."""
        message, primary_url = fmt.text(message), fmt.text(primary_url)
        if not message:
            gr.Warning("Type a message to send.")
            return "", "Type a message to send.", fmt.attempts_frame([])
        try:
            result = self.manager.chat([{"role": "user", "content": message}],
                                       primary=primary_url or None,
                                       max_tokens=fmt.whole_number(max_tokens, "Max tokens") or 64)
        except AllTargetsFailed as exc:
            return "", fmt.failure(exc, "Sending"), fmt.attempts_frame(exc.attempts)
        except FallbackError as exc:
            return "", fmt.failure(exc, "Sending"), fmt.attempts_frame([])
        return result.text, fmt.chat_markdown(result), fmt.attempts_frame(result.attempts)


@dataclass
class ManagementTab:
    tab: gr.Tab
    current: gr.Markdown
    switch_to: gr.Dropdown
    test_model: gr.Dropdown
    settings_message: gr.Markdown
    get_model: GetModelSection
    main_api: MainApiSection


def build_management_tab(manager: FallbackManager, prefix: str = "fallback") -> ManagementTab:
    """Build the tab inside the caller's gr.Tabs context and bind its events."""
    eid = partial(fmt.element_id, prefix)
    h = ManagementHandlers(manager)
    with gr.Tab(TAB_LABEL, id=eid("management"), elem_id=eid("management")) as tab:
        gr.Markdown("## Model Management")
        current = gr.Markdown(elem_id=eid("mgmt-current"))
        available = gr.Dataframe(label="Available models", interactive=False, elem_id=eid("mgmt-models"))
        with gr.Row(equal_height=True):
            switch_to = gr.Dropdown(label="Model Name to Switch To", choices=[], allow_custom_value=True,
                                    scale=3, elem_id=eid("mgmt-switch-to"))
            refresh_models = gr.Button("🔄 Refresh Model List", scale=1, elem_id=eid("mgmt-refresh"))
            switch = gr.Button("🔄 Switch Model", variant="primary", scale=1, elem_id=eid("mgmt-switch"))

        get_model = build_get_model_section(eid)

        gr.Markdown("## VRAM Optimization")
        vram = gr.Markdown(elem_id=eid("mgmt-vram"))
        with gr.Row(equal_height=True):
            optimize = gr.Button("⚡ Optimize VRAM", variant="primary", elem_id=eid("mgmt-optimize"))
            auto_optimize = gr.Checkbox(label="Auto-optimize VRAM", elem_id=eid("mgmt-auto-optimize"),
                                        info="pick the optimal model at start and when free VRAM changes")
        optimize_result = gr.Markdown(elem_id=eid("mgmt-optimize-result"))
        ranking = gr.Dataframe(headers=fmt.RANK_COLUMNS, label="Model ranking", interactive=False,
                               wrap=True, elem_id=eid("mgmt-ranking"))

        main_api = build_main_api_section(eid)

        gr.Markdown("## Advanced Settings")
        with gr.Row():
            timeout = gr.Slider(5, 120, step=1, label="Fallback Timeout (seconds)",
                                elem_id=eid("set-timeout"))
            max_retries = gr.Slider(1, 10, step=1, label="Max Retries", elem_id=eid("set-retries"))
        with gr.Row():
            auto_switch = gr.Checkbox(label="Auto-switch on failure", elem_id=eid("set-auto-switch"))
            vram_monitoring = gr.Checkbox(label="Monitor VRAM usage", elem_id=eid("set-vram-monitoring"))
        with gr.Row():
            save = gr.Button("💾 Save Advanced Settings", variant="primary", elem_id=eid("set-save"))
            reset = gr.Button("🔄 Reset to Defaults", elem_id=eid("set-reset"))
        settings_message = gr.Markdown(elem_id=eid("set-message"))

        gr.Markdown("## Performance Testing")
        with gr.Row():
            test_model = gr.Dropdown(label="Model to Test", choices=[], allow_custom_value=True,
                                     elem_id=eid("bench-model"))
            prompt = gr.Textbox(DEFAULT_PROMPT, label="Test Prompt", lines=2, scale=2,
                                elem_id=eid("bench-prompt"))
        with gr.Row():
            run_one = gr.Button("🧪 Run Performance Test", variant="primary", elem_id=eid("bench-run"))
            run_all = gr.Button("📊 Benchmark All Models", elem_id=eid("bench-all"))
            cancel = gr.Button("⏹️ Cancel Benchmark", variant="stop", elem_id=eid("bench-cancel"))
        progress = gr.Markdown("No benchmark running.", elem_id=eid("bench-progress"))
        results = gr.Dataframe(headers=fmt.BENCH_COLUMNS, label="Benchmark results", interactive=False,
                               elem_id=eid("bench-results"))
        chart = compat.plot(gr.BarPlot, x="model", y="gen_tps", x_title="model", y_title="tokens/s",
                            title="Generation speed by model (latest benchmark)",
                            elem_id=eid("bench-chart"))
        job_id = gr.State(None)
        poll = compat.Poll(POLL_S)

        gr.Markdown("## Try the fallback")
        with gr.Row():
            message = gr.Textbox(label="Message", placeholder="Hello! Who are you?", scale=3,
                                 elem_id=eid("try-message"))
            primary_url = gr.Textbox(label="Primary API URL (blank: the configured one)", scale=2,
                                     placeholder="http://127.0.0.1:5000/v1", elem_id=eid("try-primary"))
            max_tokens = gr.Slider(8, 512, value=64, step=8, label="Max tokens", scale=1)
        send = gr.Button("💬 Send through the fallback", variant="primary", elem_id=eid("try-send"))
        answer = gr.Textbox(label="Answer", interactive=False, lines=3, elem_id=eid("try-answer"))
        answered_by = gr.Markdown(elem_id=eid("try-summary"))
        attempts = gr.Dataframe(headers=fmt.ATTEMPT_COLUMNS, label="Attempts", interactive=False,
                                elem_id=eid("try-attempts"))

    settings_controls = [timeout, max_retries, auto_switch, vram_monitoring]
    vram_outputs = [vram, auto_optimize, ranking]
    model_outputs = [current, available, switch_to, test_model]
    get_model.bind(manager, h.refresh_models, model_outputs)
    for fn, outputs in ((h.refresh_models, model_outputs), (h.vram_status, vram_outputs),
                        (h.benchmark_results, [results, chart])):
        compat.on_show(tab, fn, outputs)
        compat.on_page_load(fn, outputs)
    compat.redraw_on_show(tab, [get_model.found, attempts])  # filled by a search, a try
    # Settings load with the page only: coming back to the tab must not undo unsaved edits.
    compat.on_page_load(h.load_settings, [*settings_controls, auto_optimize])
    compat.on_page_load(h.settings_problems, [settings_message])
    refresh_models.click(h.refresh_models, outputs=model_outputs, api_name="fallback_refresh_models")
    switch.click(h.switch_model, inputs=switch_to, outputs=current, api_name="fallback_switch_model"
                 ).then(h.vram_status, outputs=vram_outputs, **compat.PRIVATE)
    optimize.click(h.optimize, outputs=[optimize_result, ranking, current], api_name="fallback_optimize"
                   ).then(h.vram_status, outputs=vram_outputs, **compat.PRIVATE)
    auto_optimize.input(h.save_auto_optimize, inputs=auto_optimize, outputs=[optimize_result, auto_optimize],
                        **compat.PRIVATE).then(h.vram_status, outputs=vram_outputs, **compat.PRIVATE)
    save.click(h.save_settings, inputs=settings_controls, outputs=[settings_message, *settings_controls],
               api_name="fallback_save_settings")
    main_api.bind(manager, tab)
    reset.click(h.reset_settings, outputs=[settings_message, *settings_controls, auto_optimize],
                api_name="fallback_reset_settings")
    run_one.click(h.start_benchmark, inputs=[test_model, prompt, job_id],
                  outputs=[job_id, progress, poll.component], api_name="fallback_benchmark")
    run_all.click(h.start_benchmark_all, inputs=[prompt, job_id], outputs=[job_id, progress, poll.component],
                  api_name="fallback_benchmark_all")
    poll.on_tick(h.poll_benchmark, inputs=[job_id], outputs=[progress, results, chart, poll.component])
    cancel.click(h.cancel_benchmark, inputs=job_id, outputs=progress, api_name="fallback_cancel_benchmark")
    send.click(h.send, inputs=[message, primary_url, max_tokens], outputs=[answer, answered_by, attempts],
               api_name="fallback_try_chat")
    return ManagementTab(tab=tab, current=current, switch_to=switch_to, test_model=test_model,
                         settings_message=settings_message, get_model=get_model, main_api=main_api)
