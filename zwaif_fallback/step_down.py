"""A load that runs out of memory steps down instead of failing.

The rungs, one at a time: fewer GPU layers (planned again against memory read now, else
half as many; at most ``MAX_GPU_RUNGS`` times), then the CPU, then half the context, down
to ``MIN_STEP_DOWN_CTX``. Only ``OutOfMemory`` steps down: any other load failure, or
running out at the last rung, is raised. Each step is logged and kept for the chat's
attempt list.

A load that fails for another reason (a damaged file, an architecture the runtime does not
know) would fail again: the file is remembered as such until it changes (``failed``), so
that a ranking, the optimizer and every later chat pass it by instead of loading it again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from .backends.base import LocalBackend
from .errors import ModelLoadError, OutOfMemory
from .fit import Compatibility
from .model_info import ModelInfo

__all__ = ["MAX_GPU_RUNGS", "MIN_STEP_DOWN_CTX", "StepDown"]

log = logging.getLogger(__name__)

# The smallest context a load steps down to after running out of memory: a companion bot's
# persona and a few turns of history still fit.
MIN_STEP_DOWN_CTX = 1024
# Loads with fewer GPU layers tried after running out of memory before the CPU: each
# failed GPU load costs a weights upload, and a card that refuses half the layers twice
# is held by something else.
MAX_GPU_RUNGS = 2


def _plan_text(fit: Compatibility) -> str:
    return f"{fit.gpu_layers} GPU layers and n_ctx {fit.n_ctx}"


class StepDown:
    """Loads backends down the ladder. ``fit(model, **options)`` is ``LocalModels.fit``."""

    def __init__(self, fit: Callable[..., Compatibility], *,
                 on_failed: Callable[[], None] = lambda: None) -> None:
        self._fit = fit
        self._on_failed = on_failed
        self._steps: dict[str, list[str]] = {}  # model path -> the step-downs of its last load
        self._failed: dict[tuple[str, int, int], str] = {}  # the file as it was -> why

    def failed(self, model: ModelInfo) -> str | None:
        """Why ``model`` failed to load in this process for a reason other than memory, while
        its file is unchanged since; None when it did not."""
        key = _identity(model)
        return self._failed.get(key) if key is not None else None

    def load(self, model: ModelInfo, backend: LocalBackend) -> None:
        """Load ``backend``, stepping down a rung each time it runs out of memory."""
        steps: list[str] = []
        self._steps[model.path] = steps
        gpu_rungs = 0  # steps to fewer GPU layers so far
        while True:
            try:
                backend.load()
                return
            except OutOfMemory as exc:
                fit = backend.fit
                smaller = self._smaller(model, fit, gpu_rungs) if fit is not None else None
                if fit is None or smaller is None:
                    tried = f" (after {'; '.join(steps)})" if steps else ""
                    raise OutOfMemory(f"{exc}{tried}; nothing smaller is left to try: free some "
                                      "memory or choose a smaller model") from exc
                step = f"out of memory with {_plan_text(fit)}: trying {_plan_text(smaller)}"
                log.warning("%s: %s", model.name, step)
                steps.append(step)
                gpu_rungs += smaller.gpu_layers > 0
                backend.replan(smaller)
            except ModelLoadError as exc:
                key = _identity(model)
                if key is not None:
                    self._failed[key] = str(exc)
                    self._on_failed()
                raise

    def steps(self, model: ModelInfo) -> list[str]:
        """The step-downs of ``model``'s last load, told once: the chat whose attempt caused
        the load reports them, later chats on the same load do not."""
        return self._steps.pop(model.path, [])

    def _smaller(self, model: ModelInfo, fit: Compatibility, gpu_rungs: int) -> Compatibility | None:
        """The next rung below ``fit``, or None at the bottom."""

        def again(**options: Any) -> Compatibility:
            return self._fit(model, **({"n_ctx": fit.n_ctx, "flash_attn": fit.flash_attn,
                                        "kv_type": fit.kv_type} | options))

        if fit.gpu_layers > 0:
            fresh = again(refresh=True)
            layers = fresh.gpu_layers if 0 < fresh.gpu_layers < fit.gpu_layers else fit.gpu_layers // 2
            return again(gpu_layers=layers if layers > 0 and gpu_rungs < MAX_GPU_RUNGS else 0)
        if fit.n_ctx // 2 >= MIN_STEP_DOWN_CTX:
            return again(n_ctx=fit.n_ctx // 2, gpu_layers=0)
        return None


def _identity(model: ModelInfo) -> tuple[str, int, int] | None:
    """The file (or folder) as it is now: a replaced or repaired one is tried again."""
    try:
        st = os.stat(model.path)
    except OSError:
        return None
    return os.path.realpath(model.path), st.st_size, st.st_mtime_ns
