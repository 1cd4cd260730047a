"""The web UI in a real browser: Debian's Chromium driven by playwright, against a real server.

Every test runs on two pages: the standalone page (``build_app``, marked ``standalone``) and
the tabs inside the example host (``webui.host_example``: its Chat tab, the tabs under its
Settings tab, behind a login). .venv runs both on the latest Gradio; .venv-host runs the host
page on Z-WAIF's Gradio 4.36.1 (``-m "not standalone"``). Every button of the three tabs is
clicked at least once. FALLBACK_TIMEOUT is set before each server's manager is built, so the
timeout is pinned by the environment. Screenshots go to tests/artifacts/screenshots/.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import pytest
from builders import write_gguf
from servers import ScriptedServer, free_port, refused_url, wait_until

from webui import build_app, launch
from webui.host_example import build_host
from zwaif_fallback import FallbackManager, FallbackSettings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parent / "artifacts" / "screenshots"
SMOL = "SmolLM2-135M-Instruct.Q4_1"
PINNED_TIMEOUT = "45"
LOGIN = ("host", "secret")
IDLE = """() => [...document.querySelectorAll('[data-testid=status-tracker]')]
                .every(e => e.classList.contains('hide') || e.offsetParent === null)"""
WAIT_MS = 60_000  # a deadline, not a pause: expect() returns as soon as the text is there
# Data drawn: more strongly coloured pixels on the chart than its legend's symbols have (three
# circles come to about 100): axes, grid and labels are grey, marks are not. Counted on a
# screenshot, the same for the canvas of 4.3x's altair plots and the SVG of native ones, where
# a line's path can be there and yet draw nothing (6.31, before its charts mounted typed). A
# line of 5 samples over a 10 s range has a few hundred.
DRAWN_PIXELS = {"rect": 1000, "line": 200}
# The header and rows of a gr.Dataframe as text: a grid of divs with ARIA roles from 5.0 (rows
# drawn as they scroll into view), before it a table (the last one: the first only sizes columns).
TABLE = """(id) => {
    const root = document.getElementById(id);
    if (!root) return [[], []];  // not drawn yet
    const text = cell => cell.innerText.replace('⋮', '').trim();  // 5.x and 6 add a menu button
    const grid = [...root.querySelectorAll('[role=row]')].filter(row => row.querySelector('[role=gridcell]'));
    if (grid.length) return [[...root.querySelectorAll('[role=columnheader]')].map(text),
                             grid.map(row => [...row.querySelectorAll('[role=gridcell]')].map(text))];
    const table = [...root.querySelectorAll('table')].at(-1);
    return [[...table.querySelectorAll('thead th')].map(text),
            [...table.querySelectorAll('tbody tr')].map(row => [...row.querySelectorAll('td')].map(text))];
}"""

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium is not installed")
expect.set_options(timeout=WAIT_MS)


@dataclass
class Served:
    kind: str  # "standalone" or "host"
    url: str
    manager: FallbackManager
    settings_file: Path
    env: dict[str, str]  # FALLBACK_* variables the server's manager was built with


def make_manager(root: Path) -> FallbackManager:
    models = root / "models"
    models.mkdir(parents=True, exist_ok=True)
    write_gguf(models / "tiny.gguf")
    return FallbackManager(FallbackSettings(
        models_dir=models, scan_system_stores=False, keep_alive=0,
        settings_file=root / "fallback_settings.json", data_dir=root / "data"))


@pytest.fixture(scope="module", params=[pytest.param("standalone", marks=pytest.mark.standalone), "host"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server per page kind: the host's behind a login, its primary a port where nothing listens."""
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    env = {"FALLBACK_TIMEOUT": PINNED_TIMEOUT, "FALLBACK_PRIMARY_URL": refused_url()}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**env, "GRADIO_ANALYTICS_ENABLED": "False"}.items():
            patch.setenv(name, value)
        manager = make_manager(root)
        blocks = build_host(manager) if kind == "host" else build_app(manager)
        url = launch(manager, port=free_port(), auth=LOGIN if kind == "host" else None, block=False,
                     blocks=blocks)
        try:
            yield Served(kind=kind, url=url, manager=manager, settings_file=root / "fallback_settings.json",
                         env=env)
        finally:
            blocks.close()
            manager.close()


@pytest.fixture(autouse=True)
def server_env(isolated: Path, served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """``isolated`` clears FALLBACK_* for each test: keep the server's variables in place."""
    for name, value in served.env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    """The page logged in, with the tabs in view (the host's are under its Settings tab)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    page.goto(served.url)
    if served.kind == "host":
        page.get_by_label("username").fill(LOGIN[0])
        page.get_by_label("password").fill(LOGIN[1])
        page.get_by_role("button", name="Login").click()
        page.get_by_role("tab", name="Settings").click()
    expect(page.locator("#fallback-diag-status")).to_contain_text("VRAM probe that answered")
    page.wait_for_function(IDLE)
    yield page
    page.close()


def open_tab(page: Page, label: str) -> None:
    """Select a tab and wait for the refresh its selection starts (else it could undo our input)."""
    page.get_by_role("tab", name=label).click()
    page.wait_for_function(IDLE)


def click(page: Page, label: str) -> None:
    page.get_by_role("button", name=label).click()


def choose(page: Page, elem_id: str, value: str) -> None:
    """Type into a dropdown that takes custom values, and leave it so the value is kept."""
    box = page.locator(f"#{elem_id} input")
    box.fill(value)
    box.press("Enter")
    box.blur()


def set_number(page: Page, elem_id: str, value: str) -> None:
    """Type into a slider's number box; the slider itself moving shows the value was taken."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Tab")
    expect(page.locator(f"#{elem_id} input[type=range]")).to_have_value(value)


def pixels(page: Page, elem_id: str) -> Iterator[tuple[int, tuple[int, int, int]]]:
    """The x and RGB colour of each pixel of a screenshot of an element."""
    from PIL import Image

    picture = Image.open(io.BytesIO(page.locator(f"#{elem_id}").screenshot())).convert("RGB")
    return ((i % picture.width, rgb) for i, rgb in enumerate(picture.getdata()))


def coloured_pixels(page: Page, elem_id: str) -> list[int]:
    """The x of each strongly coloured pixel of an element (anti-aliased grey text is faintly
    coloured at most)."""
    return [x for x, (r, g, b) in pixels(page, elem_id) if max(r, g, b) - min(r, g, b) > 60]


def expect_plotted(page: Page, elem_id: str, mark: str, text: str | None = None) -> None:
    """The chart shows data (its ``mark``: "line" or "rect"), and ``text`` where its labels are
    text (SVG, not canvas pixels)."""
    seen: list[int] = [0]

    def drawn() -> bool:
        seen[0] = len(coloured_pixels(page, elem_id))
        return seen[0] > DRAWN_PIXELS[mark]

    try:
        wait_until(drawn, timeout_s=WAIT_MS / 1000, what=f"a {mark} drawn in #{elem_id}", interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it has {seen[0]} coloured pixels") from None
    chart = page.locator(f"#{elem_id}")
    if text is not None and chart.locator(f".mark-{mark} path").count():
        expect(chart).to_contain_text(text)


def colour_columns(page: Page, elem_id: str) -> tuple[float, float]:
    """The mean x of the chart's red pixels and of its green ones, from a screenshot (a canvas on
    4.x, SVG later): strongly coloured only, so grey axes and anti-aliased text do not count."""
    red: list[int] = []
    green: list[int] = []
    for x, (r, g, b) in pixels(page, elem_id):
        if r > 180 and g < 110 and b < 110:
            red.append(x)
        elif g > 150 and r < 110 and b < 150:
            green.append(x)
    assert len(red) > 500 and len(green) > 500, f"{len(red)} red and {len(green)} green pixels"
    return sum(red) / len(red), sum(green) / len(green)


def outcome_centres(attempts: list[dict[str, Any]]) -> tuple[float, float]:
    """Where the failed attempts and the answers sit on average, in bars from the left of a chart
    with a bar per target in name order: a stacked segment's area grows with its count, so its
    colour's mean x follows the same average."""
    targets = sorted({str(a["target"]) for a in attempts})

    def centre(ok: bool) -> float:
        bars = [targets.index(str(a["target"])) for a in attempts if bool(a["ok"]) is ok]
        assert bars, f"no {'answered' if ok else 'failed'} attempt in the history: {attempts}"
        return sum(bars) / len(bars)

    return centre(False), centre(True)


def table(page: Page, elem_id: str) -> list[dict[str, str]]:
    """The rows a gr.Dataframe shows, as column -> cell text (4.44 draws an empty frame as a blank row)."""
    header, rows = page.evaluate(TABLE, elem_id)
    return [dict(zip(header, row, strict=True)) for row in rows if any(row)]


def expect_column(page: Page, elem_id: str, column: str, cells: list[str]) -> None:
    """Wait until ``column`` of a gr.Dataframe shows ``cells``, top to bottom, compared
    case-blind (4.x writes True where later versions write true)."""
    seen: list[dict[str, str]] = []

    def shown() -> bool:
        seen[:] = table(page, elem_id)
        return [row.get(column, "").lower() for row in seen] == [c.lower() for c in cells]

    try:
        wait_until(shown, timeout_s=WAIT_MS / 1000, what=f"{column} {cells} in #{elem_id}", interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it shows {seen}") from None


def screenshot(page: Page, served: Served, name: str) -> None:
    """A full-page picture once no visible component is waiting for an answer."""
    page.wait_for_function(IDLE)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{served.kind}-gradio{gr.__version__}-{name}"), full_page=True)


def test_diagnostics_tab_refreshes_and_tests_compatibility(page: Page, served: Served) -> None:
    expect_column(page, "fallback-diag-models", "name", ["tiny", SMOL])
    click(page, "Refresh Diagnostics")
    expect(page.locator("#fallback-diag-status")).to_contain_text("No GPU found")
    expect(page.locator("#fallback-diag-gpus")).to_be_hidden()
    choose(page, "fallback-diag-model", SMOL)
    click(page, "Test Model Compatibility")
    result = page.locator("#fallback-diag-result")
    expect(result).to_contain_text("Runs on the CPU")
    expect(result).to_contain_text("none of 30 layers on the GPU")
    expect_plotted(page, "fallback-diag-memory", "rect", "KV cache")
    screenshot(page, served, "diagnostics.png")


def test_a_table_filled_while_its_tab_was_hidden_has_its_rows_when_the_tab_opens(page: Page) -> None:
    """The page load fills the tables of every tab, most of them hidden. 4.x drew no row in such
    a table, and opening the tab sent the same rows again, which changed nothing: the ranking
    stayed blank (``compat.on_show``). Its rows are checked as drawn, with no empty row left."""
    open_tab(page, "Advanced Fallback Management")
    seen: list[list[str]] = []

    def drawn() -> bool:
        header, rows = page.evaluate(TABLE, "fallback-mgmt-ranking")
        seen[:] = rows
        models = [dict(zip(header, row, strict=True)).get("model") for row in rows]
        return sorted(models) == sorted([SMOL, "tiny"])

    try:
        wait_until(drawn, timeout_s=WAIT_MS / 1000, what="the ranking's two rows", interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it shows {seen}") from None
    # an empty table is measured too: unmeasured, 4.x left Attempts 500 px of blank
    attempts = page.locator("#fallback-try-attempts")
    wait_until(lambda: (attempts.bounding_box() or {"height": 0})["height"] < 250, timeout_s=WAIT_MS / 1000,
               what="the empty Attempts table to take a header's height", interval_s=0.2)


def test_switch_and_optimize_show_in_every_tab(page: Page) -> None:
    open_tab(page, "Advanced Fallback Management")
    current = page.locator("#fallback-mgmt-current")
    click(page, "🔄 Refresh Model List")
    expect_column(page, "fallback-mgmt-models", "name", ["tiny", SMOL])
    choose(page, "fallback-mgmt-switch-to", "tiny")
    click(page, "🔄 Switch Model")
    expect(current).to_contain_text("Current model: tiny")
    open_tab(page, "Advanced Fallback Diagnostics")
    expect(page.locator("#fallback-diag-status")).to_contain_text("Current local model: tiny")

    open_tab(page, "Advanced Fallback Management")
    click(page, "⚡ Optimize VRAM")
    expect(page.locator("#fallback-mgmt-optimize-result")).to_contain_text(
        f"Switched to the optimal model {SMOL}")
    expect_column(page, "fallback-mgmt-ranking", "model", [SMOL, "tiny"])
    expect(current).to_contain_text(f"Current model: {SMOL}")
    page.locator("#fallback-mgmt-auto-optimize input[type=checkbox]").check()
    expect(page.locator("#fallback-mgmt-optimize-result")).to_contain_text("auto-optimize VRAM is on")
    open_tab(page, "System Health Monitor")
    expect(page.locator("#fallback-health-score")).to_contain_text(f"Current model: {SMOL}")


def test_a_pinned_setting_is_refused_and_the_file_is_unchanged(page: Page, served: Served) -> None:
    open_tab(page, "Advanced Fallback Management")
    timeout = page.locator("#fallback-set-timeout")
    expect(timeout).to_contain_text("pinned by the environment variable FALLBACK_TIMEOUT")
    expect(timeout.locator("input[type=number]")).to_have_value(PINNED_TIMEOUT)
    message = page.locator("#fallback-set-message")
    set_number(page, "fallback-set-retries", "6")
    click(page, "💾 Save Advanced Settings")
    expect(message).to_contain_text("Saved max_retries = 6")
    before = served.settings_file.read_bytes()

    set_number(page, "fallback-set-timeout", "90")
    set_number(page, "fallback-set-retries", "8")
    click(page, "💾 Save Advanced Settings")
    expect(message).to_contain_text("timeout is pinned by the environment variable FALLBACK_TIMEOUT")
    expect(message).to_contain_text("Nothing was saved")
    assert served.settings_file.read_bytes() == before
    assert served.manager.settings.max_retries == 6

    click(page, "🔄 Reset to Defaults")
    expect(message).to_contain_text("Reset: these settings and auto-optimize are back to their defaults")
    expect(page.locator("#fallback-set-retries input[type=number]")).to_have_value("3")
    expect(timeout.locator("input[type=number]")).to_have_value(PINNED_TIMEOUT)


def test_the_main_api_is_set_in_the_tab_and_a_pinned_url_says_so(page: Page, served: Served) -> None:
    open_tab(page, "Advanced Fallback Management")
    url = page.locator("#fallback-api-url")
    expect(url).to_contain_text("pinned by the environment variable FALLBACK_PRIMARY_URL")
    expect(url.locator("textarea")).to_have_value(served.env["FALLBACK_PRIMARY_URL"])
    expect(page.locator("#fallback-api-status")).to_contain_text(
        f"go to {served.env['FALLBACK_PRIMARY_URL']} (OpenAI-compatible) first, then the local models")
    remote = refused_url()
    try:
        page.locator("#fallback-api-model textarea").fill("qwen2.5")
        page.locator("#fallback-api-remotes textarea").fill(remote)
        click(page, "💾 Save Main API")
        message = page.locator("#fallback-api-message")
        expect(message).to_contain_text(f"Saved primary_model = qwen2.5, remote_urls = {remote}")
        settings = served.manager.settings
        assert (settings.primary_model, settings.remote_urls) == ("qwen2.5", [remote])
        status = page.locator("#fallback-api-status")
        expect(status).to_contain_text("then 1 more server, then the local models")
        # the page's own address is serve (or the tabs): a chat sent there would come back
        page.locator("#fallback-api-remotes textarea").fill(served.url + "/v1")
        click(page, "💾 Save Main API")
        expect(message).to_contain_text("is this page's own address")
        assert served.manager.settings.remote_urls == [remote]
    finally:  # for the tests after this one
        served.manager.reset_settings(fields=["primary_model", "remote_urls"])


def test_the_main_api_section_says_whether_each_server_answers(page: Page, served: Served) -> None:
    open_tab(page, "Advanced Fallback Management")
    status, primary = page.locator("#fallback-api-status"), served.env["FALLBACK_PRIMARY_URL"]
    expect(status).to_contain_text(f"The main API 🔴 does not answer: connection refused at {primary}")
    expect(status).to_contain_text("Oobabooga listens on 5000 when started with --api")
    remote = ScriptedServer(["Hi."], listed=["qwen2.5"])
    try:
        page.locator("#fallback-api-remotes textarea").fill(remote.url)
        click(page, "💾 Save Main API")
        expect(status).to_contain_text(f"{remote.url} ✅ answers (models: qwen2.5).")
        remote.close()
        click(page, "🔄 Check again")
        expect(status).to_contain_text(f"{remote.url} 🔴 does not answer: connection refused")
    finally:  # for the tests after this one
        remote.close()
        served.manager.reset_settings(fields=["remote_urls"])


def test_performance_testing_fills_the_table_and_cancels(page: Page) -> None:
    open_tab(page, "Advanced Fallback Management")
    choose(page, "fallback-bench-model", "tiny")
    click(page, "🧪 Run Performance Test")
    progress = page.locator("#fallback-bench-progress")
    expect(progress).to_contain_text("benchmark tiny")
    expect(progress).to_contain_text("done")
    expect_column(page, "fallback-bench-results", "model", ["tiny"])
    expect_column(page, "fallback-bench-results", "ok", ["true"])
    expect_plotted(page, "fallback-bench-chart", "rect", "tiny")

    click(page, "📊 Benchmark All Models")
    expect(progress).to_contain_text("benchmark all models")
    click(page, "⏹️ Cancel Benchmark")
    expect(progress).to_contain_text("cancelled")


def test_try_the_fallback_shows_each_attempt(page: Page, served: Served) -> None:
    open_tab(page, "Advanced Fallback Management")
    primary = refused_url()
    page.locator("#fallback-try-message textarea").fill("Hello! Who are you?")
    page.locator("#fallback-try-primary textarea").fill(primary)
    click(page, "💬 Send through the fallback")
    expect(page.locator("#fallback-try-summary")).to_contain_text("after a failover")
    expect_column(page, "fallback-try-attempts", "source", ["primary", "local"])
    expect_column(page, "fallback-try-attempts", "ok", ["false", "true"])
    assert table(page, "fallback-try-attempts")[0]["target"] == primary
    expect(page.locator("#fallback-try-answer textarea")).not_to_have_value("")
    screenshot(page, served, "management.png")


def test_health_tab_buttons_and_monitoring(page: Page, served: Served) -> None:
    # the history charts' own data, so the test stands alone: a benchmark, and a chat whose refused
    # main API fails over to the local model (the tab reads both when it opens)
    served.manager.benchmark("tiny")
    assert served.manager.chat([{"role": "user", "content": "Hi"}], max_tokens=4).fell_back
    open_tab(page, "System Health Monitor")
    score = page.locator("#fallback-health-score")
    action = page.locator("#fallback-health-action")
    click(page, "🔄 Refresh Health Status")
    expect(score).to_contain_text("/100")
    expect_column(page, "fallback-health-factors", "factor",
                  ["vram", "gpu", "model", "system", "primary", "errors", "speed_trend"])
    click(page, "⚡ Auto-Optimize System")
    expect(action).to_contain_text(SMOL)
    click(page, "🔍 Run Health Check")
    expect(action).to_contain_text("System memory")
    expect(action).to_contain_text("CPU information")
    click(page, "📊 Get Performance Stats")
    expect(action).to_contain_text("Performance stats")
    expect(action).to_contain_text("Benchmarked models")
    expect(page.locator("#fallback-health-recommendations")).to_contain_text("Recommendations")

    set_number(page, "fallback-monitor-duration", "10")
    click(page, "📈 Start Monitoring")
    status = page.locator("#fallback-monitor-status")
    expect(status).to_contain_text(re.compile(r"\b([5-9]|\d\d+) samples so far"))
    expect_plotted(page, "fallback-monitor-memory", "line")  # live, while monitoring runs
    click(page, "⏹️ Stop Monitoring")
    expect(status).to_contain_text("Monitoring stopped early")
    expect_column(page, "fallback-monitor-summary", "metric", ["RAM used (MiB)", "CPU (%)", "tokens/s"])
    expect_plotted(page, "fallback-monitor-memory", "line")
    expect_plotted(page, "fallback-monitor-load", "line")
    expect_plotted(page, "fallback-history-benchmarks", "rect", "tiny")
    expect_plotted(page, "fallback-history-failovers", "rect")
    expect_column(page, "fallback-history-sessions", "ended", ["stopped early"])  # the one just saved
    # the main API's failed attempts are red and the local models' answers green (4.36.1 coloured
    # them the other way round): the red pixels lie on the side where the failed attempts are
    red, green = colour_columns(page, "fallback-history-failovers")
    failed_at, ok_at = outcome_centres(served.manager.failover_history())
    assert abs(failed_at - ok_at) >= 0.25, f"failed and ok attempts are both centred near bar {ok_at:.2f}"
    assert (red > green) == (failed_at > ok_at), (
        f"the red pixels are centred at x={red:.0f} and the green ones at x={green:.0f}, but the failed "
        f"attempts at bar {failed_at:.2f} and the answers at bar {ok_at:.2f}")
    screenshot(page, served, "health.png")


def test_a_summary_that_came_while_its_tab_was_hidden_has_all_its_rows_when_the_tab_opens(page: Page) -> None:
    """Monitoring that ends while the person is in another tab: 4.x drew the summary with the
    rows it had before, one of three, until redrawn (``compat.redraw_on_show``)."""
    open_tab(page, "System Health Monitor")
    status = page.locator("#fallback-monitor-status")
    set_number(page, "fallback-monitor-duration", "10")
    click(page, "📈 Start Monitoring")
    expect(status).to_contain_text("samples so far")
    open_tab(page, "Advanced Fallback Diagnostics")
    expect(status).to_contain_text("Monitoring finished")  # the last update, in the hidden tab
    open_tab(page, "System Health Monitor")
    expect_column(page, "fallback-monitor-summary", "metric", ["RAM used (MiB)", "CPU (%)", "tokens/s"])


def test_a_session_that_runs_to_its_end_joins_the_history_at_once(page: Page, served: Served) -> None:
    open_tab(page, "System Health Monitor")
    # from the database: the table may not show an earlier test's session yet
    before = len(served.manager.monitor_history())
    set_number(page, "fallback-monitor-duration", "10")
    click(page, "📈 Start Monitoring")
    expect(page.locator("#fallback-monitor-status")).to_contain_text("Monitoring finished", timeout=30_000)
    rows: list[dict[str, str]] = []

    def joined() -> bool:
        rows[:] = table(page, "fallback-history-sessions")
        return len(rows) == before + 1
    wait_until(joined, timeout_s=WAIT_MS / 1000, what="the session in the history", interval_s=0.2)
    assert (rows[0]["ended"], rows[0]["seconds"]) == ("finished", "10"), rows


def test_the_host_chat_streams_and_names_the_target_of_each_answer(page: Page, served: Served) -> None:
    if served.kind != "host":
        pytest.skip("only the host has a chat")
    open_tab(page, "Chat")
    page.locator("#host-message textarea").fill("Hello! Who are you?")
    click(page, "Send")
    chat = page.locator("#host-chat")
    expect(chat).to_contain_text("Hello! Who are you?")
    expect(chat).to_contain_text(re.compile(r"answered by \S+ \(local\) after a failover"))
    # the answer's last piece can come before its event ends, and a click on Send meanwhile is
    # dropped (Gradio's trigger_mode "once"): the message stays in the box, to send again
    page.wait_for_function(IDLE)
    page.locator("#host-message textarea").fill("And what do you like?")
    click(page, "Send")
    expect(chat.get_by_text(re.compile("answered by"))).to_have_count(2)
    screenshot(page, served, "chat.png")


def test_metrics_are_served_beside_the_ui_behind_the_same_login(served: Served) -> None:
    metrics = served.url + "metrics"
    if served.kind == "host":
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(metrics, timeout=10)
        assert refused.value.code == 401
    login = base64.b64encode(":".join(LOGIN).encode()).decode()
    request = urllib.request.Request(metrics, headers={"Authorization": f"Basic {login}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert b"zwaif_ram_total_mb" in response.read()
