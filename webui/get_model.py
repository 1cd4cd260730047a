"""The "Get a model" section of the Management tab: find GGUF models on the Hugging Face Hub
that fit this PC, download one, and switch to it.

"Find models that fit" ranks the curated list, or the models typed in the search box, from
each file's header alone (``manager.recommend_models``: nothing big is downloaded). The
download runs as the manager's background job (``manager.start_pull``); a poll reads it once
a second, and when it ends the models table and both model dropdowns are refreshed, with the
new model chosen in the switch dropdown. Cancel keeps the part downloaded: downloading the
same file again resumes it. The downloads this section started are kept on its handlers, with
the last progress each reported; the session's gr.State holds only the job's id.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr
import pandas as pd

from zwaif_fallback import Busy, FallbackError, FallbackManager, Job, JobStatus, ModelInfo
from zwaif_fallback.pull import PullProgress

from . import compat
from . import format as fmt

if TYPE_CHECKING:
    from zwaif_fallback.recommend import Recommendation

__all__ = ["GetModelHandlers", "GetModelSection", "build_get_model_section"]

POLL_S = 1.0
#: finished downloads whose ids a page may still poll; one runs at a time, so a few suffice
KEEP_DOWNLOADS = 8
#: what a person looks for first on the left: the file, whether it fits, how big it is
RECOMMEND_COLUMNS = ["#", "model", "fits this PC", "size", "parameters", "quantization", "license", "why",
                     "repo"]
VERDICT_LABELS = {"gpu": "🟢 fits the GPU", "partial": "🟡 partly on the GPU", "cpu": "🔵 CPU only (slower)",
                  "none": "🔴 won't fit", "unknown": "⚪ couldn't check"}
NO_DOWNLOAD = "No download running."

#: refreshes the Management tab's model outputs (current, table, both dropdowns), choosing a model
RefreshModels = Callable[[str | None], tuple[Any, ...]]


class LatestProgress:
    """The last ``PullProgress`` a download reported; its thread calls this, the poll reads ``value``."""

    def __init__(self) -> None:
        self.value: PullProgress | None = None

    def __call__(self, progress: PullProgress) -> None:
        self.value = progress  # one reference replaced: a reader sees the old one or the new one


class GetModelHandlers:
    """The section's event handlers: each calls the manager and formats what it returns.

    Args:
        manager: finds, downloads and lists the models.
        refresh_models: the Management tab's model outputs, given a model to choose to switch to.
    """

    def __init__(self, manager: FallbackManager, refresh_models: RefreshModels) -> None:
        self.manager = manager
        self.refresh_models = refresh_models
        self._downloads: dict[str, tuple[Job[ModelInfo], LatestProgress]] = {}  # oldest first
        self._lock = threading.Lock()

    def find(self, query: str) -> tuple[str, pd.DataFrame, dict[str, Any]]:
        """Rank the curated list, or the models typed (space- or comma-separated), for this PC.

        Returns the summary line, the ranked table, and the download dropdown holding the files
        that could be read, the best one that fits chosen.
        """
        typed = [part for part in re.split(r"[\s,]+", fmt.text(query)) if part]
        try:
            found = self.manager.recommend_models(typed or None)
        except FallbackError as exc:
            return fmt.failure(exc, "Finding models"), gr.skip(), gr.skip()
        readable = [r for r in found if r.verdict != "unknown"]
        fitting = [r for r in readable if r.verdict != "none"]
        best = download_spec(fitting[0]) if fitting else None
        return (found_markdown(found), recommendations_frame(found),
                gr.update(choices=[download_spec(r) for r in readable], value=best))

    def start_download(self, spec: str | None, job_id: str | None) -> tuple[Any, ...]:
        """Download ``spec`` in the background; returns the job id and starts the poll.

        A download already running (started from another browser tab too) is shown instead.
        """
        spec = fmt.text(spec)
        if not spec:
            gr.Warning("Choose the model to download (press Find models that fit), or type one.")
            return job_id, gr.skip(), gr.skip()
        latest = LatestProgress()
        try:
            job = self.manager.start_pull(spec, progress=latest)
        except Busy as exc:
            running = self._running()
            if running is None:
                return job_id, fmt.failure(exc, "Starting the download"), gr.skip()
            gr.Warning(f"{exc}. Showing its progress.")
            job, latest = running
        except FallbackError as exc:
            return job_id, fmt.failure(exc, "Starting the download"), gr.skip()
        with self._lock:
            self._downloads[job.id] = job, latest
            for old in list(self._downloads)[:-KEEP_DOWNLOADS]:
                del self._downloads[old]
        return job.id, download_markdown(job.status(), latest.value), compat.timer_update(active=True)

    def poll_download(self, job_id: str | None) -> tuple[Any, ...]:
        """The download's progress; when it has ended, what happened, the models refreshed
        (the new one chosen to switch to), and the poll stopped."""
        off = compat.timer_update(active=False)
        found = self._download(job_id)
        if found is None:
            return (NO_DOWNLOAD, gr.skip(), gr.skip(), gr.skip(), gr.skip(), off)
        job, latest = found
        status = job.status()
        if status.state == "running":
            return (download_markdown(status, latest.value, stopping=job.cancel_event.is_set()),
                    gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip())
        model = job.result()
        refreshed = self.refresh_models(model.name if model is not None and model.usable else None)
        return (download_markdown(status, latest.value, model), *refreshed, off)

    def cancel_download(self, job_id: str | None) -> str:
        """Ask the download to stop; the part downloaded is kept for the next try."""
        found = self._download(job_id) or self._running()
        if found is None or found[0].status().state != "running":
            return NO_DOWNLOAD
        job, latest = found
        job.cancel()
        return download_markdown(job.status(), latest.value, stopping=True)

    def _download(self, job_id: str | None) -> tuple[Job[ModelInfo], LatestProgress] | None:
        with self._lock:
            return self._downloads.get(job_id) if job_id else None

    def _running(self) -> tuple[Job[ModelInfo], LatestProgress] | None:
        with self._lock:
            return next((d for d in self._downloads.values() if d[0].status().state == "running"), None)


# -- formatting (pure) ----------------------------------------------------------------------


def download_spec(r: Recommendation) -> str:
    """What ``start_pull`` takes for a ranked file: ``REPO/FILE``, or its URL off the Hub."""
    return f"{r.repo}/{r.file}" if r.repo else r.url


def verdict_label(r: Recommendation) -> str:
    label = VERDICT_LABELS.get(r.verdict, r.verdict)
    if r.verdict != "partial":
        return label
    # llama.cpp's count: the output layer and the repeating ones, as n_gpu_layers takes it
    return f"{label} ({r.gpu_layers} of {r.n_layers + 1} layers)" if r.n_layers else \
        f"{label} ({r.gpu_layers} layers)"


def recommendations_frame(found: Sequence[Recommendation]) -> pd.DataFrame:
    """One row per file, best first, with how it would run here and why."""
    rows = [[i, r.file, verdict_label(r), fmt.size(r.size_bytes / 2**20) if r.size_bytes else "–",
             parameters_text(r.params), r.quantization or "–", r.license or "–", r.reason, r.repo or r.url]
            for i, r in enumerate(found, start=1)]
    return pd.DataFrame(rows, columns=RECOMMEND_COLUMNS)


def parameters_text(params: int | None) -> str:
    if not params:
        return "–"
    return f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"


def found_markdown(found: Sequence[Recommendation]) -> str:
    """A line on the ranking: how many fit, the best one, and what to do next."""
    fitting = [r for r in found if r.verdict not in ("none", "unknown")]
    unread = sum(r.verdict == "unknown" for r in found)
    skipped = f" ({unread} could not be checked: see why in the table)" if unread else ""
    if not fitting:
        return f"⚠️ None of the {len(found)} models fits this PC now{skipped}."
    best = fitting[0]
    return (f"✅ {len(fitting)} of {len(found)} models fit this PC{skipped}. Best: **{best.file}** "
            f"({verdict_label(best)}). Choose one below and press **Download**.")


def download_markdown(status: JobStatus, latest: PullProgress | None, model: ModelInfo | None = None,
                      *, stopping: bool = False) -> str:
    """The download in a line: a progress bar with bytes, speed and time left while it runs
    (and a second line once a cancel was asked), then what happened and what to do next."""
    filled = int(round(status.progress * 20))
    bar = "█" * filled + "░" * (20 - filled)
    if status.state == "running":
        line = f"⏳ **Downloading** `{bar}` {status.progress:.0%} · {transfer_text(latest)}"
        return line + ("  \n⏹️ Cancel asked: it stops at its next chunk and keeps the part downloaded."
                       if stopping else "")
    if status.state == "cancelled":
        return (f"⏹️ **Download cancelled** at {status.progress:.0%}. The part downloaded is kept: "
                "press **Download** again to resume where it stopped.")
    if status.state == "failed" or model is None:
        return f"❌ **Download failed:** {status.error or status.message}"
    if not model.usable:
        return f"⚠️ Downloaded **{model.name}** to `{model.path}`, but it cannot be used: {model.error}"
    return (f"✅ Downloaded **{model.name}** ({fmt.size(model.size_mb)}); it is now in the models "
            "table. It is chosen under *Model Name to Switch To*: press **Switch Model** to use it.")


def transfer_text(p: PullProgress | None) -> str:
    """"file 1 of 2: REPO/FILE: 1.2 GiB of 4 GiB · 25 MiB/s · 2 min 5 s left"."""
    if p is None:
        return "asking the Hub for the file…"
    done = fmt.size(p.downloaded_bytes / 2**20)
    if p.total_bytes:
        done += f" of {fmt.size(p.total_bytes / 2**20)}"
    left = f"{duration_text(p.eta_s)} left" if p.eta_s is not None else "time left unknown"
    part = f"file {p.part} of {p.parts}: " if p.parts > 1 else ""
    resumed = f" · resumed at {fmt.size(p.resumed_from_bytes / 2**20)}" if p.resumed_from_bytes else ""
    return f"{part}{p.file}: {done} · {fmt.size(p.rate_bytes_per_s / 2**20)}/s · {left}{resumed}"


def duration_text(seconds: float) -> str:
    """"45 s", "2 min 5 s", "1 h 10 min": a time left as a person reads it."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


# -- components ------------------------------------------------------------------------------


@dataclass
class GetModelSection:
    """The section's components; ``bind`` wires them once the tab's model outputs exist."""

    search: gr.Textbox
    find: gr.Button
    message: gr.Markdown
    found: gr.Dataframe
    choice: gr.Dropdown
    download: gr.Button
    cancel: gr.Button
    progress: gr.Markdown
    job_id: gr.State
    poll: compat.Poll

    def bind(self, manager: FallbackManager, refresh_models: RefreshModels,
             model_outputs: Sequence[gr.components.Component]) -> GetModelHandlers:
        """Bind the events; ``model_outputs`` are what ``refresh_models`` returns, in order."""
        h = GetModelHandlers(manager, refresh_models)
        found_outputs = [self.message, self.found, self.choice]
        self.find.click(h.find, inputs=self.search, outputs=found_outputs, api_name="fallback_find_models")
        self.search.submit(h.find, inputs=self.search, outputs=found_outputs, **compat.PRIVATE)
        self.download.click(h.start_download, inputs=[self.choice, self.job_id],
                            outputs=[self.job_id, self.progress, self.poll.component],
                            api_name="fallback_download_model")
        self.poll.on_tick(h.poll_download, inputs=[self.job_id],
                          outputs=[self.progress, *model_outputs, self.poll.component])
        self.cancel.click(h.cancel_download, inputs=self.job_id, outputs=self.progress,
                          api_name="fallback_cancel_download")
        return h


def build_get_model_section(eid: Callable[[str], str]) -> GetModelSection:
    """Build the section's components inside the caller's tab; ``eid`` makes an element id."""
    gr.Markdown("## Get a model\nFind models on the Hugging Face Hub that fit this PC, checked "
                "against its GPU and memory before anything is downloaded, then download one.")
    with gr.Row(equal_height=True):
        search = gr.Textbox(label="Search the Hub (optional)", scale=3, elem_id=eid("get-search"),
                            placeholder="blank: our list of good chat models; or a repo such as "
                                        "bartowski/gemma-2-2b-it-GGUF, REPO/FILE.gguf or a link")
        find = gr.Button("🔍 Find models that fit", variant="primary", scale=1, elem_id=eid("get-find"))
    message = gr.Markdown(elem_id=eid("get-message"))
    found = gr.Dataframe(headers=RECOMMEND_COLUMNS, label="Models for this PC, best first",
                         interactive=False, wrap=True, elem_id=eid("get-found"))
    with gr.Row(equal_height=True):
        choice = gr.Dropdown(label="Model to download", choices=[], allow_custom_value=True, scale=3,
                             info="one from the list above, or type REPO/FILE.gguf",
                             elem_id=eid("get-choice"))
        download = gr.Button("📥 Download", variant="primary", scale=1, elem_id=eid("get-download"))
        cancel = gr.Button("⏹️ Cancel Download", variant="stop", scale=1, elem_id=eid("get-cancel"))
    progress = gr.Markdown(NO_DOWNLOAD, elem_id=eid("get-progress"))
    return GetModelSection(search=search, find=find, message=message, found=found, choice=choice,
                           download=download, cancel=cancel, progress=progress, job_id=gr.State(None),
                           poll=compat.Poll(POLL_S))
