"""pull.py against a local stand-in for the Hugging Face Hub (hub_server.py): a verified
download with progress, resume after a cut or a cancel, a wrong hash, a full disk,
refused file types, offline, and discovery seeing the file at once."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections import namedtuple
from pathlib import Path

import pytest
from builders import write_gguf
from conftest import run_cli
from hub_server import COMMIT, HubServer, clear_hub_environment

from zwaif_fallback import (
    DownloadCancelled,
    FallbackManager,
    FallbackSettings,
    HubFileNotFound,
    HubOffline,
    HubUnavailable,
    InvalidModelFile,
    InvalidSettings,
    NotEnoughSpace,
)
from zwaif_fallback.hub import Hub
from zwaif_fallback.pull import PullProgress, pull

REPO = "acme/Tiny-Instruct-GGUF"
FILE = "tiny-instruct-q4_k_m.gguf"
BAD = "tiny-instruct-bad.gguf"


@pytest.fixture(autouse=True)
def no_hub_environment(monkeypatch):
    clear_hub_environment(monkeypatch)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = write_gguf(tmp_path_factory.mktemp("pull-files") / "tiny.gguf", n_embd=192, n_ff=384)
    assert 2 << 20 < path.stat().st_size < 6 << 20  # more than one 1 MiB chunk, a few MB at most
    return path


@pytest.fixture
def hub_server(model_file) -> HubServer:
    server = HubServer()
    server.add(REPO, FILE, model_file, sha256=True)
    server.add(REPO, BAD, model_file, sha256="0" * 64)
    with server:
        yield server


@pytest.fixture
def hub(hub_server) -> Hub:
    with Hub(endpoint=hub_server.url, offline=False, token="") as hub:
        yield hub


def cdn_ranges(server: HubServer) -> list[str | None]:
    return [r.range for r in server.requests if r.path.startswith("/cdn/") and r.method == "GET"]


def partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.incomplete"))


def test_a_download_reports_progress_and_lands_verified(hub, hub_server, model_file, tmp_path):
    seen: list[PullProgress] = []
    info = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path, progress=seen.append)
    target = tmp_path / FILE
    assert info.valid and info.path == str(target) and info.format == "gguf"
    assert target.read_bytes() == model_file.read_bytes()
    assert partials(tmp_path) == []
    assert seen[-1].done and seen[-1].downloaded_bytes == seen[-1].total_bytes == model_file.stat().st_size
    assert seen[0].downloaded_bytes < seen[-1].downloaded_bytes
    assert all(p.rate_bytes_per_s >= 0 for p in seen)
    assert cdn_ranges(hub_server) == [None]  # one whole-file GET, no resume needed


def test_a_cut_connection_resumes_from_the_partial_size(hub, hub_server, model_file, tmp_path):
    hub_server.cut_after, hub_server.cuts = 1_500_000, 1
    info = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path)
    assert Path(info.path).read_bytes() == model_file.read_bytes()
    assert cdn_ranges(hub_server) == [None, "bytes=1500000-"]


def test_a_connection_that_keeps_failing_leaves_a_partial_the_next_pull_resumes(
        hub, hub_server, model_file, tmp_path):
    hub_server.cut_after, hub_server.cuts = 500_000, 4  # the first try and its 3 resumes
    with pytest.raises(HubUnavailable, match="pull again to resume"):
        pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path)
    [partial] = partials(tmp_path)
    assert partial.stat().st_size == 2_000_000 and not (tmp_path / FILE).exists()
    hub_server.reset_counts()
    pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path)
    assert cdn_ranges(hub_server) == ["bytes=2000000-"]
    assert (tmp_path / FILE).read_bytes() == model_file.read_bytes() and partials(tmp_path) == []


def test_a_wrong_hash_is_refused_and_deleted(hub, tmp_path):
    with pytest.raises(InvalidModelFile, match="sha256 .* not the Hub's 0000"):
        pull(f"{REPO}/{BAD}", hub=hub, models_dir=tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []


def test_a_disk_too_small_is_refused_before_anything_is_fetched(hub, hub_server, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 10 << 30, 1000))
    with pytest.raises(NotEnoughSpace, match=r"not enough space: .* has 1000 B|has 1 KiB free"):
        pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models")
    assert cdn_ranges(hub_server) == [] and hub_server.bytes_served == 0
    assert not (tmp_path / "models").exists()


def test_cancel_keeps_a_partial_file_that_the_next_pull_resumes(hub, hub_server, model_file, tmp_path):
    cancel = threading.Event()
    cancel.set()  # stops after the first chunk is written
    with pytest.raises(DownloadCancelled, match="pull again to resume"):
        pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path, cancel=cancel)
    [partial] = partials(tmp_path)
    kept = partial.stat().st_size
    assert 0 < kept < model_file.stat().st_size
    hub_server.reset_counts()
    seen: list[PullProgress] = []
    pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path, progress=seen.append)
    assert cdn_ranges(hub_server) == [f"bytes={kept}-"]
    assert seen[-1].resumed_from_bytes == kept
    assert (tmp_path / FILE).read_bytes() == model_file.read_bytes()


@pytest.mark.parametrize("spec", [f"{REPO}/model.bin", f"{REPO}/weights.pt", f"{REPO}/modeling_x.py",
                                  "https://example.com/model.ckpt"])
def test_pickle_files_and_code_are_refused(hub, hub_server, spec, tmp_path):
    with pytest.raises(InvalidSettings, match="pickle|never code"):
        pull(spec, hub=hub, models_dir=tmp_path)
    assert hub_server.requests == []


def test_offline_fetches_nothing(hub_server, tmp_path):
    with Hub(endpoint=hub_server.url, offline=True) as hub, pytest.raises(HubOffline):
        pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path)
    assert hub_server.requests == []


def test_a_missing_file_is_one_line(hub, tmp_path):
    with pytest.raises(HubFileNotFound, match="^not found: .*404"):
        pull(f"{REPO}/gone.gguf", hub=hub, models_dir=tmp_path)


def test_the_hf_cache_gets_its_own_layout(hub, model_file, tmp_path):
    info = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models", download_to="hf_cache",
                hf_cache=tmp_path / "cache")
    repo_dir = tmp_path / "cache" / "models--acme--Tiny-Instruct-GGUF"
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    link = repo_dir / "snapshots" / COMMIT / FILE
    assert info.path == str(link) and link.is_symlink() and info.source == "hf_cache"
    assert link.resolve() == (repo_dir / "blobs" / digest).resolve()
    assert (repo_dir / "refs" / "main").read_text() == COMMIT


@pytest.mark.parametrize("download_to", ["models_dir", "hf_cache"])
def test_discovery_lists_the_pulled_model_at_once(hub_server, isolated, monkeypatch, download_to):
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    settings = FallbackSettings(models_dir=isolated / "models", download_to=download_to)
    with FallbackManager(settings, background=False) as manager:
        before = {m.path for m in manager.discover_models()}
        info = manager.pull_model(f"{REPO}/{FILE}")
        found = [m for m in manager.discover_models() if m.path == info.path]
    assert info.path not in before and len(found) == 1 and found[0].valid


def test_the_cli_prints_progress_and_the_path(hub_server, isolated):
    result = run_cli("--models-dir", str(isolated / "models"), "pull", f"{REPO}/{FILE}",
                     env={"HF_ENDPOINT": hub_server.url}, cwd=isolated)
    assert result.returncode == 0, result.stderr
    assert str(isolated / "models" / FILE) in result.stdout
    assert "done" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("env, spec, message", [
    ({"HF_HUB_OFFLINE": "1"}, f"{REPO}/{FILE}", "error: offline: HF_HUB_OFFLINE is set"),
    ({}, f"{REPO}/gone.gguf", "error: not found: "),
    ({}, f"{REPO}/model.bin", "error: 'model.bin' is a pickle file"),
])
def test_cli_failures_are_one_line(hub_server, isolated, env, spec, message):
    result = run_cli("pull", spec, env={"HF_ENDPOINT": hub_server.url, **env}, cwd=isolated)
    assert result.returncode in (1, 2)
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stderr
