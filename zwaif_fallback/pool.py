"""The local model this process holds, switched safely.

One local model is current at a time. Generations lease its backend; a model is
never freed while a lease is out. A switch loads the new model first when both
fit (the old one is freed when its last generation ends), or waits for the old
one's generations, frees it, then loads the new one. An idle model is unloaded
after ``keep_alive`` seconds and loaded again on its next use.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from .backends.base import Backend
from .model_info import ModelInfo

__all__ = ["HeldModel", "LocalPool"]

log = logging.getLogger(__name__)

B = TypeVar("B", bound=Backend)


@dataclass(frozen=True)
class HeldModel:
    """A local model in memory: ``idle_s`` since a generation last used it (0 while one
    does); keep_alive unloads it after that long."""

    model: ModelInfo
    idle_s: float


class LocalPool(Generic[B]):
    """Holds the current local model. ``make(model)`` builds an unloaded backend for it."""

    def __init__(self, make: Callable[[ModelInfo], B], *,
                 clock: Callable[[], float] = time.monotonic,
                 load: Callable[[ModelInfo, B], None] | None = None,
                 on_load: Callable[[ModelInfo, B, float], None] | None = None) -> None:
        """``load(model, backend)`` loads it (default: ``backend.load()``); ``on_load`` is
        told each load's time."""
        self._make = make
        self._loader = load
        self._clock = clock
        self._on_load = on_load
        self._cond = threading.Condition()
        self._switching = threading.Lock()  # one switch at a time
        self._model: ModelInfo | None = None
        self._backend: B | None = None
        self._leases: dict[B, int] = {}
        self._retired: set[B] = set()
        self._last_used = clock()
        self.loads = 0  # how many loads this pool has made (for health and tests)

    @property
    def current(self) -> ModelInfo | None:
        with self._cond:
            return self._model

    @property
    def backend(self) -> B | None:
        with self._cond:
            return self._backend

    def is_loaded(self) -> bool:
        with self._cond:
            return self._backend is not None and self._backend.loaded

    def held(self) -> HeldModel | None:
        """The model in memory now and how long it has been idle, on this pool's clock;
        None when none is."""
        with self._cond:
            backend = self._backend
            if self._model is None or backend is None or not backend.loaded:
                return None
            idle_s = 0.0 if self._leases.get(backend) else self._clock() - self._last_used
            return HeldModel(model=self._model, idle_s=idle_s)

    @property
    def leases(self) -> int:
        """How many leases are out now, on any backend: a generation holds one from its
        start to its end (an idle unload holds one while it runs)."""
        with self._cond:
            return sum(self._leases.values())

    @contextmanager
    def use(self, model: ModelInfo, *, both_fit: bool = False) -> Iterator[B]:
        """Lease the backend of ``model``, switching to it first if needed."""
        backend = self._acquire(model, both_fit)
        try:
            yield backend
        finally:
            self._release(backend)

    def switch(self, model: ModelInfo, *, both_fit: bool) -> B:
        """Make ``model`` current and loaded. Raises ModelLoadError (the old model stays then,
        when it was not released first)."""
        with self.use(model, both_fit=both_fit) as backend:
            if not backend.loaded:
                self._load(model, backend)
            return backend

    def release(self) -> None:
        """Free the current model once its generations are done; nothing is current after."""
        with self._switching:
            with self._cond:
                old, self._model, self._backend = self._backend, None, None
            if old is not None:
                self._retire(old)

    def reap_idle(self, keep_alive_s: float) -> bool:
        """Unload the current model if nothing used it for ``keep_alive_s``; True if it did."""
        if keep_alive_s <= 0:
            return False
        with self._cond:
            backend = self._backend
            idle = self._clock() - self._last_used
            if (backend is None or not backend.loaded or self._leases.get(backend)
                    or idle < keep_alive_s):
                return False
            self._leases[backend] = 1  # hold it while unloading, so no generation starts
        try:
            backend.unload()
            log.info("unloaded %s after %.0f s idle", backend.name, idle)
        finally:
            self._release(backend, touch=False)
        return True

    def close(self) -> None:
        self.release()

    # -- internals -----------------------------------------------------------------

    def _lease(self, backend: B) -> B:
        self._leases[backend] = self._leases.get(backend, 0) + 1
        self._last_used = self._clock()
        return backend

    def _acquire(self, model: ModelInfo, both_fit: bool) -> B:
        with self._cond:
            if self._model is not None and self._model.path == model.path and self._backend:
                return self._lease(self._backend)
        with self._switching:
            with self._cond:  # another thread may have switched to it meanwhile
                if self._model is not None and self._model.path == model.path and self._backend:
                    return self._lease(self._backend)
                old = self._backend
            new = self._make(model)
            if old is not None and not both_fit:
                with self._cond:
                    self._model = self._backend = None
                self._retire(old, wait=True)
                old = None
            self._load(model, new)
            with self._cond:
                self._model, self._backend = model, new
                self._lease(new)
            if old is not None:
                self._retire(old)
            log.info("switched to %s", model.name)
            return new

    def _load(self, model: ModelInfo, backend: B) -> None:
        start = time.perf_counter()
        if self._loader is not None:
            self._loader(model, backend)
        else:
            backend.load()
        self.loads += 1
        if self._on_load is not None:
            try:
                self._on_load(model, backend, time.perf_counter() - start)
            except Exception as exc:  # bookkeeping must not fail a load
                log.warning("after loading %s: %s", model.name, exc)

    def _retire(self, backend: B, *, wait: bool = False) -> None:
        """Unload ``backend`` now if idle; else when its last lease returns (or wait for it)."""
        with self._cond:
            if wait:
                while self._leases.get(backend):
                    self._cond.wait()
            if self._leases.get(backend):
                self._retired.add(backend)
                return
        backend.unload()

    def _release(self, backend: B, *, touch: bool = True) -> None:
        unload = False
        with self._cond:
            left = self._leases.get(backend, 0) - 1
            if left > 0:
                self._leases[backend] = left
            else:
                self._leases.pop(backend, None)
                if backend in self._retired:
                    self._retired.discard(backend)
                    unload = True
            if touch:
                self._last_used = self._clock()
            self._cond.notify_all()
        if unload:
            backend.unload()
