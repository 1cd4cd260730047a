"""The web UI's handlers, called directly with a real FallbackManager (no browser)."""

from __future__ import annotations

import inspect
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import httpx
import pandas as pd
import pytest
from builders import write_gguf
from fake_nvml.pynvml import FakeNvml
from servers import ScriptedOllama, ScriptedServer, refused_url, serve_in_process, wait_until

from webui import build_app, charts, compat, launch
from webui import format as fmt
from webui.diagnostics import DiagnosticsHandlers
from webui.health_monitor import HealthHandlers
from webui.main_api import KEY_AT, MainApiHandlers, build_main_api_section, main_api_markdown
from webui.management import ManagementHandlers
from zwaif_fallback import FallbackManager, FallbackSettings, HardwareProbe, InvalidSettings, PortUnavailable
from zwaif_fallback.cors import Gate, allowed
from zwaif_fallback.upstream_probe import probe_all

SMOL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture
def models_dir(tmp_path: Path, tiny_gguf: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    return folder


def make_manager(tmp_path: Path, models_dir: Path) -> FallbackManager:
    return FallbackManager(FallbackSettings(
        models_dir=models_dir, scan_system_stores=False, keep_alive=0,
        settings_file=tmp_path / "fallback_settings.json", data_dir=tmp_path / "data"))


@pytest.fixture
def manager(tmp_path: Path, models_dir: Path) -> Iterator[FallbackManager]:
    with make_manager(tmp_path, models_dir) as m:
        yield m


def saved(manager: FallbackManager) -> dict[str, Any]:
    path = Path(manager.settings.settings_file)
    return json.loads(path.read_text()) if path.exists() else {}


def is_update(update: Any, **expected: Any) -> bool:
    return isinstance(update, dict) and update.get("__type__") == "update" and all(
        update.get(k) == v for k, v in expected.items())


# -- Gradio 4.x's tables ------------------------------------------------------------------


def test_a_table_sent_as_an_update_or_empty_is_padded_then_settled_and_a_skip_is_left_alone() -> None:
    # the GPUs' table comes as gr.update(value=..., visible=...): its frame is padded, not skipped
    frame = pd.DataFrame([["0", "RTX 3060"]], columns=["GPU", "name"])
    shown, settled = compat._padded_and_settled(gr.update(value=frame, visible=True))
    assert is_update(shown, visible=True) and len(shown["value"]) == 2
    assert list(shown["value"].iloc[1]) == ["", ""]
    assert is_update(settled) and settled["value"].equals(frame)
    shown, settled = compat._padded_and_settled(frame)
    assert len(shown) == 2 and settled["value"].equals(frame)
    # a table with no rows is measured anew too (else 4.x keeps it 500 px tall); a skip is left alone
    shown, settled = compat._padded_and_settled(frame.iloc[0:0])  # as one blank row: 4.x draws
    assert len(shown) == 2 and settled["value"].values.tolist() == [["", ""]]  # [] with a header short
    skip = gr.skip()
    assert compat._padded_and_settled(skip) == (skip, gr.skip())


# -- diagnostics ---------------------------------------------------------------------


def test_refresh_diagnostics_lists_models_with_verdicts(manager: FallbackManager) -> None:
    status, gpus, models, dropdown = DiagnosticsHandlers(manager).refresh()
    assert "VRAM probe that answered:** `none`" in status
    assert "No GPU found" in status
    assert is_update(gpus, visible=False) and gpus["value"].empty
    assert list(gpus["value"].columns) == fmt.GPU_COLUMNS
    assert list(models["name"]) == ["tiny", SMOL]
    assert all("cpu" in fit for fit in models["fit"])
    assert dropdown["choices"] == ["tiny", SMOL]


def test_refresh_diagnostics_shows_an_invalid_file_with_its_reason(manager: FallbackManager,
                                                                   models_dir: Path) -> None:
    (models_dir / "broken.gguf").write_bytes(b"not a gguf at all")
    _, _, models, dropdown = DiagnosticsHandlers(manager).refresh()
    row = models[models["name"] == "broken"].iloc[0]
    assert row["fit"].startswith("⚠️ invalid:")
    assert "broken" not in dropdown["choices"]


def test_refresh_diagnostics_lists_each_gpu(tmp_path: Path, models_dir: Path) -> None:
    nvml = FakeNvml([{"name": "RTX 4090", "total_mb": 24576, "used_mb": 2048, "utilization": 35,
                      "processes": [{"pid": os.getpid(), "used_mb": 1536}]}])
    with FallbackManager(FallbackSettings(
            models_dir=models_dir, scan_system_stores=False, keep_alive=0, vram_monitoring=False,
            settings_file=tmp_path / "fallback_settings.json", data_dir=tmp_path / "data"),
            probe=HardwareProbe(nvml=nvml), background=False) as manager:
        status, gpus, _, _ = DiagnosticsHandlers(manager).refresh()
    assert is_update(gpus, visible=True)
    assert gpus["value"].to_dict("records") == [
        {"GPU": 0, "name": "RTX 4090", "free VRAM": "22.0 GiB", "used": "2.0 GiB", "total": "24.0 GiB",
         "load": "35%", "temp": "–"}]
    assert f"(pid {os.getpid()}, 1.5 GiB)" in status


def memory(frame: pd.DataFrame, where: str) -> dict[str, float]:
    """One bar of the memory breakdown: part -> MiB."""
    rows = frame[frame["memory"] == where]
    return dict(zip(rows["part"], rows["size_mb"], strict=True))


def test_compatibility_shows_verdict_breakdown_and_layers(manager: FallbackManager) -> None:
    text, breakdown = DiagnosticsHandlers(manager).test_compatibility(SMOL, None, "f16", False, None)
    fit = manager.check_compatibility(SMOL)
    assert "Runs on the CPU (`cpu`)" in text
    assert "none of 30 layers on the GPU" in text
    assert list(breakdown.columns) == ["memory", "part", "size_mb"]
    assert set(memory(breakdown, "VRAM").values()) == {0}
    ram = memory(breakdown, "RAM")
    assert list(ram) == ["weights", "KV cache", "compute buffers", "runtime overhead"]
    assert ram["weights"] > ram["KV cache"] > 0
    assert sum(ram.values()) == pytest.approx(fit.ram_breakdown.total_mb, abs=0.2)


def test_compatibility_what_if_a_gpu_had_8_gib(manager: FallbackManager) -> None:
    text, breakdown = DiagnosticsHandlers(manager).test_compatibility(SMOL, 2048, "f16", False, 8192)
    assert "Fits on the GPU (`gpu`)" in text
    assert "all 30 layers and the output layer on the GPU" in text
    assert "2048 tokens" in text
    vram = memory(breakdown, "VRAM")
    assert vram["weights"] > 0 and vram["KV cache"] > 0
    assert memory(breakdown, "RAM")["KV cache"] == 0


def test_compatibility_accepts_a_typed_path(manager: FallbackManager, models_dir: Path) -> None:
    other = write_gguf(models_dir.parent / "elsewhere.gguf", n_layer=3)
    text, _ = DiagnosticsHandlers(manager).test_compatibility(str(other), None, "f16", False, None)
    assert "none of 3 layers on the GPU" in text


def test_compatibility_of_an_unknown_model_warns_without_a_traceback(manager: FallbackManager) -> None:
    with pytest.warns(UserWarning, match="no model named 'nope'"):
        text, breakdown = DiagnosticsHandlers(manager).test_compatibility("nope", None, "f16", False, None)
    assert text.startswith("❌") and "known models" in text
    assert breakdown == gr.skip()


# -- management: models and VRAM ------------------------------------------------------


def test_refresh_model_list_fills_both_dropdowns(manager: FallbackManager) -> None:
    current, table, switch_to, test_model = ManagementHandlers(manager).refresh_models()
    assert "none loaded yet" in current
    assert list(table["name"]) == ["tiny", SMOL]
    assert switch_to["choices"] == test_model["choices"] == ["tiny", SMOL]


def test_switch_model_loads_it_and_remembers_it(manager: FallbackManager) -> None:
    text = ManagementHandlers(manager).switch_model("tiny")
    assert "`tiny`" in text
    assert manager.current_model is not None and manager.current_model.name == "tiny"
    assert saved(manager)["preferred_model"] == "tiny"


def test_switch_to_an_unknown_model_warns_and_keeps_the_current(manager: FallbackManager) -> None:
    with pytest.warns(UserWarning, match="no model named 'nope'"):
        text = ManagementHandlers(manager).switch_model("nope")
    assert "❌" in text and "none loaded yet" in text
    assert manager.current_model is None


def test_vram_status_names_the_optimal_model(manager: FallbackManager) -> None:
    text, auto, ranking = ManagementHandlers(manager).vram_status()
    assert "no GPU found" in text
    assert f"the optimal model is `{SMOL}`" in text
    assert auto is False
    assert list(ranking["model"]) == [SMOL, "tiny"]


def test_optimize_switches_to_the_optimal_model_and_says_why(manager: FallbackManager) -> None:
    manager.switch_model("tiny")
    text, ranking, current = ManagementHandlers(manager).optimize()
    assert f"Switched to the optimal model **{SMOL}**" in text and "scores" in text
    assert list(ranking["model"]) == [SMOL, "tiny"]
    assert SMOL in current
    assert manager.current_model is not None and manager.current_model.name == SMOL


def test_auto_optimize_checkbox_is_saved(manager: FallbackManager) -> None:
    text, value = ManagementHandlers(manager).save_auto_optimize(True)
    assert value is True and "auto-optimize VRAM is on" in text
    assert saved(manager)["auto_optimize_vram"] is True


# -- management: advanced settings ---------------------------------------------------------


def test_save_settings_writes_only_the_changed_values(manager: FallbackManager) -> None:
    message, *controls = ManagementHandlers(manager).save_settings(45, 5, True, False)
    assert message.startswith("✅ Saved timeout = 45.0, max_retries = 5, vram_monitoring = False")
    assert saved(manager) == {"timeout": 45.0, "max_retries": 5, "vram_monitoring": False}
    assert manager.settings.timeout == 45
    assert is_update(controls[0], value=45.0, info="saved in the settings file")
    assert is_update(controls[2], value=True, info="default value")


def test_an_out_of_range_value_is_refused_and_nothing_is_written(manager: FallbackManager) -> None:
    handlers = ManagementHandlers(manager)
    handlers.save_settings(30, 4, True, True)
    before = Path(manager.settings.settings_file).read_bytes()
    with pytest.warns(UserWarning, match="timeout=500"):
        message, *_ = handlers.save_settings(500, 7, True, True)
    assert "allowed: 5 to 120" in message and "Nothing was saved" in message
    assert Path(manager.settings.settings_file).read_bytes() == before
    assert manager.settings.max_retries == 4


def test_a_value_pinned_by_the_environment_says_so_and_is_refused(
        tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALLBACK_TIMEOUT", "20")
    with make_manager(tmp_path, models_dir) as manager:
        handlers = ManagementHandlers(manager)
        timeout, *_ = handlers.load_settings()
        assert timeout["value"] == 20.0 and "FALLBACK_TIMEOUT" in timeout["info"]
        with pytest.warns(UserWarning, match="pinned by the environment variable FALLBACK_TIMEOUT"):
            message, *_ = handlers.save_settings(45, 7, True, True)
        assert "Nothing was saved" in message
        assert not Path(manager.settings.settings_file).exists()
        message, *_ = handlers.save_settings(20, 7, True, True)  # the pinned value as it is: fine
        assert saved(manager) == {"max_retries": 7}


def test_reset_to_defaults_forgets_the_sections_saved_values_only(manager: FallbackManager) -> None:
    handlers = ManagementHandlers(manager)
    handlers.save_settings(60, 9, False, False)
    MainApiHandlers(manager).save("http://127.0.0.1:5000/v1", "openai", "", "", "", "")
    message, timeout, retries, auto_switch, monitoring, auto_optimize = handlers.reset_settings()
    assert message.startswith("✅ Reset") and "the main API and the models are kept" in message
    assert timeout["value"] == 30.0 and retries["value"] == 3 and auto_switch["value"] is True
    assert saved(manager) == {"primary_url": "http://127.0.0.1:5000/v1"}


def test_a_fractional_count_or_the_text_false_is_read_as_the_cli_reads_it(manager: FallbackManager) -> None:
    # int(2.7) saved 2 retries and bool("false") kept auto_switch on, both without a word
    handlers = ManagementHandlers(manager)
    with pytest.warns(UserWarning, match="fractional part"):
        message, *_ = handlers.save_settings(30, 2.7, True, True)
    assert "Nothing was saved" in message and saved(manager) == {}
    message, *_ = handlers.save_settings(30, 3, "false", "false")
    assert saved(manager) == {"auto_switch": False, "vram_monitoring": False}, message


def test_a_save_while_the_settings_file_is_corrupt_is_refused_and_the_tab_says_why(
        manager: FallbackManager) -> None:
    # the tab said "Saved", the file then held only the new value, and the running manager
    # dropped its main API to the default
    MainApiHandlers(manager).save("http://127.0.0.1:5000/v1", "openai", "", "", "", "")
    path = Path(manager.settings.settings_file)
    text = path.read_text().replace("}", ",}")  # a trailing comma, typed by hand
    path.write_text(text)
    handlers = ManagementHandlers(manager)
    with pytest.warns(UserWarning, match="corrupt"):
        message, *_ = handlers.save_settings(40, 3, True, True)
    assert "Nothing was saved" in message and "line" in message and "settings --reset" in message
    assert path.read_text() == text and not list(path.parent.glob("*.bak*"))
    assert manager.settings.primary_url == "http://127.0.0.1:5000/v1"
    with make_manager(path.parent, manager.settings.models_dir) as started_now:
        assert "corrupt" in ManagementHandlers(started_now).settings_problems()


def test_a_main_api_saved_by_another_process_answers_a_running_managers_next_chat(
        tmp_path: Path, models_dir: Path) -> None:
    # serve kept chatting to the old main API (or the local models) until restarted, while the
    # `ui` command's tab said "the next chat uses it"
    server = ScriptedServer(["Hi from the new main API."])
    try:
        with make_manager(tmp_path, models_dir) as serving, make_manager(tmp_path, models_dir) as ui:
            _, message, *_ = MainApiHandlers(ui).save(server.url, "openai", "", "", "", "")
            answer = serving.chat_completion({"messages": [{"role": "user", "content": "Hello"}]})
    finally:
        server.close()
    assert message.endswith("the next chat uses it.")
    assert (answer["x_fallback"]["source"], answer["choices"][0]["message"]["content"]) == (
        "primary", "Hi from the new main API.")


# -- management: the main API ----------------------------------------------------------------


def test_the_main_api_set_in_the_ui_answers_the_next_chat(manager: FallbackManager) -> None:
    # serve's users set the address here, not in the environment; no restart between
    server, down = ScriptedServer(["Hi from the main API."], model="qwen2.5"), refused_url()
    try:
        handlers = MainApiHandlers(manager)
        status, *controls = handlers.load()
        assert status.startswith("No main API is set: chats go to the local models.")
        assert is_update(controls[0], value="", info="default value")
        status, message, url, speaks, model, key, remotes, characters, origins = handlers.save(
            server.url + "/", "openai", "", "", f"{down}, \n", "")
        answer = manager.chat_completion({"messages": [{"role": "user", "content": "Hello"}]})
    finally:
        server.close()
    assert message == f"✅ Saved primary_url = {server.url}, remote_urls = {down}; the next chat uses it."
    assert status == (f"Chats go to {server.url} (OpenAI-compatible) first, then 1 more server, "
                      "then the local models.")
    assert saved(manager) == {"primary_url": server.url, "remote_urls": [down]}
    assert is_update(url, value=server.url, info="saved in the settings file")
    assert is_update(remotes, value=down) and is_update(speaks, value="openai", info="default value")
    assert (answer["x_fallback"]["source"], answer["choices"][0]["message"]["content"]) == (
        "primary", "Hi from the main API.")


@pytest.mark.parametrize("values, expected", [
    (("127.0.0.1:5000/v1", "openai", "", "k", "", ""), "must start with http:// or https://"),
    (("", "openai", "", "", "http://ok:1/v1, ftp://x", ""), "must start with http:// or https://"),
    (("", "lmstudio", "", "", "", ""), "primary_api"),
])
def test_a_bad_main_api_value_is_refused_and_nothing_is_written(
        manager: FallbackManager, values: tuple[str, ...], expected: str) -> None:
    with pytest.warns(UserWarning, match="Saving the main API failed"):
        _, message, *controls = MainApiHandlers(manager).save(*values)
    assert expected in message and "Nothing was saved" in message, message
    assert saved(manager) == {} and manager.settings.primary_url == "" and manager.settings.remote_urls == []
    assert all("value" not in c for c in controls)  # what the person typed stays to be corrected


def test_a_characters_folder_that_does_not_exist_is_refused(manager: FallbackManager, tmp_path: Path) -> None:
    missing = tmp_path / "text-generation-webui"
    with pytest.warns(UserWarning, match="does not exist"):
        _, message, *_ = MainApiHandlers(manager).save("", "openai", "", "", "", str(missing))
    assert str(missing) in message and saved(manager) == {}
    missing.mkdir()
    MainApiHandlers(manager).save("", "openai", "", "", "", f'"{missing}"')  # Windows' "Copy as path"
    assert saved(manager) == {"characters_dir": str(missing)}


def test_the_api_key_is_saved_kept_and_forgotten_but_never_shown(manager: FallbackManager) -> None:
    # TabbyAPI, or text-generation-webui started with --api-key, refuse a request without it
    server, handlers = ScriptedServer(["Hi."]), MainApiHandlers(manager)
    try:
        *_, key, _, _, _ = handlers.save(server.url, "openai", "", "s3cret", "", "")
        answer = manager.chat_completion({"messages": [{"role": "user", "content": "Hello"}]})
        _, kept, *_ = handlers.save(server.url, "openai", "", "", "", "")  # blank: keep it
    finally:
        server.close()
    assert answer["x_fallback"]["source"] == "primary"
    assert server.headers[0]["authorization"] == "Bearer s3cret"
    assert is_update(key, value="", info="a key is saved: type another to replace it, or forget it")
    assert kept == "Nothing to save: the values are the saved ones."
    assert "s3cret" not in repr(handlers.load())
    _, message, *controls = handlers.forget_key()
    assert message == "✅ The saved API key is forgotten." and "primary_api_key" not in saved(manager)
    assert controls[KEY_AT]["info"].startswith("none saved")


def test_a_saved_key_is_not_sent_to_another_server(manager: FallbackManager) -> None:
    handlers = MainApiHandlers(manager)
    handlers.save("http://127.0.0.1:5000/v1", "openai", "", ' "s3cret" ', "", "")  # quotes, spaces
    assert manager.settings.primary_api_key.get_secret_value() == "s3cret"
    handlers.save("http://127.0.0.1:5000/v1/", "openai", "m", "", "", "")  # the same server
    assert manager.settings.primary_api_key.get_secret_value() == "s3cret"
    _, message, *_ = handlers.save("http://192.168.1.20:5000/v1", "openai", "m", "", "", "")
    assert "primary_api_key = (none)" in message and "it is forgotten" in message
    assert manager.settings.primary_api_key.get_secret_value() == ""


def test_a_key_pinned_by_the_environment_is_neither_replaced_nor_forgotten(
        tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALLBACK_PRIMARY_API_KEY", "envkey")
    with make_manager(tmp_path, models_dir) as manager:
        handlers = MainApiHandlers(manager)
        _, *controls = handlers.load()
        key = controls[KEY_AT]
        assert key["interactive"] is False and "FALLBACK_PRIMARY_API_KEY" in key["info"]
        _, message, *_ = handlers.save("http://127.0.0.1:5000/v1", "openai", "", "typed", "", "")
        assert saved(manager) == {"primary_url": "http://127.0.0.1:5000/v1"}  # the URL is saved anyway
        assert "The API key typed is not saved: FALLBACK_PRIMARY_API_KEY sets the one in use" in message
        _, message, *_ = handlers.forget_key()
        assert "set by FALLBACK_PRIMARY_API_KEY" in message
        assert manager.settings.primary_api_key.get_secret_value() == "envkey"


@pytest.mark.parametrize("url, remotes", [
    ("http://localhost:5001/v1", ""), ("http://127.0.0.1:5001", ""),  # the tabs are on serve's port
    ("http://127.0.0.1:5000/v1", "http://[::1]:5001/v1"),
])
def test_the_page_s_own_address_is_refused_as_a_server(manager: FallbackManager, url: str,
                                                       remotes: str) -> None:
    with pytest.warns(UserWarning, match="is this page's own address"):
        _, message, *_ = MainApiHandlers(manager).save(url, "openai", "", "", remotes, "",
                                                       page_host="127.0.0.1:5001")
    assert "Not saved" in message and saved(manager) == {}
    MainApiHandlers(manager).save("http://127.0.0.1:5000/v1", "openai", "", "", "", "",
                                  page_host="127.0.0.1:5001")
    assert saved(manager) == {"primary_url": "http://127.0.0.1:5000/v1"}


def test_the_controls_are_in_the_order_save_takes_them() -> None:
    # a drift would validate the typed key as a URL list, and echo it in the error
    with gr.Blocks():
        section = build_main_api_section(lambda name: name)
    assert [c.elem_id for c in section.controls] == [
        "api-url", "api-speaks", "api-model", "api-key", "api-remotes", "api-characters", "api-origins"]
    assert section.controls[KEY_AT].type == "password"
    positional = [p.name for p in inspect.signature(MainApiHandlers.save).parameters.values()
                  if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional[1:] == ["primary_url", "primary_api", "primary_model", "api_key", "remote_urls",
                              "characters_dir", "cors_origins"]


def test_the_web_pages_that_may_call_serve_are_saved_and_let_in_at_once(manager: FallbackManager) -> None:
    # a browser host on a website (Amica's) is refused by serve until its origin is listed
    gate = Gate(lambda: manager.settings.cors_origins)
    amica = "https://amica.arbius.ai"
    assert not allowed(amica, manager.settings.cors_origins)
    handlers = MainApiHandlers(manager)
    *_, origins = handlers.load()
    assert is_update(origins, value="", info="default value")
    _, message, *_, origins = handlers.save("", "openai", "", "", "", "", "https://Amica.Arbius.ai:443/, ")
    assert "cors_origins = https://amica.arbius.ai" in message and "lets those pages in at once" in message
    assert saved(manager) == {"cors_origins": [amica]}
    assert is_update(origins, value=amica, info="saved in the settings file")
    scope = {"type": "http", "headers": [(b"host", b"127.0.0.1:5001"), (b"origin", amica.encode())]}
    assert gate.refusal(scope, api=True) is None  # the running serve's gate reads it at each request


def test_a_file_page_origin_is_refused_in_the_tab_with_what_to_do(manager: FallbackManager) -> None:
    with pytest.warns(UserWarning, match="Saving the main API failed"):
        _, message, *_ = MainApiHandlers(manager).save("", "openai", "", "", "", "", "null")
    assert "null" in message and "Nothing was saved" in message and saved(manager) == {}


def test_an_ollama_main_api_without_a_model_is_saved_with_a_warning(manager: FallbackManager) -> None:
    _, message, *_ = MainApiHandlers(manager).save("http://127.0.0.1:11434", "ollama", "", "", "", "")
    assert saved(manager) == {"primary_url": "http://127.0.0.1:11434", "primary_api": "ollama"}
    assert "Ollama answers only a request that names one of its models" in message
    _, message, *_ = MainApiHandlers(manager).save("http://127.0.0.1:11434", "ollama", "llama3", "", "", "")
    assert message == "✅ Saved primary_model = llama3; the next chat uses it."


def test_the_main_api_status_says_when_chats_skip_it() -> None:
    settings = FallbackSettings(primary_url="http://127.0.0.1:5000/v1", primary_api="ollama")
    open_ = {"state": "open", "failures": 3, "retry_in_s": 41.6, "probing": False}
    assert main_api_markdown(settings, {}) == (
        "Chats go to http://127.0.0.1:5000/v1 (Ollama's own API) first, then the local models.")
    said = main_api_markdown(settings, {settings.primary_url: open_})
    assert said.endswith("  \nThe main API 🔴 failed 3 times in a row: chats skip it and the fallback "
                         "answers; it is tried again in 42 s.")
    assert "checked now" in main_api_markdown(settings, {settings.primary_url: {**open_, "probing": True}})
    # Z-WAIF's pre-release may only complete text: that circuit counts too
    texts = main_api_markdown(settings, {settings.primary_url: {**open_, "state": "closed"},
                                         f"{settings.primary_url} (text completions)": open_})
    assert "failed 3 times in a row" in texts
    host = main_api_markdown(settings, {"host:api_call": open_})
    assert host.startswith("This host's own API call (`host:api_call`: 🔴 failed 3 times in a row")


def test_a_host_s_own_api_call_is_named_as_what_answers_first(manager: FallbackManager) -> None:
    # Z-WAIF embeds the tabs and passes its own API call: "no main API" alone would mislead
    def zwaif_api(messages: list[dict[str, str]], **gen: object) -> str:
        return "Hi from the host."

    assert manager.chat([{"role": "user", "content": "Hello"}], primary=zwaif_api).source == "primary"
    status, *_ = MainApiHandlers(manager).load()
    assert status.startswith("This host's own API call (`host:test_a_host_s_own_api_call"), status
    assert "Chats without it (serve, Try the fallback): no main API is set" in status


def test_the_main_api_status_says_whether_each_server_answers(manager: FallbackManager) -> None:
    # a wrong URL showed only when a chat failed on it; now the section asks each server
    server, down = ScriptedServer(["Hi."], listed=["qwen2.5", "llama3"]), refused_url()
    try:
        handlers = MainApiHandlers(manager)
        handlers.save(server.url, "openai", "", "", down, "")
        status = handlers.check()
    finally:
        server.close()
    chain, main_api, remote = status.split("  \n")
    assert chain == (f"Chats go to {server.url} (OpenAI-compatible) first, then 1 more server, "
                     "then the local models.")
    assert main_api == "The main API ✅ answers (models: `qwen2.5`, `llama3`)."
    assert remote.startswith(f"{down} 🔴 does not answer: connection refused at {down} — is it running, on "
                             "this port? Oobabooga listens on 5000 when started with --api"), remote


def test_a_main_api_that_lacks_its_model_or_needs_a_key_says_what_to_do(manager: FallbackManager) -> None:
    ollama, keyed = ScriptedOllama(["Hi."], model="llama3:latest"), ScriptedServer(["Hi."], key="k")
    handlers = MainApiHandlers(manager)
    try:
        handlers.save(ollama.url, "ollama", "qwen2.5", "", "", "")
        lacking = handlers.check()
        handlers.save(keyed.url, "openai", "", "", "", "")
        unkeyed = handlers.check()
    finally:
        ollama.close()
        keyed.close()
    assert lacking.endswith("The main API ✅ answers (models: `llama3:latest`).  \n⚠️ It does not list the "
                            "model `qwen2.5` it is asked for: give one it lists as the model to ask for, or "
                            "`ollama pull qwen2.5`: Ollama refuses a model it does not have."), lacking
    assert unkeyed.endswith("The main API 🔴 answers HTTP 401 (Unauthorized): Invalid API key — the API key "
                            "is wrong or missing: type the key the server was started with "
                            "(text-generation-webui's --api-key, TabbyAPI's api_tokens.yml)."), unkeyed


def test_a_main_api_that_is_serve_itself_is_named_so(manager: FallbackManager, tmp_path: Path) -> None:
    # saved before the page's own address was refused, or set in the environment
    serve_root = tmp_path / "serve"
    serve_root.mkdir()
    with serve_in_process(serve_root, refused_url()) as (served, _):
        manager.update_settings(primary_url=served.url + "/v1")
        status = MainApiHandlers(manager).check()
    assert f"The main API 🔴 is this zwaif-fallback serve itself ({served.url}/v1) — each chat would come " \
           "back here" in status, status


def test_many_model_names_are_cut_short() -> None:
    server = ScriptedServer(["Hi."], listed=[f"m{i}" for i in range(11)])
    try:
        settings = FallbackSettings(primary_url=server.url)
        status = main_api_markdown(settings, {}, probe_all(settings))
    finally:
        server.close()
    assert status.endswith("(models: `m0`, `m1`, `m2`, `m3`, `m4`, `m5`, `m6`, `m7` and 3 more).")


# -- management: benchmarks and the try-out ---------------------------------------------------


def poll_until_done(handlers: ManagementHandlers, job_id: str) -> tuple[Any, ...]:
    def done() -> tuple[Any, ...] | None:
        polled = handlers.poll_benchmark(job_id)
        return polled if polled[3] == compat.timer_update(active=False) else None

    return wait_until(done, timeout_s=120, what="the benchmark job to end", interval_s=0.2)


def test_benchmark_runs_as_a_job_and_the_poll_fills_table_and_chart(manager: FallbackManager) -> None:
    handlers = ManagementHandlers(manager)
    job_id, progress, timer = handlers.start_benchmark("tiny", "Say hi", None)
    assert job_id and "benchmark tiny" in progress and timer == compat.timer_update(active=True)
    progress, table, chart, timer = poll_until_done(handlers, job_id)
    assert "✅" in progress and "done" in progress
    assert list(table["model"]) == ["tiny"] and bool(table["ok"].iloc[0])
    assert list(chart["model"]) == ["tiny"] and chart["gen_tps"].iloc[0] > 0
    results, chart = handlers.benchmark_results()  # what a fresh page shows
    assert list(results["model"]) == ["tiny"]


def test_a_second_benchmark_is_refused_while_one_runs(manager: FallbackManager) -> None:
    handlers = ManagementHandlers(manager)
    job_id, _, _ = handlers.start_benchmark_all("", None)
    with pytest.warns(UserWarning, match="already running"):
        same, _, _ = handlers.start_benchmark("tiny", "", job_id)
    assert same == job_id
    handlers.cancel_benchmark(job_id)
    poll_until_done(handlers, job_id)


def test_benchmark_all_can_be_cancelled(manager: FallbackManager) -> None:
    handlers = ManagementHandlers(manager)
    job_id, _, _ = handlers.start_benchmark_all("", None)
    assert "Cancel asked" in handlers.cancel_benchmark(job_id)
    progress, *_ = poll_until_done(handlers, job_id)
    assert "cancelled" in progress


def test_benchmark_of_an_unknown_model_warns(manager: FallbackManager) -> None:
    with pytest.warns(UserWarning, match="no model named 'nope'"):
        job_id, progress, _ = ManagementHandlers(manager).start_benchmark("nope", "", None)
    assert job_id is None and progress.startswith("❌")


def test_try_the_fallback_shows_who_answered_and_each_attempt(manager: FallbackManager) -> None:
    manager.switch_model("tiny")
    primary = refused_url()
    answer, summary, attempts = ManagementHandlers(manager).send("Hello!", primary, 8)
    assert "after a failover" in summary and "(local)" in summary
    assert list(attempts["target"])[0] == primary
    assert list(attempts["ok"]) == [False, True]
    assert (attempts["latency_s"] >= 0).all()


def test_try_the_fallback_with_nothing_to_answer_warns(manager: FallbackManager) -> None:
    with pytest.warns(UserWarning, match="Type a message"):
        answer, summary, attempts = ManagementHandlers(manager).send("  ", "", 8)
    assert answer == "" and attempts.empty


def test_try_the_fallback_with_a_bad_primary_url_warns(manager: FallbackManager) -> None:
    with pytest.warns(UserWarning, match="must start with http"):
        answer, summary, _ = ManagementHandlers(manager).send("Hi", "localhost:5000", 8)
    assert answer == "" and summary.startswith("❌")


# -- health monitor ---------------------------------------------------------------------------


def test_health_status_shows_score_and_current_vs_optimal(manager: FallbackManager) -> None:
    health, factors, recommendations = HealthHandlers(manager).refresh_health()
    assert "/100" in health and f"**Optimal model:** `{SMOL}`" in health
    assert "**Current model:** `none`" in health
    assert {"vram", "model", "system", "primary"} <= set(factors["factor"])
    assert "No GPU was found" in recommendations


def test_auto_optimize_system_switches_and_reports_health(manager: FallbackManager) -> None:
    done, health, _, _ = HealthHandlers(manager).auto_optimize()
    assert done.startswith("⚡ Switched to the optimal model") and SMOL in done
    assert f"**Current model:** `{SMOL}`" in health


def test_health_check_covers_vram_memory_cpu_and_gpu(manager: FallbackManager) -> None:
    text = HealthHandlers(manager).health_check()
    for part in ("VRAM usage:", "System memory:", "CPU information:", "GPU status:"):
        assert part in text
    assert "logical cores" in text


def test_performance_stats_include_benchmarks_and_recommendations(manager: FallbackManager) -> None:
    manager.switch_model("tiny")
    result = manager.benchmark("tiny")
    stats, recommendations = HealthHandlers(manager).performance_stats()
    assert f"tiny:** {result.gen_tps:.1f} tokens/s" in stats
    assert "(1 runs saved)" in stats
    assert recommendations.startswith("**Recommendations:**")


def test_monitoring_start_poll_stop_gives_samples_and_a_summary(manager: FallbackManager) -> None:
    handlers = HealthHandlers(manager)
    status, memory, load, summary, timer = handlers.start_monitoring(10)
    assert "Monitoring for 10 s" in status and timer == compat.timer_update(active=True)

    def two_samples() -> tuple[Any, ...] | None:
        polled = handlers.poll_monitoring()
        return polled if len(polled[1].get("value", [])) >= 2 else None

    status, memory, load, _, _ = wait_until(two_samples, timeout_s=15, what="two monitoring samples")
    assert "samples so far" in status
    assert set(memory["value"]["metric"]) == {"RAM used (MiB)"} and memory["x_lim"] == [0, 10]
    assert "CPU (%)" in set(load["value"]["metric"])
    status, memory, load, summary, timer = handlers.stop_monitoring()
    assert "stopped early" in status and timer == compat.timer_update(active=False)
    assert {"RAM used (MiB)", "CPU (%)", "tokens/s"} <= set(summary["metric"])
    measured = summary[summary["metric"] != "tokens/s"]
    assert (measured["min"] <= measured["max"]).all()
    # nothing was generated in this process: its tokens/s is blank, not a measured 0
    assert summary[summary["metric"] == "tokens/s"][["min", "max"]].isna().all(axis=None)


def test_stopping_monitoring_that_never_started_warns(manager: FallbackManager) -> None:
    with pytest.warns(UserWarning, match="no monitoring session was started"):
        status, *_, timer = HealthHandlers(manager).stop_monitoring()
    assert status.startswith("❌") and timer == compat.timer_update(active=False)


def test_history_shows_benchmarks_failovers_and_monitoring_sessions(manager: FallbackManager) -> None:
    manager.switch_model("tiny")
    manager.benchmark("tiny")
    manager.chat([{"role": "user", "content": "Hi"}], primary=refused_url(), max_tokens=4)
    manager.start_monitoring(10, interval_s=0.1)
    wait_until(lambda: len(manager.monitoring_report().samples) >= 2, timeout_s=15, what="two samples")
    manager.stop_monitoring()
    drawn = HealthHandlers(manager).history()
    benchmarks, failovers, sessions = (c["value"] if isinstance(c, dict) else c for c in drawn)
    assert list(sessions.columns) == fmt.SESSION_COLUMNS and len(sessions) == 1
    session = sessions.iloc[0]
    assert (session["seconds"], session["ended"]) == (10, "stopped early")
    assert session["RAM used (MiB), mean"] > 0 and pd.isna(session["VRAM used (MiB), mean"])  # no GPU
    assert list(benchmarks["model"]) == ["tiny"] and benchmarks["gen_tps"].iloc[0] > 0
    # each target has a row for each outcome, failed ones first: 4.x colours the first category red
    assert list(failovers["outcome"]) == ["failed", "failed", "ok", "ok"]
    assert failovers.groupby("outcome")["attempts"].sum().to_dict() == {"failed": 1, "ok": 1}
    if compat._COLOR_MAPS:  # exactly the colours each frame has (``compat.colored``)
        assert drawn[0]["color_map"] == {"tiny": charts.MODEL_COLORS[0]}
        assert drawn[1]["color_map"] == {"failed": "#ef4444", "ok": "#22c55e"}


def test_a_charts_colours_are_those_its_frame_has_so_a_new_one_changes_them() -> None:
    frame = pd.DataFrame([["1", "b", 1.0], ["2", "a", 2.0], ["3", "b", 3.0]], columns=["run", "model", "tps"])
    chart = compat.colored(frame, "model", ("#111111", "#222222"))
    if not compat._COLOR_MAPS:  # 4.36-4.3x: the frame alone, its order picks the colours
        assert chart is frame
        return
    assert is_update(chart, color_map={"a": "#111111", "b": "#222222"}) and chart["value"] is frame
    more = compat.colored(pd.concat([frame, pd.DataFrame([["4", "0", 1.0]], columns=frame.columns)]), "model",
                          ("#111111", "#222222"))
    assert more["color_map"] == {"0": "#111111", "a": "#222222", "b": "#111111"}  # round the palette
    assert compat.colored(frame.iloc[0:0], "model", {"a": "#111111"})["color_map"] == {}


# -- serving ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "my-pc.local"])
def test_launch_refuses_a_network_address_without_a_login(manager: FallbackManager, host: str) -> None:
    with pytest.raises(InvalidSettings, match="without a login.*FALLBACK_UI_AUTH=user:password"):
        launch(manager, host=host, port=9, block=False)


@pytest.mark.parametrize("login", ["no-colon", ":password", "user:"])
def test_launch_refuses_a_malformed_login(manager: FallbackManager, login: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALLBACK_UI_AUTH", login)
    with pytest.raises(InvalidSettings, match="'user:password'"):
        launch(manager, host="0.0.0.0", port=9, block=False)


def test_launch_on_a_busy_port_says_so(manager: FallbackManager) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(PortUnavailable, match="choose another port"):
            launch(manager, port=taken.getsockname()[1], block=False)


def test_launch_on_port_0_serves_on_a_free_port_and_names_it(manager: FallbackManager) -> None:
    blocks = build_app(manager)
    url = launch(manager, port=0, block=False, blocks=blocks)
    try:
        assert int(url.rstrip("/").rsplit(":", 1)[1]) != 0
        assert httpx.get(f"{url.rstrip('/')}/metrics", timeout=10).status_code == 200
    finally:
        blocks.close()


def test_the_tabs_on_loopback_refuse_a_name_that_is_not_this_machines(manager: FallbackManager) -> None:
    # DNS rebinding: a page at http://evil.example:PORT pointed at 127.0.0.1 would otherwise
    # use the tabs' API (save a main API of its own, and read every chat).
    blocks = build_app(manager)
    url = launch(manager, port=0, block=False, blocks=blocks).rstrip("/")
    try:
        port = url.rsplit(":", 1)[1]
        foreign = [httpx.get(url + path, headers={"Host": f"evil.example:{port}"}, timeout=30)
                   for path in ("/", "/config", "/metrics")]
        here = httpx.get(url + "/", headers={"Host": f"localhost:{port}"}, timeout=30)
    finally:
        blocks.close()
    assert [r.status_code for r in foreign] == [403, 403, 403] and here.status_code == 200
    assert "answers requests for this machine only" in foreign[0].json()["error"]["message"]


def test_the_health_tab_says_when_history_is_not_being_saved(tmp_path: Path, models_dir: Path) -> None:
    (tmp_path / "datafile").write_text("not a folder")
    with FallbackManager(FallbackSettings(
            models_dir=models_dir, scan_system_stores=False, keep_alive=0,
            settings_file=tmp_path / "fallback_settings.json", data_dir=tmp_path / "datafile")) as m:
        _, factors, recommendations = HealthHandlers(m).refresh_health()
    (errors,) = factors[factors["factor"] == "errors"]["detail"]
    assert errors.startswith("unknown: history is not being saved")  # not "0 failed attempts"
    assert "History is not being saved" in recommendations and "is a file, not a folder" in recommendations
