"""The "Get a model" section in a real browser, against the stand-in Hugging Face Hub
(hub_server.py): find the models that fit, download one (held mid-way to see its progress,
cancelled, resumed), then find it in the models table and switch to it.

The pages, their servers and the browser are test_webui_browser.py's fixtures, taken here by
name: this module gets servers of its own, so the model it downloads never shows up in that
module's tables. .venv runs both pages; .venv-host runs the host's page on Gradio 4.36.1.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import test_webui_browser as pages
from builders import write_gguf
from hub_server import clear_hub_environment
from servers import wait_until
from test_webui_browser import click, expect, expect_column, open_tab, screenshot, table
from test_webui_get_model import GatedHub

from zwaif_fallback.hub import curated

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.skipif(not os.path.exists(pages.CHROMIUM), reason="Chromium is not installed")

# The fixtures of test_webui_browser.py, by name: a server per page kind, the browser, the page.
served = pages.served
server_env = pages.server_env
browser = pages.browser
page = pages.page

ON_THE_HUB = curated()[:3]  # served by the stand-in; the rest of the list is not there
UNDER_WAY = re.compile(r"Downloading .* \d+% · .*: [\d.]+ [KM]iB of 3 MiB · .*/s · .*left")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("get-model-browser") / "small.gguf", n_embd=192, n_ff=384)


@pytest.fixture
def hub(model_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedHub]:
    """The stand-in Hub, where the server's handlers (in this process) read it."""
    clear_hub_environment(monkeypatch)
    server = GatedHub()
    for model in ON_THE_HUB:
        server.add(model.repo, model.file, model_file, sha256=True)
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        try:
            yield server
        finally:
            server.release()


def top_rows(page: Page, elem_id: str, column: str, cells: list[str]) -> list[dict[str, str]]:
    """Wait until the first rows of a gr.Dataframe show ``cells`` in ``column``; return the rows
    drawn (4.x draws only the rows in view of a long table)."""
    seen: list[dict[str, str]] = []

    def shown() -> bool:
        seen[:] = table(page, elem_id)
        return [row.get(column) for row in seen[:len(cells)]] == cells

    try:
        wait_until(shown, timeout_s=pages.WAIT_MS / 1000, what=f"{column} {cells} in #{elem_id}",
                   interval_s=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it shows {seen}") from None
    return seen


def test_find_download_cancel_resume_and_switch_to_the_model(page: Page, served: pages.Served,
                                                             hub: GatedHub) -> None:
    open_tab(page, "Advanced Fallback Management")
    click(page, "🔍 Find models that fit")
    total = len(curated())
    expect(page.locator("#fallback-get-message")).to_contain_text(f"3 of {total} models fit this PC")
    verdicts = ["🔵 CPU only (slower)"] * 3 + ["⚪ couldn't check"]  # the served files, then the rest
    rows = top_rows(page, "fallback-get-found", "fits this PC", verdicts)
    assert {(r["repo"], r["model"]) for r in rows[:3]} == {(m.repo, m.file) for m in ON_THE_HUB}
    file = rows[0]["model"]
    name = file.removesuffix(".gguf")
    expect(page.locator("#fallback-get-choice input")).to_have_value(f"{rows[0]['repo']}/{file}")

    progress = page.locator("#fallback-get-progress")
    models_dir = Path(served.manager.settings.models_dir)
    hub.hold()
    click(page, "📥 Download")
    expect(progress).to_contain_text(UNDER_WAY)
    click(page, "⏹️ Cancel Download")
    expect(progress).to_contain_text("Download cancelled")  # the hub still holds the rest
    expect(progress).to_contain_text("resume where it stopped")
    assert len(list(models_dir.glob(".*.incomplete"))) == 1 and not (models_dir / file).exists()
    hub.release()

    click(page, "📥 Download")
    expect(progress).to_contain_text(f"Downloaded {name}")
    assert (models_dir / file).is_file() and not list(models_dir.glob(".*.incomplete"))
    listed = [m.name for m in served.manager.discover_models() if m.usable]
    assert name in listed
    expect_column(page, "fallback-mgmt-models", "name", listed)
    expect(page.locator("#fallback-mgmt-switch-to input")).to_have_value(name)
    screenshot(page, served, "get-model.png")
    click(page, "🔄 Switch Model")
    expect(page.locator("#fallback-mgmt-current")).to_contain_text(f"Current model: {name}")
