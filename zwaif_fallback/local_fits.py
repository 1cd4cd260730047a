"""A local model's fit against the memory free on this machine now.

``fit.plan`` gives the verdict for numbers it is handed; this module gathers those numbers
for one found model: free VRAM and RAM from the hardware probe (with what the loaded model
holds counted as free for it, since loading it again would release that first), the
runtime the plan assumes, the corrections measured on earlier real loads (calibration.py)
or, without one, llama.cpp's own dry run of the plan. A model that failed to load here
fits nowhere, whatever memory allows. Kept apart from local.py, which loads, switches and
ranks the models these fits are for.
"""

from __future__ import annotations

from collections.abc import Callable

from .calibration import Calibration
from .errors import FallbackError, InvalidSettings
from .fit import KV_TYPES, Compatibility, plan
from .hardware import HardwareProbe, SystemStatus
from .memory import LoadConfig
from .model_info import ModelInfo
from .settings import FallbackSettings
from .settings_fields import bounds

__all__ = ["LocalFits", "check_args"]


class LocalFits:
    """Fits found models against the memory free now. Thread-safe (it keeps no state).

    Args:
        settings: the settings now (n_ctx, vram_margin_mb).
        probe: free VRAM and RAM, and the GPUs llama.cpp can offload to.
        calibration: corrections measured on earlier loads.
        held: the fit a model was loaded with, when it is the loaded current model.
        failed: why a model failed to load here (it would fail again), or None.
    """

    def __init__(self, *, settings: Callable[[], FallbackSettings], probe: HardwareProbe,
                 calibration: Calibration, held: Callable[[ModelInfo], Compatibility | None],
                 failed: Callable[[ModelInfo], str | None]) -> None:
        self._settings = settings
        self._probe = probe
        self._calibration = calibration
        self._held = held
        self._failed = failed

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
        held = self._held(model)
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
        failed = self._failed(model) if on_disk else None
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


def check_args(n_ctx: int | None, gpu_layers: int | None, kv_type: str,
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


def _whole(value: object) -> bool:
    """An int, or a float with nothing after the point (a UI's number box gives 4096.0)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
