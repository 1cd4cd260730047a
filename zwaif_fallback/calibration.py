"""Fit calibration: what real loads took, next to what was estimated.

Whenever a model is really loaded, the memory the load added is stored beside
the estimate for that model, configuration (n_ctx, flash attention, KV type) and
device. Later estimates for the same triple are multiplied by measured/estimated:

* on a GPU, NVML's per-process figure is the truth both ways (clamped to 0.5-2). It is
  compared with the estimate's buffers (weights, KV cache, compute), not its total: the
  backend takes the runtime's own context out of the measurement, and the context at
  a generation's peak is a constant of the card that calibration leaves alone. Models
  whose buffers are estimated under ``MIN_GPU_BUFFERS_MB`` are not calibrated, since
  the context's variation from card to card (tens of MiB) would dominate;
* on the CPU, the resident-memory growth at load misses buffers that are not
  touched yet (the compute buffer), so it can only raise an estimate (1-2).

``check`` reports ``calibrated=True`` once a measurement exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .fit import Compatibility
from .memory import LoadConfig, estimate
from .model_info import ModelInfo

if TYPE_CHECKING:
    from .store import Store

__all__ = ["MIN_GPU_BUFFERS_MB", "Calibration"]

MIN_GPU_BUFFERS_MB = 512.0


class Calibration:
    """Reads and writes calibrations through the history store (never raises)."""

    def __init__(self, store: Callable[[], Store]) -> None:
        self._store = store

    @staticmethod
    def keys(model: ModelInfo, n_ctx: int, flash_attn: bool, kv_type: str) -> tuple[str, str]:
        return (f"{model.path}|{model.size_bytes}", f"ctx={n_ctx};fa={int(flash_attn)};kv={kv_type}")

    def record(self, model: ModelInfo, fit: Compatibility, measured: tuple[float, float | None], *,
               device: str) -> None:
        """Store one real load: ``measured`` is (RAM, VRAM) in MiB that the load added."""
        model_key, config_key = self.keys(model, fit.n_ctx, fit.flash_attn, fit.kv_type)
        ram_mb, vram_mb = measured
        # The fit may carry an earlier correction already: compare with the raw estimate.
        raw = estimate(model, LoadConfig(n_ctx=fit.n_ctx, gpu_layers=fit.gpu_layers,
                                         flash_attn=fit.flash_attn, kv_type=fit.kv_type))
        if fit.gpu_layers > 0:
            buffers = raw.vram_mb - raw.vram.overhead_mb
            if vram_mb and vram_mb > 0 and buffers >= MIN_GPU_BUFFERS_MB:
                self._store().add_calibration(model_key, config_key, device,
                                              estimated_mb=buffers, measured_mb=vram_mb)
        elif ram_mb > 0:
            self._store().add_calibration(model_key, config_key, "cpu",
                                          estimated_mb=raw.ram_mb, measured_mb=ram_mb)

    def scales(self, model: ModelInfo, n_ctx: int, flash_attn: bool, kv_type: str, *,
               gpu_device: str | None) -> tuple[float, float, bool]:
        """(VRAM buffers factor, RAM factor, whether any measurement exists) for this configuration."""
        model_key, config_key = self.keys(model, n_ctx, flash_attn, kv_type)
        store = self._store()
        gpu = store.calibration(model_key, config_key, gpu_device) if gpu_device else None
        cpu = store.calibration(model_key, config_key, "cpu")
        return (min(max(gpu, 0.5), 2.0) if gpu else 1.0, min(max(cpu, 1.0), 2.0) if cpu else 1.0,
                bool(gpu or cpu))
