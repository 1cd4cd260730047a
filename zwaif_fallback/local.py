"""The local models of one manager: fits against free memory, backends, the pool,
switching, ranking, keep_alive and preloading.

A fit (a ``Compatibility``, made by ``fit.plan``) counts what the loaded model holds as
free for it, and applies the corrections measured on earlier real loads (calibration.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .backends.base import GenerationParams, LocalBackend, Usage
from .calibration import Calibration
from .errors import IncompatibleModel, InvalidModelFile, InvalidSettings
from .fit import KV_TYPES, Compatibility, plan
from .hardware import HardwareProbe
from .model_info import ModelInfo
from .pool import LocalPool
from .routing import rank_local
from .settings import FallbackSettings

if TYPE_CHECKING:
    from .store import Store

__all__ = ["LocalModels"]

log = logging.getLogger(__name__)

RANKING_TTL_S = 30.0


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
        self.pool: LocalPool[LocalBackend] = LocalPool(self.make_backend, clock=clock,
                                                       on_load=self.calibrate)
        self._ranking: tuple[float, list[ModelInfo]] | None = None
        self._ranking_lock = threading.Lock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    def close(self) -> None:
        self._stop.set()
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

    def valid(self, name_or_path: str) -> ModelInfo:
        """The model by that name or path; InvalidModelFile when it cannot be used."""
        model = self._find(name_or_path)
        if not model.valid:
            raise InvalidModelFile(model.path, model.error or "not a usable model")
        return model

    # -- fits ---------------------------------------------------------------------------

    def fit(self, model: ModelInfo, *, n_ctx: int | None = None, gpu_layers: int | None = None,
            flash_attn: bool = False, kv_type: str = "f16", free_vram_mb: float | None = None,
            refresh: bool = False) -> Compatibility:
        """How ``model`` fits the memory free now, counting what it holds itself when loaded."""
        status = self._probe.status(refresh=refresh)
        if free_vram_mb is not None:
            free = [float(free_vram_mb)] if free_vram_mb > 0 else []
        else:
            free = [float(g.vram_free_mb) for g in status.gpus]
        free_ram = float(status.ram_available_mb)
        held = self.held_fit(model)
        if held is not None:  # the model is loaded: what it holds is free for it
            if free and free_vram_mb is None:
                free[0] += held.vram_mb
            free_ram += held.ram_mb
        if n_ctx is None:
            n_ctx = min(self._settings().n_ctx, model.context_length or self._settings().n_ctx)
        device = f"gpu:{status.gpus[0].name}" if status.gpus else None
        vram_scale, ram_scale, calibrated = self._calibration.scales(model, n_ctx, flash_attn,
                                                                     kv_type, gpu_device=device)
        return plan(model, n_ctx=n_ctx, free_vram_mb=free, free_ram_mb=free_ram,
                    gpu_layers=gpu_layers, flash_attn=flash_attn, kv_type=kv_type,
                    vram_scale=vram_scale, ram_scale=ram_scale, calibrated=calibrated)

    def held_fit(self, model: ModelInfo) -> Compatibility | None:
        """The fit ``model`` was loaded with, when it is the loaded current model."""
        backend = self.pool.backend
        current = self.pool.current
        if backend is None or current is None or current.path != model.path or not backend.loaded:
            return None
        return backend.fit

    def check_args(self, n_ctx: int | None, gpu_layers: int | None, kv_type: str,
                   free_vram_mb: float | None) -> None:
        """InvalidSettings naming every argument of ``fit`` that is out of range."""
        problems = []
        if n_ctx is not None and not 1 <= n_ctx <= 1 << 20:
            problems.append(f"n_ctx={n_ctx} is out of range; allowed: 1 to {1 << 20}")
        if gpu_layers is not None and gpu_layers < -1:
            problems.append(f"gpu_layers={gpu_layers} is out of range; use -1 (all) or 0 and up")
        if kv_type not in KV_TYPES:
            problems.append(f"kv_type={kv_type!r} is not valid; allowed: {', '.join(KV_TYPES)}")
        if free_vram_mb is not None and not 0 <= free_vram_mb <= 1 << 24:
            problems.append(f"free_vram_mb={free_vram_mb} is out of range; allowed: 0 to {1 << 24}")
        if problems:
            raise InvalidSettings("; ".join(problems), problems=problems)

    # -- backends and switching -----------------------------------------------------------

    def make_backend(self, model: ModelInfo) -> LocalBackend:
        """An unloaded backend for ``model``, configured by its fit now."""
        fit = self.fit(model)
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

    def switch(self, model: ModelInfo) -> None:
        """``FallbackManager.switch_model`` without the saving: release, then fit again."""
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
        a local model is not waited on, it is run)."""
        with self.pool.use(model) as backend:
            self.ensure_reaper()
            yield from backend.stream(messages, params, prefix=prefix, cancel=cancel, usage=usage)

    # -- ranking, preloading, keep_alive ---------------------------------------------------

    def ranked(self) -> list[ModelInfo]:
        with self._ranking_lock:
            now = self._clock()
            if self._ranking is not None and now - self._ranking[0] < RANKING_TTL_S:
                return self._ranking[1]
            fits = [(m, self.fit(m)) for m in self.usable()]
            ranked = rank_local(fits, self._settings().preferred_model)
            self._ranking = (now, ranked)
            return ranked

    def forget_ranking(self) -> None:
        with self._ranking_lock:
            self._ranking = None

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
        if self._reaper is not None and self._reaper.is_alive():
            return

        def reap() -> None:
            while not self._stop.wait(min(max(self._settings().keep_alive / 4, 0.05), 5.0)):
                self.pool.reap_idle(self._settings().keep_alive)

        self._reaper = threading.Thread(target=reap, daemon=True, name="zwaif-keep-alive")
        self._reaper.start()
