"""FallbackManager: the one facade the host, the CLI and the web UI use.

It owns state (settings, the hardware probe, the catalog, the current model and
their locks) and delegates the work to the modules that know how.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from .catalog import Catalog
from .errors import InvalidModelFile, InvalidSettings
from .fit import KV_TYPES, Compatibility, plan
from .hardware import HardwareProbe, SystemStatus
from .model_info import ModelInfo
from .settings import FallbackSettings

__all__ = ["FallbackManager"]

log = logging.getLogger(__name__)


class FallbackManager:
    """Discovers models, checks what fits, and (later) answers through the failover chain.

    Args:
        settings: the settings to use; None reads the environment and the settings file.
        probe: the hardware probe; None builds one (tests pass one with a simulated NVML).
    """

    def __init__(self, settings: FallbackSettings | None = None, *,
                 probe: HardwareProbe | None = None) -> None:
        self._settings = settings if settings is not None else FallbackSettings()
        self._settings_lock = threading.Lock()
        self._probe = probe or HardwareProbe()
        self._catalog = Catalog()
        self._current: ModelInfo | None = None
        for problem in self._settings.problems:
            log.warning("settings: %s", problem)

    # -- settings -------------------------------------------------------------

    @property
    def settings(self) -> FallbackSettings:
        return self._settings

    def update_settings(self, **changes: Any) -> FallbackSettings:
        """Validate, save atomically and apply ``changes``.

        Raises:
            InvalidSettings: a value is out of range or pinned; nothing changes then.
        """
        with self._settings_lock:
            self._settings = self._settings.saved(**changes)
            return self._settings

    def reset_settings(self) -> FallbackSettings:
        """Forget every saved setting; arguments and the environment still apply."""
        with self._settings_lock:
            self._settings = self._settings.reset()
            return self._settings

    # -- the machine and its models --------------------------------------------

    def system_status(self, *, refresh: bool = False) -> SystemStatus:
        """GPUs, VRAM, RAM and CPU now (cached for about a second)."""
        return self._probe.status(refresh=refresh)

    def discover_models(self, refresh: bool = False) -> list[ModelInfo]:
        """Every model found, valid or not; invalid ones carry the reason."""
        return self._catalog.discover(self._settings, refresh=refresh)

    def find_model(self, name_or_path: str) -> ModelInfo:
        """The model a person means by a name (or an existing path).

        Raises:
            ModelNotFound: no such name, with the closest known names.
        """
        return self._catalog.resolve(name_or_path, self._settings)

    @property
    def current_model(self) -> ModelInfo | None:
        return self._current

    def check_compatibility(
        self,
        name_or_path: str,
        n_ctx: int | None = None,
        gpu_layers: int | None = None,
        flash_attn: bool = False,
        kv_type: str = "f16",
        free_vram_mb: float | None = None,
    ) -> Compatibility:
        """Estimate the memory a model needs and whether it fits this machine now.

        Args:
            name_or_path: a model name from the catalog, or an existing file path.
            n_ctx: context size; None uses ``settings.n_ctx``, capped at the model's own.
            gpu_layers: llama.cpp's n_gpu_layers; None picks the most that fit.
            free_vram_mb: pretend the GPU has this much free ("what if").

        Raises:
            ModelNotFound: unknown name. InvalidModelFile: the file is unusable.
            InvalidSettings: n_ctx, gpu_layers, kv_type or free_vram_mb out of range.
        """
        model = self.find_model(name_or_path)
        if not model.valid:
            raise InvalidModelFile(model.path, model.error or "not a usable model")
        n_ctx = self._check_args(model, n_ctx, gpu_layers, kv_type, free_vram_mb)
        status = self.system_status()
        if free_vram_mb is not None:
            free = [float(free_vram_mb)] if free_vram_mb > 0 else []
        else:
            free = [float(g.vram_free_mb) for g in status.gpus]
        return plan(model, n_ctx=n_ctx, free_vram_mb=free, free_ram_mb=status.ram_available_mb,
                    gpu_layers=gpu_layers, flash_attn=flash_attn, kv_type=kv_type)

    def _check_args(self, model: ModelInfo, n_ctx: int | None, gpu_layers: int | None,
                    kv_type: str, free_vram_mb: float | None) -> int:
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
        if n_ctx is None:
            n_ctx = min(self._settings.n_ctx, model.context_length or self._settings.n_ctx)
        return n_ctx

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Release probes and models. Safe to call twice."""
        self._probe.close()

    def __enter__(self) -> FallbackManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
