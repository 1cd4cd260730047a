"""Measure and steer: benchmarks, the optimal model, health, auto-optimization.

The manager's facade methods delegate here. This module works on the manager's
own pieces (its plans, catalog, pool, store), so it takes the manager itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .backends.base import LocalBackend
from .bench import BenchmarkResult, benchmark_model
from .errors import IncompatibleModel, InvalidSettings
from .fit import Compatibility
from .health import HealthInputs, HealthReport, Optimization, health_report, rank_models
from .jobs import Job, Progress
from .model_info import ModelInfo

if TYPE_CHECKING:
    from .manager import FallbackManager

__all__ = ["Steering"]

log = logging.getLogger(__name__)

MAX_JOBS = 20


class Steering:
    """Benchmarks, ranking, health and the auto-optimizer of one manager."""

    def __init__(self, manager: FallbackManager) -> None:
        self._m = manager
        self.jobs: dict[str, Job[Any]] = {}  # oldest first
        self._jobs_lock = threading.Lock()

    def benchmark(self, name: str, prompt: str | None = None,
                  progress: Callable[[float, str], None] | None = None) -> BenchmarkResult:
        """Measure one model's speed, memory and quality (it loads its own copy), and save it.

        Raises:
            ModelNotFound, InvalidModelFile, IncompatibleModel: before anything is loaded.
        """
        model = self._m._valid(name)
        fit = self._m._local.plan(model)
        if not fit.compatible:
            raise IncompatibleModel(f"{model.name} cannot be benchmarked here: {fit.reason}")
        backend = self._m._local.make_backend(model)
        if not isinstance(backend, LocalBackend):  # pragma: no cover - every local backend is one
            raise IncompatibleModel(f"{model.name} is not a local model")
        result = benchmark_model(model, backend, prompt=prompt, vram=self._m._probe.process_vram_mb,
                                 progress=progress)
        self._m._telemetry.store.add_benchmark(result.model_dump())
        self._m._local.forget_ranking()
        return result

    def benchmark_all(self, prompt: str | None = None,
                      progress: Callable[[float, str], None] | None = None) -> list[BenchmarkResult]:
        """Benchmark every compatible model; incompatible and invalid ones come back as skipped."""
        models = [m for m in self._m.discover_models() if m.format != "remote"]
        results = []
        for i, model in enumerate(models):
            def step(fraction: float, message: str, i: int = i, name: str = model.name) -> None:
                if progress is not None:
                    progress((i + fraction) / len(models), f"{name}: {message}")

            fit = self._m._local.plan(model) if model.valid else None
            if fit is None or not fit.compatible:
                why = model.error if fit is None else fit.reason
                results.append(BenchmarkResult(model=model.name, ok=False, error=f"skipped: {why}"))
                continue
            results.append(self.benchmark(model.name, prompt, step))
        if progress is not None:
            progress(1.0, "done")
        return results

    def start_benchmark(self, name: str | None = None, prompt: str | None = None) -> Job[Any]:
        """Run ``benchmark`` (or ``benchmark_all`` when name is None) as a background job."""
        if name is not None:
            self._m._valid(name)  # refuse a bad name now, not inside the job

        def work(progress: Progress) -> Any:
            if name is None:
                return self.benchmark_all(prompt, progress)
            return self.benchmark(name, prompt, progress)

        job: Job[Any] = Job("benchmark " + (name or "all models"), work)
        with self._jobs_lock:
            self.jobs[job.id] = job
            finished = [k for k, j in self.jobs.items() if j.status().state != "running"]
            for old in finished[:max(len(self.jobs) - MAX_JOBS, 0)]:  # forget the oldest
                del self.jobs[old]
        return job

    def job(self, job_id: str) -> Job[Any]:
        """A background job by id. Raises InvalidSettings for an unknown id."""
        with self._jobs_lock:
            job = self.jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise InvalidSettings(f"no job with id {job_id!r}")
        return job

    def optimize(self, apply: bool = True) -> Optimization:
        """Rank the local models (quality first, then speed and headroom) and, with ``apply``,
        switch to the best one."""
        ranking = rank_models(self.candidates())
        best = next((e for e in ranking if e.compatible), None)
        current = self._m._pool.current
        switched = False
        if best is None:
            return Optimization(selected=None, switched=False, ranking=ranking,
                                reason="no local model fits this machine")
        if apply and (current is None or current.name != best.model):
            self._m.switch_model(best.model)
            switched = True
        why = f"{best.model} scores {best.score:.0f}: {best.reason}"
        return Optimization(selected=best.model, switched=switched, ranking=ranking, reason=why)

    def health(self) -> HealthReport:
        """The system's health, 0-100, with its factors and recommendations. Changes nothing."""
        status = self._m.system_status()
        current = self._m._pool.current
        current_fit = self._m._local.plan(current) if current is not None else None
        breakers = self._m.breaker_states()
        primary = self._m.settings.primary_url
        history = [b["gen_tps"] for b in self._m._telemetry.store.benchmarks(current.name, limit=5)
                   if b.get("ok") and b.get("gen_tps")] if current is not None else []
        inputs = HealthInputs(
            status=status, ranking=rank_models(self.candidates()), current=current,
            current_fit=current_fit, primary_configured=bool(primary),
            primary_breaker=breakers.get(primary, {}).get("state") if primary else None,
            recent_attempts=self._m._telemetry.store.failovers(since_s=3600),
            speed_history=history)
        if current is not None and current_fit is not None and status.gpus:
            full = self._m._local.plan(current, gpu_layers=-1)
            inputs.full_gpu_mb = full.vram_mb
            inputs.lower_ctx_fits = self.ctx_that_fits(current, current_fit.n_ctx)
        return health_report(inputs)

    def candidates(self) -> list[tuple[ModelInfo, Compatibility, BenchmarkResult | None]]:
        latest: dict[str, BenchmarkResult] = {}
        for row in reversed(self._m._telemetry.store.benchmarks(limit=500)):
            fields = {k: v for k, v in row.items() if k in BenchmarkResult.model_fields}
            try:
                latest[row["model"]] = BenchmarkResult(**fields)
            except (KeyError, ValueError):
                continue
        models = [m for m in self._m.discover_models() if m.valid and m.format != "remote"]
        return [(m, self._m._local.plan(m), latest.get(m.name)) for m in models]

    def ctx_that_fits(self, model: ModelInfo, n_ctx: int) -> int | None:
        """The largest n_ctx (halving, down to 512) at which ``model`` fits the GPU entirely."""
        ctx = n_ctx // 2
        while ctx >= 512:
            if self._m._local.plan(model, n_ctx=ctx).verdict == "gpu":
                return ctx
            ctx //= 2
        return None

    def start_auto_optimizer(self, stop: threading.Event, *, interval_s: float = 15.0) -> None:
        """With auto_optimize_vram: optimize now, and again whenever free memory changes a
        fit verdict. A switch it made itself changes the memory too: the verdicts after it
        become the new baseline instead of triggering another switch."""

        def watch() -> None:
            last: tuple[tuple[str, str], ...] | None = None
            rebaseline = False
            while not stop.is_set():
                try:
                    verdicts = tuple((m.name, fit.verdict) for m, fit, _ in self.candidates())
                    if rebaseline:
                        last, rebaseline = verdicts, False
                    elif verdicts != last:
                        if last is not None:
                            log.info("free memory changed the fit verdicts; optimizing again")
                        rebaseline = self.optimize(apply=True).switched
                        last = verdicts
                except Exception as exc:  # the watcher must outlive a failed optimization
                    log.warning("auto-optimization failed: %s", exc)
                if stop.wait(interval_s):
                    return

        threading.Thread(target=watch, daemon=True, name="zwaif-auto-optimize").start()

