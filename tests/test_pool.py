"""LocalPool's switching rules, with a recording backend (a real implementation of Backend)."""

from __future__ import annotations

import threading

from conftest import FakeClock
from servers import wait_until

from zwaif_fallback.backends.base import Backend
from zwaif_fallback.model_info import ModelInfo
from zwaif_fallback.pool import LocalPool


class Recording(Backend):
    def __init__(self, name: str, events: list[str]) -> None:
        super().__init__(name)
        self.events = events
        self._loaded = False

    @property
    def loaded(self) -> bool:
        return self._loaded

    def load(self) -> None:
        if not self._loaded:
            self.events.append(f"load {self.name}")
            self._loaded = True

    def unload(self) -> None:
        if self._loaded:
            self.events.append(f"unload {self.name}")
            self._loaded = False

    def stream(self, messages, params, **kwargs):
        yield self.name




def model(name: str) -> ModelInfo:
    return ModelInfo(name=name, path=f"/models/{name}.gguf", format="gguf", source="test")


def make_pool(events: list[str], clock=None) -> LocalPool:
    kwargs = {"clock": clock} if clock else {}
    return LocalPool(lambda m: Recording(m.name, events), **kwargs)


def test_when_both_fit_the_new_model_loads_before_the_old_is_freed():
    events: list[str] = []
    pool = make_pool(events)
    pool.switch(model("a"), both_fit=False)
    pool.switch(model("b"), both_fit=True)
    assert events == ["load a", "load b", "unload a"]
    assert pool.current.name == "b"


def test_otherwise_the_old_model_is_freed_first():
    events: list[str] = []
    pool = make_pool(events)
    pool.switch(model("a"), both_fit=False)
    pool.switch(model("b"), both_fit=False)
    assert events == ["load a", "unload a", "load b"]


def test_a_model_in_use_is_freed_only_after_its_generation():
    events: list[str] = []
    pool = make_pool(events)
    with pool.use(model("a")) as backend:
        pool.switch(model("b"), both_fit=True)
        assert backend.loaded and events == ["load a", "load b"]
    assert events == ["load a", "load b", "unload a"]


def test_a_release_first_switch_waits_for_the_running_generation():
    events: list[str] = []
    pool = make_pool(events)
    generating, finish = threading.Event(), threading.Event()

    def chat() -> None:
        with pool.use(model("a")):
            generating.set()
            finish.wait(10)
            events.append("generation done")

    worker = threading.Thread(target=chat)
    worker.start()
    generating.wait(10)
    switcher = threading.Thread(target=lambda: pool.switch(model("b"), both_fit=False))
    switcher.start()
    wait_until(lambda: pool.current is None, timeout_s=5, what="the switch to begin")
    assert events == ["load a"]  # a is still in use: nothing freed, nothing loaded
    finish.set()
    worker.join(10)
    switcher.join(10)
    assert events == ["load a", "generation done", "unload a", "load b"]


def test_an_idle_model_is_unloaded_after_keep_alive_and_reloaded_on_use():
    events: list[str] = []
    clock = FakeClock()
    pool = make_pool(events, clock)
    pool.switch(model("a"), both_fit=False)
    clock.now = 59
    assert not pool.reap_idle(60)
    clock.now = 61
    assert pool.reap_idle(60) and events == ["load a", "unload a"]
    assert pool.current.name == "a" and not pool.is_loaded()
    pool.switch(model("a"), both_fit=False)
    assert events[-1] == "load a" and pool.loads == 2


def test_a_model_in_use_is_never_reaped():
    events: list[str] = []
    clock = FakeClock()
    pool = make_pool(events, clock)
    with pool.use(model("a")):
        clock.now = 1000
        assert not pool.reap_idle(60)
    assert events == ["load a"]


def test_keep_alive_zero_never_unloads():
    events: list[str] = []
    clock = FakeClock()
    pool = make_pool(events, clock)
    pool.switch(model("a"), both_fit=False)
    clock.now = 10**6
    assert not pool.reap_idle(0)
