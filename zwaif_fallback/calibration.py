"""Fit calibration: what real loads took, next to what was estimated.

Whenever a model is really loaded, the memory the load added is stored beside
the estimate for that model, configuration (n_ctx, flash attention, KV type) and
device. Later estimates for the same triple are multiplied by measured/estimated:

* on a GPU, NVML's per-process figure is the truth both ways (clamped to 0.5-2);
* on the CPU, the resident-memory growth at load misses buffers that are not
  touched yet (the compute buffer), so it can only raise an estimate (1-2).

``check`` reports ``calibrated=True`` once a measurement exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .fit import Compatibility
from .model_info import ModelInfo

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Calibration"]


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
        if fit.gpu_layers > 0 and vram_mb:
            self._store().add_calibration(model_key, config_key, device,
                                          estimated_mb=fit.vram_mb, measured_mb=vram_mb)
        elif fit.gpu_layers == 0 and ram_mb > 0:
            self._store().add_calibration(model_key, config_key, "cpu",
                                          estimated_mb=fit.ram_mb, measured_mb=ram_mb)

    def scales(self, model: ModelInfo, n_ctx: int, flash_attn: bool, kv_type: str, *,
               gpu_device: str | None) -> tuple[float, float, bool]:
        """(VRAM factor, RAM factor, whether any measurement exists) for this configuration."""
        model_key, config_key = self.keys(model, n_ctx, flash_attn, kv_type)
        store = self._store()
        gpu = store.calibration(model_key, config_key, gpu_device) if gpu_device else None
        cpu = store.calibration(model_key, config_key, "cpu")
        return (min(max(gpu, 0.5), 2.0) if gpu else 1.0, min(max(cpu, 1.0), 2.0) if cpu else 1.0,
                bool(gpu or cpu))
