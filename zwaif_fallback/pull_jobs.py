"""Downloads from the Hub as the manager runs them: whole, or as a background job.

``pull.pull`` fetches one model; this module picks where its files go (the settings of
the moment), has discovery read the folder again once they are there, and keeps the one
download that runs as a job at a time. The job's progress is the fraction of the current
file downloaded; its cancel stops the download at its next chunk and keeps the partial
file for the next pull.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import Busy, DownloadCancelled

if TYPE_CHECKING:
    from .jobs import Job, Progress
    from .model_info import ModelInfo
    from .pull import ProgressCallback, PullProgress
    from .settings import FallbackSettings

__all__ = ["Pulls"]


class Pulls:
    """Runs downloads, and keeps the latest one started as a job. Thread-safe.

    Args:
        settings: the settings now (``models_dir``, ``download_to``).
        on_pulled: called after each download, before it returns (discovery refreshes).
    """

    def __init__(self, *, settings: Callable[[], FallbackSettings],
                 on_pulled: Callable[[], object]) -> None:
        self._settings = settings
        self._on_pulled = on_pulled
        self._job: Job[ModelInfo] | None = None  # the latest download started by start()
        self._lock = threading.Lock()

    def pull(self, spec: str, *, progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None) -> ModelInfo:
        """``FallbackManager.pull_model``: the downloaded model."""
        from .hub import Hub
        from .pull import pull

        settings = self._settings()
        with Hub() as hub:
            model = pull(spec, hub=hub, models_dir=settings.models_dir,
                         download_to=settings.download_to, progress=progress, cancel=cancel)
        self._on_pulled()
        return model

    def start(self, spec: str, *, progress: ProgressCallback | None = None) -> Job[ModelInfo]:
        """``FallbackManager.start_pull``: ``pull`` as a job; one at a time.

        Raises:
            Busy: the job started last is still running.
        """
        from .jobs import Cancelled, Job

        def work(advance: Progress) -> ModelInfo:
            def report(p: PullProgress) -> None:
                if progress is not None:
                    progress(p)
                try:
                    advance(p.downloaded_bytes / p.total_bytes if p.total_bytes else 0.0, p.file)
                except Cancelled:
                    pass  # the download sees the same cancel at its next chunk and stops itself

            try:
                return self.pull(spec, progress=report, cancel=advance.cancel_event)
            except DownloadCancelled as exc:
                raise Cancelled(str(exc)) from exc

        with self._lock:
            running = self._job
            if running is not None and running.status().state == "running":
                raise Busy(f"{running.name} is still running: wait for it to end or cancel it")
            self._job = Job(f"download {spec}", work)
            return self._job

    def close(self) -> None:
        """Cancel the running job; its partial file stays for the next pull."""
        if self._job is not None:
            self._job.cancel()
