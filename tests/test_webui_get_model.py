"""The Management tab's "Get a model" section, its handlers called directly against the local
stand-in for the Hugging Face Hub (hub_server.py): the ranked list with its verdicts, a download
watched to its end and switched to, a cancel that keeps the partial file, and each failure as
one line.

The downloads are held mid-way by ``GatedHub`` for as long as a test needs to look at them, so
no test depends on how fast loopback is.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from builders import write_gguf
from conftest import ROOT
from fake_nvml.fake_ggml import cuda_build
from fake_nvml.pynvml import FakeNvml
from hub_server import HubServer, Served, clear_hub_environment
from servers import free_port, wait_until

from webui import compat
from webui.get_model import GetModelHandlers, duration_text, transfer_text
from webui.management import ManagementHandlers
from zwaif_fallback import FallbackManager, FallbackSettings, HardwareProbe
from zwaif_fallback.hub import curated
from zwaif_fallback.pull import PullProgress

sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import shapes  # noqa: E402

SMALL = curated()[0]  # Qwen2.5-0.5B-Instruct Q4_K_M: here a small random model of that name
LARGE = next(m for m in curated() if m.repo.startswith("bartowski/Meta-Llama-3.1-8B"))
SMALL_SPEC = f"{SMALL.repo}/{SMALL.file}"
SMALL_NAME = SMALL.file.removesuffix(".gguf")
TYPED_REPO = "acme/Tiny-Instruct-GGUF"
#: a 4 GiB card beside a CUDA build of llama.cpp: the small model fits it, Llama-3-8B only partly
GPU_4GB = [{"name": "GeForce GTX 1650", "total_mb": 4096, "used_mb": 300}]
DiskUsage = namedtuple("DiskUsage", "total used free")
ON = compat.timer_update(active=True)
OFF = compat.timer_update(active=False)


class GatedHub(HubServer):
    """The stand-in Hub, able to hold every file body after its first chunk (1 MiB) from
    ``hold()`` until ``release()``: a download under way, for as long as a test looks at it."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.open.set()

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()

    def _count(self, served: Served | None, nbytes: int = 0, file: tuple[str, str] | None = None) -> None:
        super()._count(served, nbytes, file)
        if file is not None:  # a chunk of a file body was just sent
            self.open.wait()


@pytest.fixture(autouse=True)
def no_hub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    clear_hub_environment(monkeypatch)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = write_gguf(tmp_path_factory.mktemp("get-model") / "small.gguf", n_embd=192, n_ff=384)
    assert path.stat().st_size > 2 << 20  # more than the one chunk GatedHub lets through
    return path


@pytest.fixture(scope="module")
def large_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes.write(tmp_path_factory.mktemp("get-model-large"), "llama3-8b", "Q4_0")


@pytest.fixture
def hub(small_file: Path, large_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GatedHub]:
    """Two files of the curated list and a repo to type; the rest of the list is not there."""
    server = GatedHub()
    server.add(SMALL.repo, SMALL.file, small_file, sha256=True)
    server.add(LARGE.repo, LARGE.file, large_file)
    server.add(TYPED_REPO, "tiny-instruct-q4_k_m.gguf", small_file, sha256=True)
    server.add(TYPED_REPO, "tiny-instruct-q8_0.gguf", small_file, sha256=True)
    with server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        try:
            yield server
        finally:
            server.release()  # a body still held must not keep its thread


def make_manager(tmp_path: Path, probe: HardwareProbe | None = None) -> FallbackManager:
    return FallbackManager(FallbackSettings(
        models_dir=tmp_path / "models", scan_system_stores=False, keep_alive=0, vram_monitoring=False,
        settings_file=tmp_path / "fallback_settings.json", data_dir=tmp_path / "data"),
        probe=probe, background=False)


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[FallbackManager]:
    """This machine as it is (no GPU): a downloaded model really loads."""
    with make_manager(tmp_path) as m:
        yield m


@pytest.fixture
def handlers(manager: FallbackManager) -> GetModelHandlers:
    return GetModelHandlers(manager, ManagementHandlers(manager).refresh_models)


@pytest.fixture
def gpu_handlers(tmp_path: Path) -> Iterator[GetModelHandlers]:
    """A 4 GiB card and a CUDA build of llama.cpp (simulated), for the verdicts."""
    with make_manager(tmp_path, HardwareProbe(nvml=FakeNvml(GPU_4GB), ggml=cuda_build())) as m:
        yield GetModelHandlers(m, ManagementHandlers(m).refresh_models)


def poll_until(handlers: GetModelHandlers, job_id: str, check: Any, what: str) -> tuple[Any, ...]:
    """Poll as the page does until ``check(outputs)`` holds."""
    seen: list[tuple[Any, ...]] = []

    def ready() -> bool:
        seen[:] = [handlers.poll_download(job_id)]
        return bool(check(seen[0]))

    wait_until(ready, timeout_s=60, what=what, interval_s=0.05)
    return seen[0]


def ended(handlers: GetModelHandlers, job_id: str) -> tuple[Any, ...]:
    return poll_until(handlers, job_id, lambda out: out[-1] == OFF, "the download to end")


def under_way(handlers: GetModelHandlers, job_id: str) -> str:
    """The progress line once bytes have arrived (the hub holds the rest)."""
    return poll_until(handlers, job_id, lambda out: " of " in out[0], "the first bytes")[0]


def partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.incomplete"))


def cdn_gets(hub: HubServer) -> list[str | None]:
    """The Range header of each download request (None: the whole file)."""
    return [r.range for r in hub.requests if r.path.startswith("/cdn/") and r.method == "GET"]


# -- the ranked list --------------------------------------------------------------------------


def test_find_ranks_the_curated_list_with_a_verdict_for_each_file(gpu_handlers: GetModelHandlers,
                                                                  hub: GatedHub) -> None:
    message, table, choice = gpu_handlers.find("")
    rows = table.to_dict("records")
    assert [r["#"] for r in rows] == list(range(1, len(curated()) + 1))
    verdicts = {r["model"]: r["fits this PC"] for r in rows}
    assert verdicts[SMALL.file] == "🟢 fits the GPU"
    partly = re.fullmatch(r"🟡 partly on the GPU \((\d+) of 33 layers\)", verdicts[LARGE.file])
    assert partly and 0 < int(partly[1]) < 33  # Llama-3-8B: 32 blocks and the output layer
    unread = rows[2:]
    assert all(r["fits this PC"] == "⚪ couldn't check" for r in unread)
    assert all(r["why"].startswith("not found: ") for r in unread)
    assert {r["repo"] for r in rows[:2]} == {SMALL.repo, LARGE.repo}
    assert rows[0]["license"] in ("apache-2.0", "llama3.1") and rows[0]["size"] != "–"
    readable = [f"{r['repo']}/{r['model']}" for r in rows[:2]]
    assert choice["choices"] == readable and choice["value"] == readable[0]
    assert f"2 of {len(curated())} models fit this PC" in message
    assert f"({len(curated()) - 2} could not be checked" in message


def test_find_with_a_typed_repo_lists_its_files(gpu_handlers: GetModelHandlers, hub: GatedHub) -> None:
    message, table, choice = gpu_handlers.find(f"  {TYPED_REPO} ")
    assert list(table["model"]) == ["tiny-instruct-q4_k_m.gguf", "tiny-instruct-q8_0.gguf"]
    assert set(table["fits this PC"]) == {"🟢 fits the GPU"}
    assert choice["value"] == f"{TYPED_REPO}/tiny-instruct-q4_k_m.gguf"
    assert "2 of 2 models fit this PC" in message


# -- downloads --------------------------------------------------------------------------------


def test_a_download_shows_its_progress_then_the_model_to_switch_to(
        handlers: GetModelHandlers, hub: GatedHub, manager: FallbackManager, small_file: Path) -> None:
    hub.hold()
    job_id, progress, poll = handlers.start_download(SMALL_SPEC, None)
    assert job_id and progress.startswith("⏳ **Downloading**") and poll == ON
    line = under_way(handlers, job_id)
    transfer = r"[\d.]+ [KM]iB of 3 MiB · [\d.]+ \w+/s · (\d+ s|time) left"
    assert re.search(re.escape(SMALL_SPEC) + ": " + transfer, line), line
    hub.release()
    progress, current, table, switch_to, test_model, poll = ended(handlers, job_id)
    assert progress.startswith(f"✅ Downloaded **{SMALL_NAME}**") and "now in the models table" in progress
    assert SMALL_NAME in list(table["name"])
    assert switch_to["value"] == SMALL_NAME and SMALL_NAME in switch_to["choices"]
    assert SMALL_NAME in test_model["choices"] and "value" not in test_model
    found = [m for m in manager.discover_models() if m.name == SMALL_NAME]
    assert len(found) == 1 and Path(found[0].path).read_bytes() == small_file.read_bytes()
    assert f"`{SMALL_NAME}`" in ManagementHandlers(manager).switch_model(switch_to["value"])
    assert manager.current_model is not None and manager.current_model.name == SMALL_NAME


def test_cancel_keeps_the_partial_file_and_the_next_download_resumes_it(
        handlers: GetModelHandlers, hub: GatedHub, manager: FallbackManager, small_file: Path) -> None:
    models = Path(manager.settings.models_dir)
    hub.hold()
    job_id, _, _ = handlers.start_download(SMALL_SPEC, None)
    under_way(handlers, job_id)
    assert "Cancel asked" in handlers.cancel_download(job_id)
    progress, *_ = ended(handlers, job_id)  # while the hub still holds the rest: a stall stops too
    assert progress.startswith("⏹️ **Download cancelled**") and "resume where it stopped" in progress
    [partial] = partials(models)
    kept = partial.stat().st_size
    assert 0 < kept < small_file.stat().st_size and not (models / SMALL.file).exists()

    hub.release()
    hub.reset_counts()
    job_id, _, _ = handlers.start_download(SMALL_SPEC, job_id)
    progress, *_ = ended(handlers, job_id)
    assert progress.startswith(f"✅ Downloaded **{SMALL_NAME}**")
    assert cdn_gets(hub) == [f"bytes={kept}-"]
    assert (models / SMALL.file).read_bytes() == small_file.read_bytes() and partials(models) == []


def test_a_second_download_shows_the_one_running(handlers: GetModelHandlers, hub: GatedHub) -> None:
    hub.hold()
    job_id, _, _ = handlers.start_download(SMALL_SPEC, None)
    with pytest.warns(UserWarning, match="is still running: wait for it to end or cancel it"):
        same, progress, poll = handlers.start_download(f"{TYPED_REPO}/tiny-instruct-q8_0.gguf", None)
    assert same == job_id and poll == ON and progress.startswith("⏳")
    hub.release()
    assert ended(handlers, job_id)[0].startswith("✅ Downloaded")


def test_nothing_to_cancel_says_so(handlers: GetModelHandlers) -> None:
    assert handlers.cancel_download(None) == "No download running."


def test_the_progress_line_reads_as_a_person_would_say_it() -> None:
    p = PullProgress(file="a/b/m-00002-of-00003.gguf", downloaded_bytes=3 << 30, total_bytes=4 << 30,
                     resumed_from_bytes=1 << 30, rate_bytes_per_s=25 << 20, eta_s=4000.4, part=2, parts=3)
    assert transfer_text(p) == ("file 2 of 3: a/b/m-00002-of-00003.gguf: 3.0 GiB of 4.0 GiB · 25 MiB/s · "
                                "1 h 6 min left · resumed at 1.0 GiB")
    assert [duration_text(s) for s in (0.4, 59, 125, 3600)] == ["0 s", "59 s", "2 min 5 s", "1 h 0 min"]
    assert transfer_text(None) == "asking the Hub for the file…"


# -- failures: one line each ---------------------------------------------------------------------


def one_line(text: str, starts: str) -> None:
    assert text.startswith(starts), text
    assert "\n" not in text and "Traceback" not in text


@pytest.mark.parametrize("env, query, line", [
    ({"HF_HUB_OFFLINE": "1"}, "", "❌ **Finding models failed:** offline: HF_HUB_OFFLINE is set"),
    ({}, f"{TYPED_REPO}/gone.gguf", f"❌ **Finding models failed:** not found: {TYPED_REPO}/gone.gguf"),
    ({"HF_ENDPOINT": "down"}, "", "❌ **Finding models failed:** hub down: nothing answers at 127.0.0.1"),
])
def test_find_failures_are_one_line(handlers: GetModelHandlers, hub: GatedHub,
                                    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], query: str,
                                    line: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}" if value == "down" else value)
    with pytest.warns(UserWarning, match="Finding models failed"):
        message, table, choice = handlers.find(query)
    one_line(message, line)
    assert table == choice == gr.skip()  # left as they were


@pytest.mark.parametrize("env, spec, line", [
    ({"HF_HUB_OFFLINE": "1"}, SMALL_SPEC, "❌ **Download failed:** offline: HF_HUB_OFFLINE is set"),
    ({}, f"{TYPED_REPO}/gone.gguf", f"❌ **Download failed:** not found: {TYPED_REPO}/gone.gguf"),
    ({"HF_ENDPOINT": "down"}, SMALL_SPEC, "❌ **Download failed:** hub down: nothing answers at 127.0.0.1"),
    ({}, f"{TYPED_REPO}/weights.bin", "❌ **Download failed:** 'weights.bin' is a pickle file"),
    ({"disk": "full"}, SMALL_SPEC, f"❌ **Download failed:** not enough space: {SMALL.repo}"),
])
def test_download_failures_are_one_line(handlers: GetModelHandlers, hub: GatedHub, manager: FallbackManager,
                                        monkeypatch: pytest.MonkeyPatch, env: dict[str, str], spec: str,
                                        line: str) -> None:
    for name, value in env.items():
        if name == "disk":
            monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10 << 30, 10 << 30, 1000))
        else:
            monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}" if value == "down" else value)
    job_id, _, _ = handlers.start_download(spec, None)
    progress, current, table, switch_to, test_model, poll = ended(handlers, job_id)
    one_line(progress, line)
    assert SMALL_NAME not in list(table["name"]) and "value" not in switch_to
    assert not any(Path(manager.settings.models_dir).glob("*.gguf"))
