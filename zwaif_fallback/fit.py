"""Fit verdicts: whether and how a model runs on this machine now.

Pure functions over a model's estimate (``memory.py``) and the free VRAM and
RAM the caller passes: ``gpu`` (everything offloaded), ``partial`` (the most
layers that fit), ``cpu``, or ``none``, each with a reason a person can act on.

One word for the result throughout the package: a *fit*. ``plan()`` makes one (a
``Compatibility``, the public name of the type); ``LocalModels.fit`` makes one against
the memory free now, and a loaded backend keeps the fit it was loaded with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from ._model import Model
from .dry_run import DryRunCheck
from .memory import (
    CUDA_CONTEXT_MB,
    KV_PAD,
    Estimate,
    LoadConfig,
    MemoryBreakdown,
    estimate,
    kv_cells,
    offloaded,
)
from .model_info import ModelInfo
from .settings import VRAM_MARGIN_MB
from .units import size_text

__all__ = [
    "CUDA_CONTEXT_MB",
    "KV_PAD",
    "KV_TYPES",
    "Compatibility",
    "Estimate",
    "LoadConfig",
    "MemoryBreakdown",
    "estimate",
    "kv_cells",
    "layers_text",
    "offloaded",
    "plan",
]

Verdict = Literal["gpu", "partial", "cpu", "none"]
KV_TYPES = ("f16", "q8_0", "q4_0")
HEADROOM_MB = float(VRAM_MARGIN_MB)  # VRAM left free on each GPU (settings.vram_margin_mb)
# RAM a plan leaves free for the system and the host's own allocations: a CPU plan that took
# all of it would push them into swap (or, on Windows, past the commit limit). The estimate
# is already 40-170 MiB above measured CPU loads of the bundled model; this is on top of it.
RAM_MARGIN_MB = 512.0


class Compatibility(Model):
    """Whether and how a model fits this machine now. ``reason`` is for people."""

    model: str
    verdict: Verdict
    compatible: bool
    vram_mb: float
    ram_mb: float
    gpu_layers: int
    n_layers: int
    n_ctx: int
    available_vram_mb: float
    available_ram_mb: float
    breakdown: MemoryBreakdown
    vram_breakdown: MemoryBreakdown
    ram_breakdown: MemoryBreakdown
    flash_attn: bool = False
    kv_type: str = "f16"
    calibrated: bool = False
    runtime: str = Field("", description="the runtime and build the plan assumes, e.g. "
                                         "'llama.cpp on CUDA0' or 'llama.cpp, CPU-only build'")
    dry_run: DryRunCheck | None = Field(None, description="llama.cpp's own dry run of this plan "
                                                          "beside the estimate, when asked for")
    dry_run_note: str | None = Field(None, description="why no dry run was made, when asked for")
    reason: str


@dataclass(frozen=True)
class _Budget:
    vram_mb: float  # usable: free VRAM less the headroom
    ram_mb: float  # usable: available RAM less RAM_MARGIN_MB
    free_ram_mb: float  # as the probe reported it
    n_gpus: int
    free_vram_mb: float  # as the probe reported it
    calibrated: bool = False
    runtime: str = ""
    dry_run_checked: bool = False

    def fits(self, est: Estimate) -> bool:
        return est.vram_mb <= self.vram_mb and est.ram_mb <= self.ram_mb


def plan(
    model: ModelInfo,
    *,
    n_ctx: int,
    free_vram_mb: Sequence[float],
    free_ram_mb: float,
    gpu_layers: int | None = None,
    flash_attn: bool = False,
    kv_type: str = "f16",
    n_batch: int = 512,
    headroom_mb: float = HEADROOM_MB,
    ram_margin_mb: float = RAM_MARGIN_MB,
    vram_scale: float = 1.0,
    ram_scale: float = 1.0,
    calibrated: bool = False,
    runtime: str = "",
    no_gpu_why: str = "no GPU found",
    dry_run_checked: bool = False,
) -> Compatibility:
    """Decide whether and how ``model`` runs here.

    Args:
        free_vram_mb: free VRAM of each usable GPU (empty: no GPU).
        free_ram_mb: RAM available to a new model.
        gpu_layers: force llama.cpp's n_gpu_layers; None picks the most that fits.
        headroom_mb, ram_margin_mb: VRAM left free on each GPU, RAM left free for the rest.
        vram_scale, ram_scale: corrections measured on earlier real loads (calibration); the
            VRAM one applies to the buffers, not to the runtime's context.
        calibrated: a real load of this model and configuration was measured.
        runtime: what the plan assumes about the runtime, for ``Compatibility.runtime``.
        no_gpu_why: why a CPU plan has no GPU (the reason's first words) when there is none.
        dry_run_checked: ``vram_scale`` comes from llama.cpp's dry run of this model.

    Returns:
        A ``Compatibility`` whose verdict is ``gpu``, ``partial`` (with the
        number of layers that fit), ``cpu`` or ``none``, with a reason.
    """
    if kv_type not in KV_TYPES:
        raise ValueError(f"unknown KV cache type {kv_type!r}; use one of {', '.join(KV_TYPES)}")
    n_layers = model.n_layers or 0
    gpus = [v for v in free_vram_mb if v > 0]
    budget = _Budget(vram_mb=max(sum(gpus) - headroom_mb * len(gpus), 0.0),
                     ram_mb=max(free_ram_mb - ram_margin_mb, 0.0),
                     free_ram_mb=max(free_ram_mb, 0.0), n_gpus=max(len(gpus), 1),
                     free_vram_mb=float(sum(gpus)),
                     calibrated=calibrated, runtime=runtime, dry_run_checked=dry_run_checked)

    def at(layers: int) -> Estimate:
        config = LoadConfig(n_ctx=n_ctx, gpu_layers=layers, flash_attn=flash_attn,
                            kv_type=kv_type, n_batch=n_batch, n_ubatch=min(n_batch, 512))
        est = estimate(model, config, n_gpus=budget.n_gpus)
        if vram_scale == 1.0 and ram_scale == 1.0:
            return est
        return est.model_copy(update={"vram": est.vram.scaled(vram_scale, overhead=False),
                                      "ram": est.ram.scaled(ram_scale)})

    full = n_layers + 1
    if kv_type != "f16" and not flash_attn:
        est = at(0 if not gpus else full)
        return _result(model, "none", est, budget, kv_type, flash_attn,
                       f"a {kv_type} KV cache needs flash attention in llama.cpp: "
                       "turn flash attention on, or use kv_type f16")
    if gpu_layers is not None:
        return _forced(model, at, gpu_layers, budget, bool(gpus), kv_type, flash_attn)
    if gpus:
        est = at(full)
        if budget.fits(est):
            return _result(model, "gpu", est, budget, kv_type, flash_attn,
                           f"fits on the GPU: needs {size_text(est.vram_mb)} of "
                           f"{size_text(budget.vram_mb)} usable VRAM")
        best = _most_layers(at, budget, n_layers)
        if best is not None and best.gpu_layers > 0:
            return _result(model, "partial", best, budget, kv_type, flash_attn,
                           f"needs {size_text(est.vram_mb)}, {size_text(budget.vram_mb)} usable VRAM: "
                           f"{best.gpu_layers} of {n_layers} layers fit on the GPU, the rest run "
                           f"on the CPU ({size_text(best.ram_mb)} of RAM)")
    cpu = at(0)
    if budget.fits(cpu):
        why = (no_gpu_why if not gpus else
               f"not even one layer fits in {size_text(budget.vram_mb)} of usable VRAM")
        return _result(model, "cpu", cpu, budget, kv_type, flash_attn,
                       f"{why}: runs on the CPU, needs {size_text(cpu.ram_mb)} of "
                       f"{size_text(budget.ram_mb)} usable RAM")
    return _result(model, "none", cpu, budget, kv_type, flash_attn,
                   f"needs {size_text(cpu.ram_mb)} of RAM with {size_text(budget.ram_mb)} usable "
                   f"({size_text(budget.free_ram_mb)} free, less {size_text(ram_margin_mb)} kept for "
                   "the system)"
                   + (f" and does not fit {size_text(budget.vram_mb)} of usable VRAM" if gpus else "")
                   + ": choose a smaller quantization or lower n_ctx")


def _most_layers(at: Callable[[int], Estimate], budget: _Budget, n_layers: int) -> Estimate | None:
    """The estimate with the most GPU layers that fits (VRAM grows with layers)."""
    low, high, best = 1, n_layers, None
    while low <= high:
        mid = (low + high) // 2
        est = at(mid)
        if est.vram_mb <= budget.vram_mb:
            best, low = est, mid + 1
        else:
            high = mid - 1
    if best is not None and best.ram_mb > budget.ram_mb:
        return None
    return best


def _forced(model: ModelInfo, at: Callable[[int], Estimate], layers: int, budget: _Budget, has_gpu: bool,
            kv_type: str, flash_attn: bool) -> Compatibility:
    n_layers = model.n_layers or 0
    if not has_gpu:
        layers = 0
    est = at(layers)
    verdict: Verdict = ("cpu" if est.gpu_layers == 0 else
                        "gpu" if est.gpu_layers > n_layers else "partial")
    if budget.fits(est):
        where = {"cpu": "on the CPU", "gpu": "entirely on the GPU",
                 "partial": f"with {est.gpu_layers} of {n_layers} layers on the GPU"}[verdict]
        return _result(model, verdict, est, budget, kv_type, flash_attn,
                       f"runs {where}: needs {size_text(est.vram_mb)} of {size_text(budget.vram_mb)} usable "
                       f"VRAM and {size_text(est.ram_mb)} of {size_text(budget.ram_mb)} usable RAM")
    best = _most_layers(at, budget, n_layers) if has_gpu else None
    if best is not None:
        hint = f"at most {best.gpu_layers} layers fit"
    elif has_gpu and layers != 0:
        hint = "not even one layer fits: use 0 GPU layers (CPU), or free some VRAM"
    else:
        hint = "lower n_ctx or choose a smaller quantization"
    return _result(model, "none", est, budget, kv_type, flash_attn,
                   f"{est.gpu_layers} GPU layers need {size_text(est.vram_mb)} of VRAM "
                   f"({size_text(budget.vram_mb)} usable) and {size_text(est.ram_mb)} of RAM "
                   f"({size_text(budget.ram_mb)} usable): {hint}")


def _result(model: ModelInfo, verdict: Verdict, est: Estimate, budget: _Budget, kv_type: str,
            flash_attn: bool, reason: str) -> Compatibility:
    if budget.calibrated:
        reason += " (calibrated against a measured load of this model)"
    elif budget.dry_run_checked and est.gpu_layers > 0:
        reason += " (GPU buffers as llama.cpp's dry run sized them)"
    if model.context_length and est.n_ctx > model.context_length:  # a what-if: loads cap n_ctx there
        reason += (f"; n_ctx {est.n_ctx} is over the {model.context_length} tokens the model was "
                   "trained on, past which its answers fall apart")
    return Compatibility(
        model=model.name,
        verdict=verdict,
        compatible=verdict != "none",
        vram_mb=round(est.vram_mb, 1),
        ram_mb=round(est.ram_mb, 1),
        gpu_layers=est.gpu_layers,
        n_layers=est.n_layers,
        n_ctx=est.n_ctx,
        available_vram_mb=round(budget.free_vram_mb, 1),
        available_ram_mb=round(budget.free_ram_mb, 1),
        breakdown=(est.vram + est.ram).rounded(),
        vram_breakdown=est.vram.rounded(),
        ram_breakdown=est.ram.rounded(),
        flash_attn=flash_attn,
        kv_type=kv_type,
        calibrated=budget.calibrated,
        runtime=budget.runtime,
        reason=reason,
    )


def layers_text(fit: Compatibility) -> str:
    """Where the layers go, in llama.cpp's terms: it offloads the output layer first, so
    n_gpu_layers = k puts the output layer and k - 1 blocks on the GPU."""
    n = fit.n_layers
    if fit.gpu_layers > n:
        return f"all {n} layers and the output layer on the GPU"
    if fit.gpu_layers <= 0:
        return f"none of {n} layers on the GPU (CPU only)"
    return (f"the output layer and {fit.gpu_layers - 1} of {n} layers on the GPU "
            f"(n_gpu_layers {fit.gpu_layers})")
