"""The "Advanced Fallback Diagnostics" tab: the machine, the models found, and what fits."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr
import pandas as pd

from zwaif_fallback import Compatibility, FallbackError, FallbackManager

from . import charts, compat
from . import format as fmt

__all__ = ["DiagnosticsHandlers", "DiagnosticsTab", "build_diagnostics_tab"]

TAB_LABEL = "Advanced Fallback Diagnostics"
KV_TYPES = ["f16", "q8_0", "q4_0"]


class DiagnosticsHandlers:
    """The tab's event handlers: each calls the manager and formats what it returns."""

    def __init__(self, manager: FallbackManager) -> None:
        self.manager = manager

    def refresh(self) -> tuple[str, dict[str, Any], pd.DataFrame, dict[str, Any]]:
        """Status overview, the GPUs (hidden where there are none), the models table with fit
        verdicts, and the test dropdown's choices."""
        try:
            status = self.manager.system_status(refresh=True)
            models = self.manager.discover_models(refresh=True)
        except FallbackError as exc:
            return fmt.failure(exc, "Refreshing diagnostics"), gr.skip(), gr.skip(), gr.skip()
        fits: dict[str, Compatibility | str] = {}
        for model in models:
            if model.usable:
                try:
                    fits[model.name] = self.manager.check_compatibility(model.name)
                except FallbackError as exc:  # one unreadable model must not hide the others
                    fits[model.name] = f"⚠️ {exc}"
        # Without a GPU the status says so, and an empty table would only look broken (compat.py).
        gpus = gr.update(value=fmt.gpus_frame(status), visible=bool(status.gpus))
        return (fmt.status_markdown(status, self.manager.current_model), gpus,
                fmt.models_frame(models, fits), gr.update(choices=fmt.model_choices(models)))

    def test_compatibility(self, name: str | None, n_ctx: float | None, kv_type: str,
                           flash_attn: bool, free_vram_mb: float | None) -> tuple[str, pd.DataFrame]:
        """The verdict for one model (a name or a path), and where its memory goes."""
        name = fmt.text(name)
        if not name:
            gr.Warning("Choose a model, or type a model name or a path to a .gguf file.")
            return "Choose a model, or type a model name or a path to a .gguf file.", gr.skip()
        try:
            fit = self.manager.check_compatibility(
                name, n_ctx=fmt.whole_number(n_ctx, "Context") or None, kv_type=kv_type or "f16",
                flash_attn=bool(flash_attn),
                free_vram_mb=fmt.whole_number(free_vram_mb, "Free VRAM"))
        except FallbackError as exc:
            return fmt.failure(exc, f"Testing {name!r}"), gr.skip()
        return fmt.compatibility_markdown(fit), charts.memory_frame(fit)


@dataclass
class DiagnosticsTab:
    tab: gr.Tab
    status: gr.Markdown
    gpus: gr.Dataframe
    models: gr.Dataframe
    model_name: gr.Dropdown
    result: gr.Markdown
    memory: gr.BarPlot


def build_diagnostics_tab(manager: FallbackManager, prefix: str = "fallback") -> DiagnosticsTab:
    """Build the tab inside the caller's gr.Tabs context and bind its events."""
    eid = partial(fmt.element_id, prefix)
    handlers = DiagnosticsHandlers(manager)
    with gr.Tab(TAB_LABEL, id=eid("diagnostics"), elem_id=eid("diagnostics")) as tab:
        status = gr.Markdown("Loading the system status…", elem_id=eid("diag-status"))
        gpus = gr.Dataframe(headers=fmt.GPU_COLUMNS, label="GPUs", interactive=False, visible=False,
                            elem_id=eid("diag-gpus"))
        refresh = gr.Button("Refresh Diagnostics", variant="primary", elem_id=eid("diag-refresh"))
        models = gr.Dataframe(headers=fmt.MODEL_COLUMNS, label="Discovered models", interactive=False,
                              wrap=True, elem_id=eid("diag-models"))
        gr.Markdown("### Model compatibility")
        with gr.Row():
            model_name = gr.Dropdown(label="Model Name for Compatibility Test", choices=[],
                                     allow_custom_value=True, scale=3, elem_id=eid("diag-model"),
                                     info="a discovered model, or type a name or a path to a .gguf file")
            test = gr.Button("Test Model Compatibility", variant="primary", scale=1,
                             elem_id=eid("diag-test"))
        with gr.Accordion("Options: context, KV cache, what-if VRAM", open=False):
            with gr.Row():
                n_ctx = gr.Number(label="Context size (blank: the setting)", precision=0, minimum=0)
                kv_type = gr.Dropdown(KV_TYPES, value="f16", label="KV cache type")
                flash_attn = gr.Checkbox(label="Flash attention")
                free_vram = gr.Number(label="Pretend free VRAM (MiB, blank: measured)", minimum=0)
        result = gr.Markdown(elem_id=eid("diag-result"))
        memory = compat.plot(gr.BarPlot, value=charts.memory_frame(None), x="memory", y="size_mb",
                             color="part", title="Memory breakdown (estimate)", x_title="where",
                             y_title="MiB", elem_id=eid("diag-memory"))

    outputs = [status, gpus, models, model_name]
    refresh.click(handlers.refresh, outputs=outputs, api_name="fallback_refresh_diagnostics")
    compat.on_show(tab, handlers.refresh, outputs)
    compat.on_page_load(handlers.refresh, outputs)
    test.click(handlers.test_compatibility, inputs=[model_name, n_ctx, kv_type, flash_attn, free_vram],
               outputs=[result, memory], api_name="fallback_test_compatibility")
    return DiagnosticsTab(tab=tab, status=status, gpus=gpus, models=models, model_name=model_name,
                          result=result, memory=memory)
