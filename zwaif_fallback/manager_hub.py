"""What ``FallbackManager`` does with the Hugging Face Hub: which GGUF files there would fit
this machine, known from their headers before any download, and fetching one, verified. A
base class of the facade, so that these methods and their docstrings sit together; the
work is done by ``recommend`` and ``pull_jobs``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .jobs import Job
    from .local import LocalModels
    from .model_info import ModelInfo
    from .pull import ProgressCallback
    from .pull_jobs import Pulls
    from .recommend import Recommendation

__all__ = ["FromTheHub"]


class FromTheHub:
    """``FallbackManager``'s recommendations and downloads (see the module)."""

    _local: LocalModels
    _pulls: Pulls

    def recommend_models(self, models: Sequence[str] | None = None, *,
                         n_ctx: int | None = None) -> list[Recommendation]:
        """Which GGUF files on the Hugging Face Hub would fit this machine now, best first,
        known before downloading: each file's header alone is read (HTTP ranges, a few MiB),
        planned like a local model, and ranked like ``optimize`` (quality from the parameter
        count and the quantization's known perplexity cost, then speed and headroom).

        Args:
            models: ``REPO/FILE.gguf``, a repo id (its Q4_K_M, Q5_K_M and Q8_0 files) or the
                URL of a .gguf file; None: the curated list (zwaif_fallback/data/recommended.json).
            n_ctx: context size to plan for; None uses ``settings.n_ctx``, capped at each model's.

        Returns:
            One ``Recommendation`` a file; ``verdict`` "unknown" with the reason for a file
            that could not be read.

        Raises:
            HubOffline: HF_HUB_OFFLINE is set; nothing was fetched.
            HubUnavailable, HubFileNotFound, HubAccessDenied: no file could be read, and why.
            InvalidSettings: a model is none of the forms above, or n_ctx is out of range.
        """
        from .recommend import recommend

        self._local.check_args(n_ctx, None, "f16", None)
        return recommend(models, fit=lambda model: self._local.fit(model, n_ctx=n_ctx, on_disk=False))

    def pull_model(self, spec: str, *, progress: ProgressCallback | None = None,
                   cancel: threading.Event | None = None) -> ModelInfo:
        """Download one model file from the Hub to ``settings.download_to`` (``models_dir``, or
        the Hugging Face cache), verified against the Hub's sha256 before discovery can see it;
        an interrupted download resumes. Discovery lists it at once.

        Args:
            spec: ``REPO/FILE.gguf`` (or ``.safetensors``), a repo id, a URL, or a curated
                file's name.
            progress: called with a ``PullProgress`` (bytes, rate, time left) as it goes.
            cancel: set it from another thread to stop; the partial file is kept.

        Returns:
            The downloaded model, as ``discover_models`` lists it.

        Raises:
            InvalidSettings: a pickle file or another file type, or a spec naming no file.
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: the Hub said no.
            NotEnoughSpace: the disk is too small; nothing was fetched.
            InvalidModelFile: the sha256 differs from the Hub's; the file was deleted.
            DownloadCancelled: cancelled or interrupted; pull again to resume.
        """
        return self._pulls.pull(spec, progress=progress, cancel=cancel)

    def start_pull(self, spec: str, *, progress: ProgressCallback | None = None) -> Job[ModelInfo]:
        """Run ``pull_model`` as a background job the UI polls; one download at a time.

        The job's progress is the fraction of the current file downloaded; ``progress`` gets
        each ``PullProgress`` (bytes, rate, time left) as in ``pull_model``. ``cancel()``
        stops it at its next chunk and keeps the partial file for the next pull (the job ends
        "cancelled"); a failure ends it "failed" with the error's one line. Its result is the
        downloaded model.

        Raises:
            Busy: a download started here is still running: wait for it or cancel it.
        """
        return self._pulls.start(spec, progress=progress)
