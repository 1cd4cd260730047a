"""The local models of one manager: which ones there are, backends, the pool, switching,
ranking, keep_alive and preloading.

How each fits the memory free now is local_fits.py's; this module asks it before every
load, and tells it what the loaded model holds and which models failed to load here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .backends.base import Cancel, GenerationParams, LocalBackend, TargetFailed, Usage
from .calibration import Calibration
from .errors import CLOSED, FallbackError, IncompatibleModel, InvalidModelFile, ModelLoadError
from .fit import Compatibility
from .hardware import HardwareProbe
from .local_fits import LocalFits, check_args
from .memory import LoadConfig
from .model_info import ModelInfo
from .pool import LocalPool
from .routing import rank_local
from .settings import FallbackSettings
from .step_down import StepDown

if TYPE_CHECKING:
    from .store import Store

__all__ = ["LocalModels"]

log = logging.getLogger(__name__)

RANKING_TTL_S = 30.0


def _full_offload(fit: Compatibility) -> LoadConfig:
    return LoadConfig(n_ctx=fit.n_ctx, gpu_layers=-1, flash_attn=fit.flash_attn, kv_type=fit.kv_type)


class LocalModels:
    """Fits, loads, switches, ranks and keeps the local models. Thread-safe.

    Args:
        settings: the settings now (n_ctx, keep_alive, preferred_model, ...).
        probe: free VRAM and RAM for fits; per-process VRAM for calibration.
        discover: every model found, valid or not.
        find: the model a person means by a name or a path (raises ModelNotFound).
        store: the history store, where calibrations are kept.
    """

    def __init__(self, *, settings: Callable[[], FallbackSettings], probe: HardwareProbe,
                 discover: Callable[[], list[ModelInfo]], find: Callable[[str], ModelInfo],
                 store: Callable[[], Store], clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._probe = probe
        self._discover = discover
        self._find = find
        self._clock = clock
        self._calibration = Calibration(store)
        self._fits = LocalFits(settings=settings, probe=probe, calibration=self._calibration,
                               held=self.held_fit, failed=lambda model: self._ladder.failed(model))
        self._ladder = StepDown(self.fit, on_failed=self.forget_ranking)
        self.pool: LocalPool[LocalBackend] = LocalPool(self.make_backend, clock=clock,
                                                       load=self._ladder.load,
                                                       on_load=self.calibrate)
        self._ranking: tuple[float, list[ModelInfo]] | None = None
        self._ranking_lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self._reaper_lock = threading.Lock()  # two chats at once start one reaper, not two
        self._running: set[_Stoppable] = set()  # the generations close() stops

    def close(self) -> None:
        """Stop the generations running now (inside a decode), the reaper, and unload."""
        self._stop.set()
        with self._reaper_lock:
            running = list(self._running)
        for stop in running:
            stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
        self.pool.close()

    # -- which models ------------------------------------------------------------------

    @property
    def current(self) -> ModelInfo | None:
        return self.pool.current

    @property
    def loaded(self) -> bool:
        """Whether the current model is in memory now (keep_alive unloads an idle one)."""
        return self.pool.is_loaded()

    def discover(self) -> list[ModelInfo]:
        return self._discover()

    def usable(self) -> list[ModelInfo]:
        return [m for m in self._discover() if m.usable]

    def preferred_problem(self) -> str | None:
        """Why ``preferred_model`` cannot be the fallback (no model of that name, with the
        closest names; or a model that is unusable), or None when it can or none is set."""
        name = self._settings().preferred_model
        if not name:
            return None
        try:
            self.valid(name)
        except FallbackError as exc:  # ModelNotFound says "did you mean ...?"
            return f"preferred_model {name!r} cannot be used, so another model answers: {exc}"
        return None

    def valid(self, name_or_path: str) -> ModelInfo:
        """The model by that name or path; InvalidModelFile when it cannot be used."""
        model = self._find(name_or_path)
        if not model.valid:
            raise InvalidModelFile(model.path, model.error or "not a usable model")
        return model

    # -- fits ---------------------------------------------------------------------------

    def fit(self, model: ModelInfo, *, n_ctx: int | None = None, gpu_layers: int | None = None,
            flash_attn: bool = False, kv_type: str = "f16", free_vram_mb: float | None = None,
            refresh: bool = False, on_disk: bool = True) -> Compatibility:
        """``LocalFits.fit``: how ``model`` fits the memory free now."""
        return self._fits.fit(model, n_ctx=n_ctx, gpu_layers=gpu_layers, flash_attn=flash_attn,
                              kv_type=kv_type, free_vram_mb=free_vram_mb, refresh=refresh,
                              on_disk=on_disk)

    def with_dry_run(self, model: ModelInfo, fit: Compatibility) -> Compatibility:
        """``LocalFits.with_dry_run``: ``fit`` with llama.cpp's own dry run beside it."""
        return self._fits.with_dry_run(model, fit)

    def vram_margin_mb(self) -> float:
        """What every load leaves free on each GPU (``settings.vram_margin_mb``)."""
        return float(self._settings().vram_margin_mb)

    def held_fit(self, model: ModelInfo) -> Compatibility | None:
        """The fit ``model`` was loaded with, when it is the loaded current model."""
        backend = self.pool.backend
        current = self.pool.current
        if backend is None or current is None or current.path != model.path or not backend.loaded:
            return None
        return backend.fit

    def check_args(self, n_ctx: int | None, gpu_layers: int | None, kv_type: str,
                   free_vram_mb: float | None) -> None:
        """``local_fits.check_args``: InvalidSettings naming every bad argument of ``fit``."""
        check_args(n_ctx, gpu_layers, kv_type, free_vram_mb)

    # -- backends and switching -----------------------------------------------------------

    def make_backend(self, model: ModelInfo) -> LocalBackend:
        """An unloaded backend for ``model``, configured by its fit against memory read now.

        The probe's cache is for the UI; a load decision re-reads free VRAM, since the main
        LLM may have taken or given back gigabytes since the last look."""
        fit = self.fit(model, refresh=True)
        if model.format == "gguf":
            from .backends.llama_cpp import LlamaCppBackend

            return LlamaCppBackend(model.name, model.path, n_ctx=fit.n_ctx,
                                   n_gpu_layers=fit.gpu_layers, flash_attn=fit.flash_attn,
                                   kv_type=fit.kv_type, fit=fit,
                                   vram_probe=self._probe.process_vram_mb)
        from .backends.transformers import TransformersBackend

        return TransformersBackend(model.name, model.path, gpu_layers=fit.gpu_layers,
                                   n_layers=fit.n_layers,
                                   trust_remote_code=self._settings().trust_remote_code,
                                   allow_pickle=self._settings().allow_pickle, fit=fit,
                                   vram_probe=self._probe.process_vram_mb)

    def steps(self, model: ModelInfo) -> list[str]:
        """The step-downs of ``model``'s last load (``StepDown.steps``)."""
        return self._ladder.steps(model)

    def switch(self, model: ModelInfo) -> None:
        """``FallbackManager.switch_model`` without the saving: release, then fit again."""
        if self._stop.is_set():
            raise FallbackError(CLOSED)
        fit = self.fit(model)
        both_fit = fit.compatible and self.pool.current is not None
        if not fit.compatible and self.pool.current is not None:
            self.pool.release()  # make room, then look again
            fit = self.fit(model, refresh=True)
        if not fit.compatible:
            raise IncompatibleModel(f"{model.name} does not fit this machine: {fit.reason}")
        self.pool.switch(model, both_fit=both_fit)
        self.ensure_reaper()
        self.forget_ranking()

    def use_freed_vram(self) -> Compatibility | None:
        """Reload the current model with more GPU layers when VRAM came back since it loaded
        (the main LLM exited); its running answers end first. The new fit, or None."""
        current = self.pool.current
        held = self.held_fit(current) if current is not None else None
        if current is None or held is None:
            return None
        now = self.fit(current, n_ctx=held.n_ctx, flash_attn=held.flash_attn,
                       kv_type=held.kv_type, refresh=True)  # counts what it holds as free
        if not now.compatible or now.gpu_layers <= held.gpu_layers:
            return None
        log.info("VRAM came back: reloading %s with %d GPU layers (was %d)", current.name,
                 now.gpu_layers, held.gpu_layers)
        self.pool.release()
        self.pool.switch(current, both_fit=False)
        self.forget_ranking()
        return self.held_fit(current)

    def calibrate(self, model: ModelInfo, backend: LocalBackend, load_s: float) -> None:
        fit = backend.fit
        measured = backend.measured_mb
        if fit is not None and measured:
            self._calibration.record(model, fit, measured, device=self.device())
            log.info("loaded %s in %.2f s (estimated %.0f MiB, measured RAM %.0f, VRAM %s MiB)",
                     model.name, load_s, fit.vram_mb if fit.gpu_layers else fit.ram_mb, *measured)

    def device(self) -> str:
        gpus = self._probe.status().gpus
        return f"gpu:{gpus[0].name}" if gpus else "cpu"

    def stream(self, model: ModelInfo, messages: list[dict[str, str]],
               params: GenerationParams, *, prefix: str = "", deadline_s: float | None = None,
               cancel: threading.Event | None = None, usage: Usage | None = None) -> Iterator[str]:
        """``model``'s answer, loading it first if needed (``deadline_s`` does not apply:
        a local model is not waited on, it is run). ``close`` stops it, inside a decode too."""
        if self._stop.is_set():  # nothing is loaded again after close()
            raise TargetFailed(CLOSED)
        failed = self._ladder.failed(model)
        if failed is not None:  # not loaded again: it would fail again, after the same wait
            raise ModelLoadError(f"{failed} (an earlier load in this process: a replaced file is "
                                 "tried again; a newer llama-cpp-python or transformers, after a restart)")
        stop = _Stoppable(cancel)
        unhook = cancel.on_set(stop.set) if isinstance(cancel, Cancel) else None
        with self._reaper_lock:
            self._running.add(stop)
        try:
            with self.pool.use(model) as backend:
                self.ensure_reaper()
                yield from backend.stream(messages, params, prefix=prefix, cancel=stop, usage=usage)
            if self._stop.is_set():
                raise TargetFailed(CLOSED)
        finally:
            with self._reaper_lock:
                self._running.discard(stop)
            if unhook is not None:
                unhook()

    # -- ranking, preloading, keep_alive ---------------------------------------------------

    def ranked(self) -> list[ModelInfo]:
        with self._ranking_lock:
            now = self._clock()
            if self._ranking is not None and now - self._ranking[0] < RANKING_TTL_S:
                return self._ranking[1]
            fits = [(m, self.fit(m)) for m in self.usable()]
            preferred = self._settings().preferred_model
            ranked = rank_local(fits, preferred)
            # The preferred model stays first when it failed to load: its attempt says so at
            # once, and with auto_switch off no other model answers in its place.
            ranked[:0] = [m for m, _ in fits if m.name == preferred and self._ladder.failed(m)]
            self._ranking = (now, ranked)
            return ranked

    def why_none(self) -> str:
        """Why no local model can answer now ("" when one can): none was found, the ones found
        cannot be used (a half-downloaded file), or none fits (the first one's reason, with its
        need and what is free) or loads."""
        usable = self.usable()
        if not usable:
            broken = [m for m in self.discover() if not m.usable]
            if broken:
                return f"no local model can be used: {broken[0].name}: {broken[0].error or 'not usable'}"
            return f"no local model found: put a .gguf in {self._settings().models_dir}"
        if any(self._ladder.failed(m) is None for m in self.ranked()):
            return ""
        for model in usable:
            failed = self._ladder.failed(model)
            if failed is not None:
                return f"no local model can be loaded: {model.name} failed to load here ({failed})"
        fit = self.fit(usable[0])
        return f"no local model fits: {usable[0].name} {fit.reason}"

    def forget_ranking(self) -> None:
        with self._ranking_lock:
            self._ranking = None

    def warm_up(self) -> None:
        """Make the first fallback fast: import the best local model's runtime and run its
        one-time safety check now, while the primary still answers. Nothing is loaded.
        (transformers is not imported ahead: it costs seconds and hundreds of MiB.)"""
        ranked = [m for m in self.ranked() if self._ladder.failed(m) is None]
        if not ranked or ranked[0].format != "gguf":
            return
        best = ranked[0]
        from .backends.llama_preflight import warm_up

        warm_up(best.path)
        fit = self.fit(best)
        if fit.gpu_layers > 0:  # a GPU plan: size it by llama.cpp's own accounting too
            from .dry_run import dry_run

            try:
                dry_run(best.path, _full_offload(fit))
                self.forget_ranking()
            except FallbackError as exc:
                log.info("no llama.cpp dry run for %s: %s", best.name, exc)

    def preload_async(self) -> None:
        """The primary's breaker opened: have the best local model loaded before it is needed."""

        def preload() -> None:
            try:
                current = self.pool.current
                if current is not None:
                    self.pool.switch(current, both_fit=True)  # reloads it if it was reaped
                    return
                ranked = self.ranked()
                if ranked:
                    self.pool.switch(ranked[0], both_fit=False)
                    self.ensure_reaper()
            except Exception as exc:  # a failed preload only means the next answer loads it
                log.warning("preloading a local model failed: %s", exc)

        threading.Thread(target=preload, daemon=True, name="zwaif-preload").start()

    def ensure_reaper(self) -> None:
        """Unload an idle local model after keep_alive seconds (a background thread)."""
        if self._settings().keep_alive <= 0 or self._stop.is_set():
            return

        def reap() -> None:
            while not self._stop.wait(min(max(self._settings().keep_alive / 4, 0.05), 5.0)):
                self.pool.reap_idle(self._settings().keep_alive)

        with self._reaper_lock:
            if self._reaper is not None and self._reaper.is_alive():
                return
            self._reaper = threading.Thread(target=reap, daemon=True, name="zwaif-keep-alive")
            self._reaper.start()


class _Stoppable(Cancel):
    """A local generation's cancel: set by ``close``, and set whenever the caller's is."""

    def __init__(self, outer: threading.Event | None) -> None:
        super().__init__()
        self._outer = outer

    def is_set(self) -> bool:
        return super().is_set() or (self._outer is not None and self._outer.is_set())
