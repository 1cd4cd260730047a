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

from .backends.base import Cancel, GenerationParams, LocalBackend, TargetFailed, Usage
from .calibration import Calibration
from .errors import (
    FallbackError,
    IncompatibleModel,
    InvalidModelFile,
    InvalidSettings,
    ModelLoadError,
)
from .fit import KV_TYPES, Compatibility, plan
from .hardware import HardwareProbe, SystemStatus
from .memory import LoadConfig
from .model_info import ModelInfo
from .pool import LocalPool
from .routing import rank_local
from .settings import FallbackSettings
from .settings_fields import bounds
from .step_down import StepDown

if TYPE_CHECKING:
    from .store import Store

__all__ = ["LocalModels"]

log = logging.getLogger(__name__)

RANKING_TTL_S = 30.0


def _runtime(model: ModelInfo, status: SystemStatus, *, what_if: bool) -> tuple[str, str]:
    """What a plan for ``model`` assumes about its runtime, and why a CPU plan has no GPU."""
    if model.format != "gguf":
        return "transformers", "no GPU found"
    if what_if:
        return "llama.cpp (a what-if: GPU offload assumed)", "no GPU found"
    gpus = status.llama_gpus
    if gpus is None:
        return "llama.cpp (its build could not be read: GPU offload assumed)", "no GPU found"
    if not gpus:
        why = ("no GPU found" if not status.gpus else
               "this llama-cpp-python cannot offload to a GPU (a CPU-only build, or its GPU "
               f"backend finds no device); to use the GPU, {status.gpu_build_command}")
        return "llama.cpp, CPU-only build", why
    measured = all(name.startswith("CUDA") for name in gpus)
    return (f"llama.cpp on {', '.join(gpus)}" + ("" if measured else
            " (runtime overheads measured on CUDA; estimated for this backend)"), "no GPU found")


def _full_offload(fit: Compatibility) -> LoadConfig:
    return LoadConfig(n_ctx=fit.n_ctx, gpu_layers=-1, flash_attn=fit.flash_attn, kv_type=fit.kv_type)


def _dry_run_scale(model: ModelInfo, n_ctx: int, flash_attn: bool, kv_type: str) -> float | None:
    """llama.cpp's VRAM buffers over ours for a full offload of ``model``, when a dry run of
    it was made in this process (the warm-up makes one for the best model's GPU plan)."""
    from .dry_run import cached
    from .memory import estimate

    config = LoadConfig(n_ctx=n_ctx, gpu_layers=-1, flash_attn=flash_attn, kv_type=kv_type)
    dry = cached(model.path, config)
    if dry is None or dry.vram_mb <= 0:
        return None
    ours = estimate(model, config)
    buffers = ours.vram_mb - ours.vram.overhead_mb
    return dry.vram_mb / buffers if buffers > 0 else None


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
        """How ``model`` fits the memory free now, counting what it holds itself when loaded.

        ``on_disk=False`` plans a file not downloaded yet (hub.py read its header): no load
        or dry run of it can have been measured, so the history store is not opened for it."""
        status = self._probe.status(refresh=refresh)
        if free_vram_mb is not None:
            free = [float(free_vram_mb)] if free_vram_mb > 0 else []
        else:
            free = [float(g.vram_free_mb) for g in status.gpus]
        runtime, no_gpu_why = _runtime(model, status, what_if=free_vram_mb is not None)
        if model.format == "gguf" and free_vram_mb is None and status.llama_gpus == []:
            free = []  # a GPU is there, but this llama.cpp build cannot use it
        free_ram = float(status.ram_available_mb)
        held = self.held_fit(model)
        if held is not None:  # the model is loaded: what it holds is free for it
            if free and free_vram_mb is None:
                free[0] += held.vram_mb
            free_ram += held.ram_mb
        if n_ctx is None:
            n_ctx = min(self._settings().n_ctx, model.context_length or self._settings().n_ctx)
        device = f"gpu:{status.gpus[0].name}" if status.gpus else None
        vram_scale, ram_scale, calibrated = (self._calibration.scales(
            model, n_ctx, flash_attn, kv_type, gpu_device=device) if on_disk else (1.0, 1.0, False))
        dry_checked = False
        if on_disk and not calibrated and free and model.format == "gguf":  # a measured load counts more
            scale = _dry_run_scale(model, n_ctx, flash_attn, kv_type)
            if scale is not None:
                vram_scale, dry_checked = scale, True
        fit = plan(model, n_ctx=n_ctx, free_vram_mb=free, free_ram_mb=free_ram,
                   gpu_layers=gpu_layers, flash_attn=flash_attn, kv_type=kv_type,
                   headroom_mb=float(self._settings().vram_margin_mb),
                   vram_scale=vram_scale, ram_scale=ram_scale, calibrated=calibrated,
                   runtime=runtime, no_gpu_why=no_gpu_why, dry_run_checked=dry_checked)
        failed = self._ladder.failed(model) if on_disk else None
        if failed is not None:  # memory allows it, the runtime did not: it would fail again
            return fit.model_copy(update={"verdict": "none", "compatible": False, "reason":
                                          f"it failed to load here: {failed}"})
        return fit

    def with_dry_run(self, model: ModelInfo, fit: Compatibility) -> Compatibility:
        """``fit`` with llama.cpp's own dry run of the same plan beside it (GGUF only; a child
        process, ~0.4 s, cached per file and plan)."""
        if model.format != "gguf":
            return fit.model_copy(update={"dry_run_note": "llama.cpp dry runs are for GGUF files"})
        if fit.gpu_layers > 0 and self._probe.status().llama_gpus == []:  # a what-if plan
            return fit.model_copy(update={"dry_run_note": "none for a GPU plan: the installed "
                                          "llama.cpp has no GPU device to simulate it on"})
        from .dry_run import DryRunCheck, Refused, dry_run
        from .memory import estimate

        full = fit.gpu_layers > fit.n_layers  # one dry run per plan: all layers is -1
        config = LoadConfig(n_ctx=fit.n_ctx, gpu_layers=-1 if full else fit.gpu_layers,
                            flash_attn=fit.flash_attn, kv_type=fit.kv_type)
        try:
            dry = dry_run(model.path, config, cpu_only=fit.gpu_layers == 0)
        except Refused as exc:  # what memory allows, llama.cpp cannot do: the load would fail
            return fit.model_copy(update={"verdict": "none", "compatible": False, "reason": str(exc),
                                          "dry_run_note": "it refused this plan (the reason above)"})
        except FallbackError as exc:
            return fit.model_copy(update={"dry_run_note": f"no dry run: {exc}"})
        ours = estimate(model, config)  # unscaled: the estimate itself beside llama.cpp's figure
        return fit.model_copy(update={"dry_run": DryRunCheck.of(dry, ours.vram, ours.ram)})

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
        """InvalidSettings naming every argument of ``fit`` that is out of range or not a
        number (a host's config or UI may hand over text)."""
        problems = []
        low, high = bounds(FallbackSettings.model_fields["n_ctx"]) or (1, 1 << 20)
        if n_ctx is not None and not _whole(n_ctx):
            problems.append(f"n_ctx={n_ctx!r} is not a whole number; allowed: {low:g} to {high:g}")
        elif n_ctx is not None and not low <= n_ctx <= high:  # the setting's range, as the CLI's
            problems.append(f"n_ctx={n_ctx} is out of range; allowed: {low:g} to {high:g}")
        if gpu_layers is not None and not _whole(gpu_layers):
            problems.append(f"gpu_layers={gpu_layers!r} is not a whole number; use -1 (all) or 0 and up")
        elif gpu_layers is not None and gpu_layers < -1:
            problems.append(f"gpu_layers={gpu_layers} is out of range; use -1 (all) or 0 and up")
        if not isinstance(kv_type, str) or kv_type not in KV_TYPES:
            problems.append(f"kv_type={kv_type!r} is not valid; allowed: {', '.join(KV_TYPES)}")
        if free_vram_mb is not None and (isinstance(free_vram_mb, bool)
                                         or not isinstance(free_vram_mb, int | float)
                                         or not 0 <= free_vram_mb <= 1 << 24):
            problems.append(f"free_vram_mb={free_vram_mb!r} is out of range; allowed: 0 to {1 << 24} (MiB)")
        if problems:
            raise InvalidSettings("; ".join(problems), problems=problems)

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
            raise ModelLoadError(f"{failed} (an earlier load; replace the file to try it again)")
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


def _whole(value: object) -> bool:
    """An int, or a float with nothing after the point (a UI's number box gives 4096.0)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


#: What a call on a closed manager is told.
CLOSED = "this manager is closed; make a new FallbackManager"


class _Stoppable(Cancel):
    """A local generation's cancel: set by ``close``, and set whenever the caller's is."""

    def __init__(self, outer: threading.Event | None) -> None:
        super().__init__()
        self._outer = outer

    def is_set(self) -> bool:
        return super().is_set() or (self._outer is not None and self._outer.is_set())
