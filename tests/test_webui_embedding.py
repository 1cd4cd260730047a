"""The tabs as a guest in a host's page: they leave the page's settings to the host, and
``python -m webui.host_example`` follows the serving rules (no browser: cheap, every Gradio)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from servers import free_port, refused_url, wait_until

from webui import build_tabs, compat
from webui.host_example import ChatHandlers, answered_by
from zwaif_fallback import FallbackManager, FallbackSettings


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FallbackManager]:
    with FallbackManager(FallbackSettings(
            models_dir=tmp_path / "models", scan_system_stores=False, keep_alive=0,
            settings_file=tmp_path / "fallback_settings.json", data_dir=tmp_path / "data")) as m:
        yield m


def host_page(manager: FallbackManager | None) -> gr.Blocks:
    """A host's page with a Chat tab and a Settings tab, the fallback tabs inside when given a manager."""
    with gr.Blocks(analytics_enabled=False) as host:
        with gr.Tab("Chat"):
            gr.Textbox(label="Message", elem_id="message")
        with gr.Tab("Settings"):
            if manager is not None:
                build_tabs(manager)
    return host


def page_settings(blocks: gr.Blocks) -> dict[str, Any]:
    """What styles the whole page (in 6 these go to launch(), and the attributes are None)."""
    return {"theme": getattr(getattr(blocks, "theme", None), "name", None),
            **{name: getattr(blocks, name, None) for name in ("css", "js", "head", "title")}}


def test_build_tabs_neither_launches_nor_queues(manager: FallbackManager,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[str] = []
    with gr.Blocks(analytics_enabled=False), gr.Tab("Settings"):
        with monkeypatch.context() as patch:  # only while build_tabs runs: Gradio queues on its own
            for name in ("launch", "queue", "block_thread"):
                patch.setattr(gr.Blocks, name, lambda *_, _name=name, **__: called.append(_name))
            build_tabs(manager)
    assert called == []


def test_build_tabs_leaves_the_page_theme_css_and_js_to_the_host(manager: FallbackManager) -> None:
    assert page_settings(host_page(manager)) == page_settings(host_page(None))


def test_every_element_id_of_the_tabs_is_prefixed(manager: FallbackManager) -> None:
    host_ids = {b.elem_id for b in host_page(None).blocks.values()}
    ids = [b.elem_id for b in host_page(manager).blocks.values() if b.elem_id and b.elem_id not in host_ids]
    assert len(ids) > 40
    assert [i for i in ids if not i.startswith("fallback-")] == []
    assert len(set(ids)) == len(ids)


def test_two_copies_of_the_tabs_on_one_page_have_no_id_in_common(manager: FallbackManager) -> None:
    with gr.Blocks(analytics_enabled=False) as page:
        with gr.Tab("Main bot"):
            build_tabs(manager)
        with gr.Tab("Second bot"):
            build_tabs(manager, prefix="second-bot")
    ids = [b.elem_id for b in page.blocks.values() if b.elem_id]
    assert len(ids) == len(set(ids)) and len(ids) > 80
    assert {i.split("-", 1)[0] for i in ids} == {"fallback", "second"}
    tab_ids = [b.id for b in page.blocks.values() if isinstance(b, gr.Tab) and isinstance(b.id, str)]
    assert len(tab_ids) == len(set(tab_ids)) == 6


def test_an_answer_names_the_target_that_gave_it() -> None:
    line = answered_by({"source": "local", "model": "SmolLM2", "fell_back": True, "switches": []})
    assert line == "*answered by `SmolLM2` (local) after a failover*"
    assert "directly" in answered_by({"source": "primary", "model": "main", "fell_back": False})


def test_the_chat_streams_the_answer_then_names_its_target(tmp_path: Path, tiny_gguf: Path) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny.gguf").write_bytes(tiny_gguf.read_bytes())
    with FallbackManager(FallbackSettings(
            models_dir=tmp_path / "models", scan_system_stores=False, keep_alive=0, primary_url=refused_url(),
            settings_file=tmp_path / "fallback_settings.json", data_dir=tmp_path / "data")) as manager:
        updates = list(ChatHandlers(manager).respond("Hello!", []))
    lines = [turns[-1]["by"] for _, turns, _ in updates]
    assert lines[0] == "*waiting for the first words…*"
    assert any(line.startswith("*answering: `") for line in lines[1:-1])
    assert lines[-1].startswith("*answered by `") and lines[-1].endswith("(local) after a failover*")
    _, turns, _ = updates[-1]
    assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["content"]
    # the box is emptied when the message is taken, then left alone: the next one may be typed
    assert updates[0][2] == "" and all(box == gr.skip() for _, _, box in updates[1:])


def test_the_chat_keeps_the_answer_lines_out_of_the_conversation() -> None:
    turns = [{"role": "user", "content": "Hi", "by": ""},
             {"role": "assistant", "content": "Hello!", "by": "*answered by `x` (local) directly*"}]
    shown, kept = ChatHandlers.outputs(turns)
    assert kept == turns
    assert shown == compat.chat_value([{"role": "user", "content": "Hi"},
                                       {"role": "assistant", "content": "Hello!\n\n" + turns[1]["by"]}])
    assert turns[1]["content"] == "Hello!"


def test_chat_value_fits_the_chatbot_of_this_gradio() -> None:
    value = compat.chat_value([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"},
                               {"role": "user", "content": "Bye"}])
    chat = compat.chatbot()
    assert chat.postprocess(value) is not None  # raises when the format is the other one


def host_example(*args: str) -> subprocess.Popen[str]:
    """``python -m webui.host_example`` in the test's own folder and environment (see ``isolated``)."""
    return subprocess.Popen([sys.executable, "-m", "webui.host_example", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})


def test_host_example_refuses_a_network_address_without_a_login() -> None:
    process = host_example("--host", "0.0.0.0", "--port", str(free_port()))
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "Traceback" not in err  # Gradio may warn first; ours is the last line
    assert err.strip().splitlines()[-1].startswith("error: refusing to serve the UI on '0.0.0.0' without")


def test_host_example_serves_its_page_on_loopback() -> None:
    port = free_port()
    process = host_example("--port", str(port))
    try:
        def page() -> bytes | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as response:
                    return response.read()
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                return None

        assert b"Chatbot host" in wait_until(page, timeout_s=120, what="the host example's page",
                                             interval_s=0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_tabs_built_with_no_manager_use_the_one_try_fallbacks_answers_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from zwaif_fallback import default, default_manager

    monkeypatch.setenv("FALLBACK_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("FALLBACK_SETTINGS_FILE", str(tmp_path / "fallback_settings.json"))
    monkeypatch.setenv("FALLBACK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(default, "_manager", None)
    try:
        with gr.Blocks(analytics_enabled=False), gr.Tab("Settings"):
            build_tabs()
            made = default._manager
            build_tabs()  # the same prefix twice: said, not silently repeated ids
        assert made is not None and made is default_manager()
        assert "already has tabs with the prefix 'fallback'" in caplog.text
    finally:
        if default._manager is not None:
            default._manager.close()
