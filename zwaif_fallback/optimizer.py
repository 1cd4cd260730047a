"""The optimal model, the health report's inputs, and the auto-optimizer.

Scoring and ranking are pure (scoring.py, health.py); this module gathers what they need
(fits, the latest benchmarks, breakers, recent attempts) and acts on the ranking: it
switches to the best model, now or whenever free memory changes a fit verdict.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING

from .backends.ollama import is_ollamas_v1
from .bench import BenchmarkResult
from .breaker import SEVERITY
from .errors import ModelLoadError
from .fit import Compatibility
from .health import (
    STATS_RUNS,
    HealthInputs,
    HealthReport,
    PerformanceStats,
    health_report,
    performance_stats,
)
from .model_info import ModelInfo
from .routing import primary_breakers
from .scoring import Optimization, rank_models

if TYPE_CHECKING:
    from .breaker import BreakerState
    from .hardware import SystemStatus
    from .local import LocalModels
    from .monitor import Sample
    from .store import Store

__all__ = ["Optimizer", "watch_fits"]

log = logging.getLogger(__name__)

RECENT_S = 3600.0  # what "recent" attempts means for health: the last hour


class Optimizer:
    """Ranks the local models, switches to the best, and reports health.

    Args:
        local: the manager's local models (which are usable, their fits, the current one).
        switch: makes a model current by name (and saves it as preferred).
        history: the store of benchmarks and failover attempts.
        status: the machine now. breakers: each target's circuit breaker.
        primary_url: the configured primary, "" for none; primary_api: what it speaks.
        host_call: the breaker name of the host's own API call, when it was the latest chat's
            primary (``Router.host_call``).
        remote_urls: the servers tried after the primary; models_dir: where models are looked for.
        samples: the background sampler's samples.
    """

    def __init__(self, *, local: LocalModels, switch: Callable[[str], ModelInfo],
                 history: Callable[[], Store], status: Callable[[], SystemStatus],
                 breakers: Callable[[], dict[str, BreakerState]], primary_url: Callable[[], str],
                 samples: Callable[[], list[Sample]], primary_api: Callable[[], str],
                 host_call: Callable[[], str | None],
                 remote_urls: Callable[[], list[str]] = list,
                 models_dir: Callable[[], object] = str, preferred: Callable[[], str] = str) -> None:
        self._local = local
        self._switch = switch
        self._history = history
        self._status = status
        self._breakers = breakers
        self._primary_url = primary_url
        self._primary_api = primary_api
        self._host_call = host_call
        self._remote_urls = remote_urls
        self._models_dir = models_dir
        self._preferred = preferred
        self._samples = samples
        self._lock = threading.Lock()
        self._watcher_stop: threading.Event | None = None

    def optimize(self, apply: bool = True) -> Optimization:
        ranking = rank_models(self.candidates())
        best = next((e for e in ranking if e.compatible), None)
        if best is None:
            return Optimization(selected=None, switched=False, ranking=ranking,
                                reason=self._local.why_none() or "no local model fits this machine")
        current = self._local.current
        # what the next fallback would have loaded: a CLI command's process holds no model
        before = current.name if current is not None else self._preferred()
        switched, passed_by, reloaded = False, [], None
        if apply and (current is None or current.name != best.model):
            # One that fits but fails to load (a damaged file) is passed by for the next;
            # it is remembered, and ranked as what it is from now on.
            for entry in [e for e in ranking if e.compatible]:
                try:
                    self._switch(entry.model)
                except ModelLoadError as exc:
                    passed_by.append(f"{entry.model} failed to load ({exc})")
                    continue
                best, switched = entry, entry.model != before
                break
            else:
                raise ModelLoadError(f"no model that fits could be loaded: {'; '.join(passed_by)}")
            if passed_by:
                ranking = rank_models(self.candidates())
        elif apply:  # the best is loaded already; with more VRAM free now, it may fit better
            reloaded = self._local.use_freed_vram()
            switched = reloaded is not None
        why = f"{best.model} scores {best.score:.0f}: {best.reason}"
        if reloaded is not None:
            why = f"{best.model} reloaded with {reloaded.gpu_layers} GPU layers, since VRAM came back; {why}"
        if passed_by:
            why += f" ({'; '.join(passed_by)})"
        return Optimization(selected=best.model, switched=switched, ranking=ranking, reason=why)

    def health(self) -> HealthReport:
        return health_report(self.health_inputs())

    def health_inputs(self) -> HealthInputs:
        """What the health report weighs: the machine, the ranking, the current model's fit,
        the primary's breaker, the last hour's attempts and the current model's speed."""
        status = self._status()
        current = self._local.current
        current_fit = self._local.fit(current) if current is not None else None
        primary, host_call = self._primary_url(), self._host_call()
        breakers = self._breakers()
        # the worst of the primary's breakers: a host's own call, or the URL's chats and texts
        theirs = [breakers[name].state for name in primary_breakers(breakers, primary, host_call)]
        worst = max(theirs, key=SEVERITY.index, default=None)
        store = self._history()
        speeds = [r.gen_tps for r in store.benchmarks_as(BenchmarkResult, current.name, limit=5)
                  if r.ok and r.gen_tps] if current is not None else []
        inputs = HealthInputs(
            status=status, ranking=rank_models(self.candidates()), current=current,
            current_fit=current_fit, primary_configured=bool(primary or host_call),
            primary_name=host_call or primary,
            ollamas_v1_primary=primary if self._primary_api() == "openai" and is_ollamas_v1(primary) else "",
            primary_breaker=worst,
            recent_attempts=store.failovers(since_s=RECENT_S), speed_history=speeds,
            vram_margin_mb=self._local.vram_margin_mb(), remotes=len(self._remote_urls()),
            models_dir=str(self._models_dir()))
        name = inputs.primary_name
        if name:
            counts = store.request_counts(since_s=RECENT_S)
            inputs.primary_counts = counts.get((name, "primary"))  # None: read from the attempts
        inputs.history_problem, inputs.history_notices = store.problem, list(store.notices)
        inputs.preferred_problem = self._local.preferred_problem()
        if current is not None and current_fit is not None and status.gpus:
            inputs.full_gpu_mb = self._local.fit(current, gpu_layers=-1).vram_mb
            inputs.lower_ctx_fits = self.ctx_that_fits(current, current_fit.n_ctx)
        return inputs

    def performance_stats(self) -> PerformanceStats:
        store = self._history()
        return performance_stats(self.health(), store.benchmarks_as(BenchmarkResult, limit=STATS_RUNS),
                                 store.failovers(since_s=RECENT_S), self._samples())

    def candidates(self) -> list[tuple[ModelInfo, Compatibility, BenchmarkResult | None]]:
        """Every usable model with its fit now and its latest benchmark."""
        latest: dict[str, BenchmarkResult] = {}
        for result in self._history().benchmarks_as(BenchmarkResult, limit=500):  # newest first
            latest.setdefault(result.model, result)
        return [(m, self._local.fit(m), latest.get(m.name)) for m in self._local.usable()]

    def ctx_that_fits(self, model: ModelInfo, n_ctx: int) -> int | None:
        """The largest n_ctx (halving, down to 512) at which ``model`` fits the GPU entirely."""
        ctx = n_ctx // 2
        while ctx >= 512:
            if self._local.fit(model, n_ctx=ctx).verdict == "gpu":
                return ctx
            ctx //= 2
        return None

    # -- auto-optimization -------------------------------------------------------------

    @property
    def automatic(self) -> bool:
        """Whether the auto-optimizer runs."""
        with self._lock:
            return self._watcher_stop is not None

    def run_automatically(self, on: bool, *, interval_s: float = 15.0) -> None:
        """Start (``on``) or stop the auto-optimizer: ``watch_fits`` in a daemon thread."""
        with self._lock:
            if on == (self._watcher_stop is not None):
                return
            if not on:
                assert self._watcher_stop is not None
                self._watcher_stop.set()
                self._watcher_stop = None
                return
            stop = self._watcher_stop = threading.Event()
        threading.Thread(target=watch_fits, args=(self._verdicts, self._optimize_now, stop),
                         kwargs={"interval_s": interval_s}, daemon=True,
                         name="zwaif-auto-optimize").start()

    def close(self) -> None:
        self.run_automatically(False)

    def _verdicts(self) -> tuple[tuple[str, str], ...]:
        return tuple((m.name, fit.verdict) for m, fit, _ in self.candidates())

    def _optimize_now(self) -> bool:
        return self.optimize(apply=True).switched


def watch_fits(verdicts: Callable[[], Hashable], optimize: Callable[[], bool],
               stop: threading.Event, *, interval_s: float = 15.0) -> None:
    """Optimize now, and again whenever free memory changes a fit verdict, until ``stop``.

    ``verdicts()`` reads the verdicts (any comparable value); ``optimize()`` runs one
    optimization and says whether it switched models. A switch changes the free memory
    too: the verdicts after it become the new baseline instead of triggering another.
    """
    last: Hashable | None = None
    rebaseline = False
    while not stop.is_set():
        try:
            now = verdicts()
            if rebaseline:
                last, rebaseline = now, False
            elif now != last:
                if last is not None:
                    log.info("free memory changed the fit verdicts; optimizing again")
                rebaseline = optimize()
                last = now
        except Exception as exc:  # the watcher must outlive a failed optimization
            log.warning("auto-optimization failed: %s", exc)
        if stop.wait(interval_s):
            return
