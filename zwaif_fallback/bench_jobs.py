"""Benchmark runs of the catalog's models: one, all, or as background jobs the UI polls.

``bench.py`` measures one model on one backend; this module picks the models, checks
that each fits, gives it a fresh backend, saves the result and keeps the jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .bench import BenchmarkResult, benchmark_model
from .errors import IncompatibleModel, JobNotFound
from .jobs import Job, Progress

if TYPE_CHECKING:
    from .local import LocalModels
    from .store import Store

__all__ = ["BenchmarkJob", "BenchmarkJobs"]

MAX_JOBS = 20

#: a job that benchmarks one model (its result) or all of them (a list)
BenchmarkJob = Job[BenchmarkResult | list[BenchmarkResult]]


class BenchmarkJobs:
    """Runs benchmarks and keeps the last ``MAX_JOBS`` finished jobs. Thread-safe.

    Args:
        local: the manager's local models (which models, their fits, fresh backends).
        vram: per-process VRAM in MiB for a pid, None where unknown.
        history: the store the results are saved in.
    """

    def __init__(self, *, local: LocalModels, vram: Callable[[int], float | None],
                 history: Callable[[], Store]) -> None:
        self._local = local
        self._vram = vram
        self._history = history
        self._jobs: dict[str, BenchmarkJob] = {}  # oldest first
        self._lock = threading.Lock()

    def benchmark(self, name: str, prompt: str | None = None,
                  progress: Callable[[float, str], None] | None = None) -> BenchmarkResult:
        model = self._local.valid(name)
        fit = self._local.fit(model)
        if not fit.compatible:
            raise IncompatibleModel(f"{model.name} cannot be benchmarked here: {fit.reason}")
        result = benchmark_model(model, self._local.make_backend(model), prompt=prompt,
                                 vram=self._vram, progress=progress)
        self._history().add_benchmark(result.model_dump())
        self._local.forget_ranking()
        return result

    def benchmark_all(self, prompt: str | None = None,
                      progress: Callable[[float, str], None] | None = None) -> list[BenchmarkResult]:
        models = self._local.discover()
        results = []
        for i, model in enumerate(models):
            def step(fraction: float, message: str, i: int = i, name: str = model.name) -> None:
                if progress is not None:
                    progress((i + fraction) / len(models), f"{name}: {message}")

            fit = self._local.fit(model) if model.usable else None
            if fit is None or not fit.compatible:
                why = model.error if fit is None else fit.reason
                results.append(BenchmarkResult(model=model.name, ok=False, error=f"skipped: {why}"))
                continue
            results.append(self.benchmark(model.name, prompt, step))
        if progress is not None:
            progress(1.0, "done")
        return results

    def start(self, name: str | None = None, prompt: str | None = None) -> BenchmarkJob:
        if name is not None:
            self._local.valid(name)  # refuse a bad name now, not inside the job

        def work(progress: Progress) -> BenchmarkResult | list[BenchmarkResult]:
            if name is None:
                return self.benchmark_all(prompt, progress)
            return self.benchmark(name, prompt, progress)

        job: BenchmarkJob = Job("benchmark " + (name or "all models"), work)
        with self._lock:
            self._jobs[job.id] = job
            finished = [k for k, j in self._jobs.items() if j.status().state != "running"]
            for old in finished[:max(len(self._jobs) - MAX_JOBS, 0)]:  # forget the oldest
                del self._jobs[old]
        return job

    def job(self, job_id: str) -> BenchmarkJob:
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise JobNotFound(job_id)
        return job

    def jobs(self) -> list[BenchmarkJob]:
        with self._lock:
            return list(self._jobs.values())
