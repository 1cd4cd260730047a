"""The web UI in a real browser: Debian's Chromium driven by playwright, against a real server.

One standalone server for the module (FALLBACK_TIMEOUT is set before its manager is built,
so the timeout is pinned by the environment), one embedded host UI, and every button of the
three tabs clicked at least once. Screenshots go to tests/artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pytest
from builders import write_gguf
from servers import free_port, refused_url

from webui import build_app, build_tabs, launch
from zwaif_fallback import FallbackManager, FallbackSettings

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
SMOL = "SmolLM2-135M-Instruct.Q4_1"
PINNED_TIMEOUT = "45"
IDLE = """() => [...document.querySelectorAll('[data-testid=status-tracker]')]
                .every(e => e.classList.contains('hide') || e.offsetParent === null)"""
WAIT_MS = 60_000  # a deadline, not a pause: expect() returns as soon as the text is there

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium is not installed")
expect.set_options(timeout=WAIT_MS)


@dataclass
class Served:
    url: str
    manager: FallbackManager
    settings_file: Path


def make_manager(root: Path) -> FallbackManager:
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    write_gguf(models / "tiny.gguf")
    return FallbackManager(FallbackSettings(
        models_dir=models, scan_system_stores=False, keep_alive=0,
        settings_file=root / "fallback_settings.json", data_dir=root / "data"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("webui")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FALLBACK_TIMEOUT", PINNED_TIMEOUT)
        env.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        manager = make_manager(root)
        app = build_app(manager)
        url = launch(manager, port=free_port(), block=False, blocks=app)
        try:
            yield Served(url=url, manager=manager, settings_file=root / "fallback_settings.json")
        finally:
            app.close()
            manager.close()


@pytest.fixture(autouse=True)
def pinned_timeout(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``isolated`` clears FALLBACK_* for each test: keep the server's pin in place."""
    monkeypatch.setenv("FALLBACK_TIMEOUT", PINNED_TIMEOUT)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: object, served: Served) -> Iterator[object]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    page.set_default_timeout(WAIT_MS)
    page.goto(served.url)
    expect(page.locator("#diag-status")).to_contain_text("VRAM probe that answered")
    page.wait_for_function(IDLE)
    yield page
    page.close()


def open_tab(page: object, label: str) -> None:
    """Select a tab and wait for the refresh its selection starts (else it could undo our input)."""
    page.get_by_role("tab", name=label).click()  # type: ignore[attr-defined]
    page.wait_for_function(IDLE)  # type: ignore[attr-defined]


def click(page: object, label: str) -> None:
    page.get_by_role("button", name=label).click()  # type: ignore[attr-defined]


def choose(page: object, elem_id: str, value: str) -> None:
    """Type into a dropdown that takes custom values, and leave it so the value is kept."""
    box = page.locator(f"#{elem_id} input")  # type: ignore[attr-defined]
    box.fill(value)
    box.press("Enter")
    box.blur()


def set_number(page: object, elem_id: str, value: str) -> None:
    """Type into a slider's number box; the slider itself moving shows the value was taken."""
    box = page.locator(f"#{elem_id} input[type=number]")  # type: ignore[attr-defined]
    box.fill(value)
    box.press("Tab")
    expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(value)  # type: ignore


def screenshot(page: object, name: str) -> None:
    """A full-page picture once no visible component is waiting for an answer."""
    page.wait_for_function(IDLE)  # type: ignore[attr-defined]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)  # type: ignore[attr-defined]


def test_diagnostics_tab_refreshes_and_tests_compatibility(page: object) -> None:
    models = page.locator("#diag-models")  # type: ignore[attr-defined]
    expect(models).to_contain_text(SMOL)
    expect(models).to_contain_text("tiny")
    click(page, "Refresh Diagnostics")
    expect(page.locator("#diag-status")).to_contain_text("No GPU found")  # type: ignore[attr-defined]
    choose(page, "diag-model", SMOL)
    click(page, "Test Model Compatibility")
    result = page.locator("#diag-result")  # type: ignore[attr-defined]
    expect(result).to_contain_text("Runs on the CPU")
    expect(result).to_contain_text("none of 30 layers on the GPU")
    expect(result).to_contain_text("KV cache")
    screenshot(page, "diagnostics.png")


def test_switch_and_optimize_show_in_every_tab(page: object) -> None:
    open_tab(page, "Advanced Fallback Management")
    current = page.locator("#mgmt-current")  # type: ignore[attr-defined]
    click(page, "🔄 Refresh Model List")
    expect(page.locator("#mgmt-models")).to_contain_text(SMOL)  # type: ignore[attr-defined]
    choose(page, "mgmt-switch-to", "tiny")
    click(page, "🔄 Switch Model")
    expect(current).to_contain_text("Current model: tiny")
    open_tab(page, "Advanced Fallback Diagnostics")
    expect(page.locator("#diag-status")).to_contain_text("Current local model: tiny")  # type: ignore[attr-defined]

    open_tab(page, "Advanced Fallback Management")
    click(page, "⚡ Optimize VRAM")
    expect(page.locator("#mgmt-optimize-result")).to_contain_text(  # type: ignore[attr-defined]
        f"Switched to the optimal model {SMOL}")
    expect(page.locator("#mgmt-ranking")).to_contain_text("tiny")  # type: ignore[attr-defined]
    expect(current).to_contain_text(f"Current model: {SMOL}")
    page.locator("#mgmt-auto-optimize input[type=checkbox]").check()  # type: ignore[attr-defined]
    expect(page.locator("#mgmt-optimize-result")).to_contain_text(  # type: ignore[attr-defined]
        "auto-optimize VRAM is on")
    open_tab(page, "System Health Monitor")
    expect(page.locator("#health-score")).to_contain_text(f"Current model: {SMOL}")  # type: ignore[attr-defined]


def test_a_pinned_setting_is_refused_and_the_file_is_unchanged(page: object, served: Served) -> None:
    open_tab(page, "Advanced Fallback Management")
    timeout = page.locator("#set-timeout")  # type: ignore[attr-defined]
    expect(timeout).to_contain_text("pinned by the environment variable FALLBACK_TIMEOUT")
    expect(timeout.locator("input[type=number]")).to_have_value(PINNED_TIMEOUT)
    message = page.locator("#set-message")  # type: ignore[attr-defined]
    set_number(page, "set-retries", "6")
    click(page, "💾 Save Advanced Settings")
    expect(message).to_contain_text("Saved max_retries = 6")
    before = served.settings_file.read_bytes()

    set_number(page, "set-timeout", "90")
    set_number(page, "set-retries", "8")
    click(page, "💾 Save Advanced Settings")
    expect(message).to_contain_text("timeout is pinned by the environment variable FALLBACK_TIMEOUT")
    expect(message).to_contain_text("Nothing was saved")
    assert served.settings_file.read_bytes() == before
    assert served.manager.settings.max_retries == 6

    click(page, "🔄 Reset to Defaults")
    expect(message).to_contain_text("Reset: the saved settings are forgotten")
    expect(page.locator("#set-retries input[type=number]")).to_have_value("3")  # type: ignore[attr-defined]
    expect(timeout.locator("input[type=number]")).to_have_value(PINNED_TIMEOUT)


def test_performance_testing_fills_the_table_and_cancels(page: object) -> None:
    open_tab(page, "Advanced Fallback Management")
    choose(page, "bench-model", "tiny")
    click(page, "🧪 Run Performance Test")
    progress = page.locator("#bench-progress")  # type: ignore[attr-defined]
    expect(progress).to_contain_text("benchmark tiny")
    expect(progress).to_contain_text("done")
    results = page.locator("#bench-results")  # type: ignore[attr-defined]
    expect(results).to_contain_text("tiny")
    expect(results).to_contain_text("true")
    expect(page.locator("#bench-chart")).to_contain_text("tiny")  # type: ignore[attr-defined]

    click(page, "📊 Benchmark All Models")
    expect(progress).to_contain_text("benchmark all models")
    click(page, "⏹️ Cancel Benchmark")
    expect(progress).to_contain_text("cancelled")


def test_try_the_fallback_shows_each_attempt(page: object) -> None:
    open_tab(page, "Advanced Fallback Management")
    primary = refused_url()
    page.locator("#try-message textarea").fill("Hello! Who are you?")  # type: ignore[attr-defined]
    page.locator("#try-primary textarea").fill(primary)  # type: ignore[attr-defined]
    click(page, "💬 Send through the fallback")
    expect(page.locator("#try-summary")).to_contain_text("after a failover")  # type: ignore[attr-defined]
    attempts = page.locator("#try-attempts")  # type: ignore[attr-defined]
    expect(attempts).to_contain_text(primary)
    expect(attempts).to_contain_text("local")
    expect(page.locator("#try-answer textarea")).not_to_have_value("")  # type: ignore[attr-defined]
    screenshot(page, "management.png")


def test_health_tab_buttons_and_monitoring(page: object) -> None:
    open_tab(page, "System Health Monitor")
    score = page.locator("#health-score")  # type: ignore[attr-defined]
    action = page.locator("#health-action")  # type: ignore[attr-defined]
    click(page, "🔄 Refresh Health Status")
    expect(score).to_contain_text("/100")
    expect(page.locator("#health-factors")).to_contain_text("speed_trend")  # type: ignore[attr-defined]
    click(page, "⚡ Auto-Optimize System")
    expect(action).to_contain_text(SMOL)
    click(page, "🔍 Run Health Check")
    expect(action).to_contain_text("System memory")
    expect(action).to_contain_text("CPU information")
    click(page, "📊 Get Performance Stats")
    expect(action).to_contain_text("Performance stats")
    expect(page.locator("#health-recommendations")).to_contain_text("Recommendations")  # type: ignore

    set_number(page, "monitor-duration", "10")
    click(page, "📈 Start Monitoring")
    status = page.locator("#monitor-status")  # type: ignore[attr-defined]
    expect(status).to_contain_text(re.compile(r"\b([2-9]|\d\d+) samples so far"))
    click(page, "⏹️ Stop Monitoring")
    expect(status).to_contain_text("Monitoring stopped early")
    expect(page.locator("#monitor-summary")).to_contain_text("CPU (%)")  # type: ignore[attr-defined]
    expect(page.locator("#monitor-memory .mark-line path").first).to_be_attached()  # type: ignore
    expect(page.locator("#monitor-load .mark-line path").first).to_be_attached()  # type: ignore
    expect(page.locator("#history-benchmarks .mark-rect path").first).to_be_attached()  # type: ignore
    screenshot(page, "health.png")


def test_metrics_are_served_beside_the_ui(served: Served) -> None:
    with urllib.request.urlopen(served.url + "metrics", timeout=10) as response:
        assert response.status == 200
        assert b"zwaif_ram_total_mb" in response.read()


def test_tabs_embedded_in_a_host_ui(browser: object, tmp_path: Path) -> None:
    with make_manager(tmp_path) as manager:
        with gr.Blocks(analytics_enabled=False) as host:
            with gr.Tab("Chat"):
                gr.Markdown("The host's own chat")
            with gr.Tab("Settings"):
                build_tabs(manager)
        url = launch(manager, port=free_port(), auth=("host", "secret"), block=False, blocks=host)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            page.get_by_label("username").fill("host")
            page.get_by_label("password").fill("secret")
            page.get_by_role("button", name="Login").click()
            page.get_by_role("tab", name="Settings").click()
            click(page, "Refresh Diagnostics")
            expect(page.locator("#diag-models")).to_contain_text(SMOL)
            open_tab(page, "System Health Monitor")
            expect(page.locator("#health-score")).to_contain_text("/100")
            open_tab(page, "Advanced Fallback Diagnostics")
            screenshot(page, "embedded.png")
            page.close()
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + "metrics", timeout=10)
            assert refused.value.code == 401
            login = base64.b64encode(b"host:secret").decode()
            request = urllib.request.Request(url + "metrics", headers={"Authorization": f"Basic {login}"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert b"zwaif_" in response.read()
        finally:
            host.close()
