"""The drop-in for Z-WAIF's API/fallback_api.py: every function its callers import, in the
shapes they read, answered by the default manager.

Each test makes the default manager itself (``default._manager``) over a folder of its
own, with GPUs simulated at the NVML edge where the figures matter; the chats are real
(the bundled SmolLM2, a scripted server, a port where nothing listens).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_nvml.pynvml import FakeNvml
from servers import ScriptedServer, refused_url

from zwaif_fallback import FallbackError, FallbackManager, FallbackSettings, HardwareProbe, default
from zwaif_fallback import fallback_api as api

ROOT = Path(__file__).resolve().parent.parent
SMOL = "SmolLM2-135M-Instruct.Q4_1"
ASK = [{"role": "user", "content": "Say hello."}]
#: every name Z-WAIF pre-release imports from API.fallback_api (main.py, utils/web_ui.py,
#: utils/settings.py, setup_gguf_model.py, API/api_controller.py and its tests)
CALLERS_IMPORT = ["api_call", "auto_setup_fallback_model", "check_model_compatibility", "discover_models",
                  "ensure_tinyllama_gguf_model", "estimate_model_vram_requirement", "generate_image_response",
                  "get_available_vram_gb", "get_fallback_llm", "get_fallback_model_performance_stats",
                  "get_fallback_system_health", "get_health_recommendations", "get_model_info",
                  "get_system_info", "monitor_fallback_performance", "optimize_fallback_model_selection",
                  "switch_fallback_model", "try_fallbacks"]


def as_default(monkeypatch: pytest.MonkeyPatch, root: Path, *, nvml: Any = None,
               primary_url: str = "") -> FallbackManager:
    """A manager over ``root``, made the default one (as Z-WAIF's process would have it)."""
    settings = FallbackSettings(models_dir=root / "models", data_dir=root / "data",
                                settings_file=root / "settings.json", scan_system_stores=False,
                                primary_url=primary_url, timeout=5, max_retries=1)
    manager = FallbackManager(settings, probe=HardwareProbe(nvml=nvml), background=False)
    monkeypatch.setattr(default, "_manager", manager)
    monkeypatch.setattr(api, "_llm", None)
    return manager


@pytest.fixture
def dead_primary(isolated: Path, monkeypatch: pytest.MonkeyPatch, smollm2: Path) -> Iterator[FallbackManager]:
    manager = as_default(monkeypatch, isolated, nvml=FakeNvml("nodriver"), primary_url=refused_url())
    yield manager
    manager.close()


def test_a_star_import_gives_every_name_z_waifs_callers_import():
    names: dict[str, Any] = {}
    exec("from zwaif_fallback.fallback_api import *", names)
    assert [n for n in [*CALLERS_IMPORT, "FallbackLLM"] if not callable(names.get(n))] == []


def test_importing_the_drop_in_makes_no_manager_and_imports_nothing_heavy():
    code = ("import sys, zwaif_fallback.fallback_api; "
            "print([m for m in ('zwaif_fallback.manager', 'torch', 'transformers', 'llama_cpp', 'gradio', "
            "'pynvml', 'huggingface_hub') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "[]"


def test_system_info_and_free_vram_are_gib_floats_from_the_gpu_probe(isolated, monkeypatch):
    gpu = {"name": "RTX 4060", "total_mb": 8188, "used_mb": 2048}
    with as_default(monkeypatch, isolated, nvml=FakeNvml([gpu])):
        info = api.get_system_info()
        free = api.get_available_vram_gb()
    assert info["gpu_available"] is True and info["gpu_name"] == "RTX 4060" and info["gpu_count"] == 1
    assert info["gpu_memory_total_gb"] == round(8188 / 1024, 2)
    assert free == info["gpu_memory_available_gb"] == round((8188 - 2048) / 1024, 2)
    for key in ("platform", "architecture", "cpu_model", "memory_total_gb", "memory_available_gb"):
        assert info[key]
    assert info["cpu_cores"] == info["cpu_count"] > 0


def test_without_a_gpu_the_bundled_model_is_compatible_on_the_cpu(isolated, monkeypatch, smollm2):
    with as_default(monkeypatch, isolated, nvml=FakeNvml("nodriver")):
        assert api.get_available_vram_gb() == 0.0
        assert api.get_system_info()["gpu_available"] is False
        compatible, message, vram_gb = api.check_model_compatibility(SMOL)
        full_gpu_gb = api.estimate_model_vram_requirement(SMOL)
    # the VRAM it would take on a GPU, not the CPU plan's 0.0: Z-WAIF's "optimize VRAM" picks the
    # compatible model with the least, and took a model that runs on the CPU for the lightest
    assert (compatible, vram_gb) == (True, full_gpu_gb) and "CPU" in message
    assert isinstance(full_gpu_gb, float) and 0 < full_gpu_gb < 4


def test_discovered_names_are_accepted_by_the_other_functions(isolated, monkeypatch, smollm2):
    with as_default(monkeypatch, isolated, nvml=FakeNvml("nodriver")):
        names = api.discover_models()
        info = api.get_model_info(SMOL)
    assert names == [SMOL]
    assert info["name"] == SMOL and info["type"] == "gguf" and info["is_compatible"] is True
    assert info["path"] == str(smollm2) and info["file_size_gb"] > 0
    assert isinstance(info["vram_required_gb"], float) and info["compatibility_message"]


def test_an_unknown_model_comes_back_incompatible_with_the_names_known(isolated, monkeypatch, smollm2):
    with as_default(monkeypatch, isolated, nvml=FakeNvml("nodriver")):
        compatible, message, vram_gb = api.check_model_compatibility("microsoft/phi-2")
        info = api.get_model_info("microsoft/phi-2")
        assert api.estimate_model_vram_requirement("microsoft/phi-2") == 0.0
        assert api.switch_fallback_model("microsoft/phi-2") is False
        assert "error" in api.get_fallback_model_performance_stats("microsoft/phi-2")
    assert (compatible, vram_gb) == (False, 0.0) and SMOL in message
    assert info["is_compatible"] is False and info["compatibility_message"] == message


def test_ensure_finds_the_bundled_model_on_disk_and_writes_nothing(isolated, monkeypatch, smollm2, caplog):
    caplog.set_level(logging.INFO, logger="zwaif_fallback")
    with as_default(monkeypatch, isolated, nvml=FakeNvml("nodriver")):
        path = api.ensure_tinyllama_gguf_model()
        assert api.auto_setup_fallback_model() == path
        assert api.get_optimal_fallback_model() == SMOL
    assert path == str(smollm2) and Path(path).exists()
    assert "nothing was downloaded" in caplog.text
    assert not (isolated / ".env").exists() and "API_FALLBACK_MODEL" not in os.environ


def test_api_call_and_try_fallbacks_are_answered_locally_while_the_primary_is_dead(dead_primary):
    for call in (api.api_call, api.try_fallbacks):
        response = call({"messages": ASK, "max_tokens": 12, "temperature": 0.7, "stop": ["\nUser:"]})
        assert response["model"] == SMOL and response["choices"][0]["message"]["content"]
        assert response["x_fallback"]["attempts"][0]["ok"] is False  # the primary was tried first


def test_the_local_model_answers_through_fallback_llm_and_the_stream(dead_primary, isolated):
    llm = api.get_fallback_llm()
    assert llm is api.get_fallback_llm()
    assert llm.switch_model(SMOL) is True
    assert not (isolated / "settings.json").exists()  # Z-WAIF saves API_FALLBACK_MODEL itself
    assert llm.is_initialized and llm.model_name == SMOL and llm.is_gguf
    answer = llm.generate(ASK, max_new_tokens=8, temperature=0.1)
    assert isinstance(answer, str) and answer
    pieces = list(api.generate_streaming_response(ASK, max_tokens=8))
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)


def test_an_image_goes_to_a_server_as_an_image_part(isolated, monkeypatch, smollm2):
    server = ScriptedServer(["A ", "cat."])
    image = isolated / "LiveImage.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    try:
        with as_default(monkeypatch, isolated, nvml=FakeNvml("nodriver"), primary_url=server.url):
            said = api.generate_image_response(ASK, image_path=str(image), max_tokens=20)
    finally:
        server.close()
    parts = server.bodies[0]["messages"][-1]["content"]
    assert said == "A cat."
    assert parts[-1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_a_local_model_is_told_an_image_it_cannot_see_is_attached(dead_primary, caplog):
    said = api.generate_image_response(ASK, image_path="LiveImage.png", max_tokens=12)
    assert isinstance(said, str) and said
    assert "the model is told one is attached" in caplog.text  # no such file: only named


def test_when_nothing_can_answer_each_caller_gets_its_failure_shape(dead_primary):
    bad = [{"role": "narrator", "content": "x"}]
    assert "choices" not in api.api_call({"messages": bad}) and api.api_call({"messages": bad})["error"]
    assert api.generate_image_response(bad, image_path="LiveImage.png") == ""
    assert list(api.generate_streaming_response(bad)) == [api.FAILED_LINE]
    with pytest.raises(FallbackError, match="role"):
        api.get_fallback_llm().generate(bad)


def test_health_and_optimizing_answer_in_the_dicts_the_health_tab_reads(dead_primary):
    optimized = api.optimize_fallback_model_selection()
    health = api.get_fallback_system_health()
    advice = api.get_health_recommendations(50, 0.0, "None", SMOL)
    assert optimized["status"] == "success" and optimized["selected_model"] == SMOL and optimized["reason"]
    assert optimized["all_models"][0]["model"] == SMOL
    assert isinstance(health["health_score"], int) and health["health_status"] in (
        "Excellent", "Good", "Fair", "Poor")
    assert health["current_model"] == health["optimal_model"] == SMOL
    assert health["available_vram_gb"] == 0.0 and health["gpu_available"] is False
    assert health["recommendations"] == advice and all(isinstance(a, str) for a in advice)


def test_monitoring_starts_in_the_background_and_a_second_start_is_an_error(dead_primary):
    started = api.monitor_fallback_performance(10)
    again = api.monitor_fallback_performance(10)
    dead_primary.stop_monitoring()
    assert started["duration_seconds"] == 10 and started["start_time"] and started["status"]
    assert "already running" in again["error"]
    assert "error" in api.monitor_fallback_performance(5)  # 10 to 300 s
    json.dumps(started)


def test_format_response_cuts_an_answer_to_its_platforms_longest_message():
    llm = api.FallbackLLM()
    cut = llm.format_response("Assistant: " + "a" * 300 + " [Platform: Minecraft]")
    assert cut["platform"] == "minecraft" and cut["role"] == "assistant" and len(cut["content"]) == 256
    assert llm.format_response("hi")["platform"] == "personal"
