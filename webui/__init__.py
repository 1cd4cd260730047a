"""Gradio settings tabs for zwaif-fallback: thin wiring from components to FallbackManager calls.

    from webui import build_tabs
    with gr.Blocks() as host_ui:
        with gr.Tab("Settings"):
            build_tabs(manager)
"""

from .app import FallbackTabs, build_app, build_tabs, launch

__all__ = ["FallbackTabs", "build_app", "build_tabs", "launch"]
