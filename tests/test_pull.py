"""pull.py against a local stand-in for the Hugging Face Hub (hub_server.py): a verified
download with progress, resume after a cut or a cancel, a cancel while the server sends
nothing, a wrong hash, a full disk, refused file types, offline, split GGUFs, a
transformers model's folder, and discovery seeing the model at once."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections import namedtuple
from pathlib import Path

import pytest
from builders import write_gguf, write_hf_folder
from conftest import run_cli
from hub_server import COMMIT, HubServer, clear_hub_environment
from servers import HangServer

from zwaif_fallback import (
    DownloadCancelled,
    FallbackManager,
    FallbackSettings,
    HubAccessDenied,
    HubFileNotFound,
    HubOffline,
    HubUnavailable,
    InvalidModelFile,
    InvalidSettings,
    NotEnoughSpace,
)
from zwaif_fallback import pull as pull_module
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


def test_a_verified_file_a_virus_scanner_holds_for_a_moment_still_lands(hub, model_file, tmp_path,
                                                                        monkeypatch):
    # Windows refuses to rename a file another process has open, and a scanner opens a file
    # that has just been written: the rename into place waits for it (PUBLISH_WAIT_S there)
    monkeypatch.setattr(pull_module, "PUBLISH_WAIT_S", 5.0)
    real, refused = os.replace, []

    def replace(source, target) -> None:
        if Path(target) == tmp_path / FILE and len(refused) < 3:
            refused.append(target)
            raise PermissionError(13, "The process cannot access the file because it is being used "
                                      "by another process")
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    info = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path)
    assert len(refused) == 3 and info.valid
    assert (tmp_path / FILE).read_bytes() == model_file.read_bytes() and partials(tmp_path) == []


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


def pull_in_thread(**kwargs) -> tuple[threading.Thread, list[BaseException]]:
    raised: list[BaseException] = []

    def run() -> None:
        try:
            pull(**kwargs)
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def wait_for(condition, what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.01)


def test_cancel_stops_a_download_while_the_server_sends_nothing(hub_server, model_file, tmp_path):
    hub_server.stall_after = 1_000_000  # then the connection stays open and silent
    cancel = threading.Event()
    # a stall would end only after the hub's timeout, as HubUnavailable; cancel must win
    with Hub(endpoint=hub_server.url, offline=False, token="", timeout_s=15) as slow_hub:
        thread, raised = pull_in_thread(spec=f"{REPO}/{FILE}", hub=slow_hub, models_dir=tmp_path,
                                        cancel=cancel)
        wait_for(lambda: partials(tmp_path) and partials(tmp_path)[0].stat().st_size == 1_000_000,
                 "the bytes sent before the stall")
        cancel.set()
        thread.join()
    assert len(raised) == 1 and isinstance(raised[0], DownloadCancelled), raised
    assert "pull again to resume" in str(raised[0])
    assert partials(tmp_path)[0].stat().st_size == 1_000_000


def test_cancel_keeps_a_partial_file_that_the_next_pull_resumes(hub, hub_server, model_file, tmp_path):
    hub_server.stall_after = 1_000_000
    cancel = threading.Event()
    thread, raised = pull_in_thread(spec=f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path, cancel=cancel)
    wait_for(lambda: partials(tmp_path) and partials(tmp_path)[0].stat().st_size == 1_000_000,
             "the bytes sent before the stall")
    cancel.set()
    thread.join()
    assert isinstance(raised[0], DownloadCancelled)
    [partial] = partials(tmp_path)
    kept = partial.stat().st_size
    hub_server.stall_after = None
    hub_server.reset_counts()
    seen: list[PullProgress] = []
    pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path, progress=seen.append)
    assert cdn_ranges(hub_server) == [f"bytes={kept}-"]
    assert seen[-1].resumed_from_bytes == kept
    assert (tmp_path / FILE).read_bytes() == model_file.read_bytes()


def test_huggingface_hub_asks_the_hub_what_the_file_is(hub, hub_server, tmp_path):
    pull(REPO, hub=hub, models_dir=tmp_path)  # a repo id: its listing, then its file's metadata
    asked = [r for r in hub_server.requests if r.method == "HEAD" or r.path.startswith("/api/")]
    assert {r.method for r in asked} == {"GET", "HEAD"}
    assert all("hf_hub/" in r.user_agent and "zwaif-fallback/" in r.user_agent for r in asked)
    fetched = [r for r in hub_server.requests if r.path.startswith("/cdn/") and r.method == "GET"]
    assert fetched and all(r.authorization is None for r in fetched)  # the CDN never gets the token


def test_a_hub_that_never_answers_the_head_times_out_in_one_line(tmp_path):
    hang = HangServer()
    started = time.monotonic()
    try:
        with Hub(endpoint=f"http://127.0.0.1:{hang.port}", offline=False, token="", timeout_s=0.5) as hub, \
                pytest.raises(HubUnavailable, match=r"^timed out: .* within 0.5 s"):
            pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models")
    finally:
        hang.close()
    assert time.monotonic() - started < 5  # one try at the timeout, not a backoff
    assert not (tmp_path / "models").exists()


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


def test_a_gated_file_is_access_denied_in_one_line_and_fetched_with_the_token(
        hub_server, model_file, tmp_path, monkeypatch):
    hub_server.gated[REPO] = "hf_secret"
    with Hub(endpoint=hub_server.url) as hub, \
            pytest.raises(HubAccessDenied, match=r"^access denied: .*answered 401.*HF_TOKEN"):
        pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with Hub(endpoint=hub_server.url) as hub:
        info = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models")
    assert Path(info.path).read_bytes() == model_file.read_bytes()


@pytest.mark.parametrize("download_to", ["models_dir", "hf_cache"])
def test_the_bytes_and_the_names_are_on_the_disk_before_discovery_trusts_them(
        hub, model_file, tmp_path, monkeypatch, download_to):
    # a power cut after a rename that was not preceded by fsync can leave a file with its
    # name and without its bytes: recorded at the OS calls, in order
    calls: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
                        or fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: calls.append(("rename", str(a))) or replace(a, b))
    info = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models", download_to=download_to,
                hf_cache=tmp_path / "cache")
    (partial,) = {path for call, path in calls if call == "rename"}
    assert calls.index(("fsync", partial)) < calls.index(("rename", partial))
    synced = {path for call, path in calls[calls.index(("rename", partial)):] if call == "fsync"}
    assert {str(Path(partial).parent), str(Path(info.path).parent)} <= synced


def test_the_hf_cache_gets_its_own_layout(hub, model_file, tmp_path):
    info = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models", download_to="hf_cache",
                hf_cache=tmp_path / "cache")
    repo_dir = tmp_path / "cache" / "models--acme--Tiny-Instruct-GGUF"
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    link = repo_dir / "snapshots" / COMMIT / FILE
    assert info.path == str(link) and link.is_symlink() and info.source == "hf_cache"
    assert link.resolve() == (repo_dir / "blobs" / digest).resolve()
    assert (repo_dir / "refs" / "main").read_text() == COMMIT
    # huggingface_hub itself finds it there, without asking the Hub
    from huggingface_hub import hf_hub_download, scan_cache_dir, try_to_load_from_cache

    assert try_to_load_from_cache(REPO, FILE, cache_dir=tmp_path / "cache") == str(link)
    assert hf_hub_download(REPO, FILE, cache_dir=tmp_path / "cache", local_files_only=True) == str(link)
    (cached,) = scan_cache_dir(tmp_path / "cache").repos
    assert (cached.repo_id, cached.size_on_disk) == (REPO, model_file.stat().st_size)


@pytest.mark.parametrize("refused", [{"symlink"}, {"symlink", "hard link"}])
def test_the_hf_cache_works_where_links_are_refused(hub, model_file, tmp_path, monkeypatch, refused):
    # Windows without Developer Mode refuses symlinks (WinError 1314); FAT32 and exFAT have no
    # links at all. The refusal is simulated at the OS call.
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(1314, "A required privilege is not held by the client")

    monkeypatch.setattr(Path, "symlink_to", refuse)
    if "hard link" in refused:
        monkeypatch.setattr(os, "link", refuse)
    info = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models", download_to="hf_cache",
                hf_cache=tmp_path / "cache")
    entry = tmp_path / "cache" / "models--acme--Tiny-Instruct-GGUF" / "snapshots" / COMMIT / FILE
    assert info.path == str(entry) and info.valid and not entry.is_symlink()
    assert entry.read_bytes() == model_file.read_bytes()
    assert entry.stat().st_nlink == (1 if "hard link" in refused else 2)
    again = pull(f"{REPO}/{FILE}", hub=hub, models_dir=tmp_path / "models", download_to="hf_cache",
                 hf_cache=tmp_path / "cache")  # found in place: nothing fetched, nothing broken
    assert again.path == info.path and entry.read_bytes() == model_file.read_bytes()


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


# -- split GGUF files ------------------------------------------------------------------

SPLIT_REPO = "acme/Big-Instruct-GGUF"
SPLIT = [f"big-instruct-q4_k_m-0000{i}-of-00003.gguf" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def split_files(tmp_path_factory) -> list[Path]:
    """Three tiny models of one shape with different weights: discovery reads them as the
    parts of one model, three times the size of each."""
    folder = tmp_path_factory.mktemp("split-files")
    return [write_gguf(folder / name, n_embd=192, n_ff=384, seed=i) for i, name in enumerate(SPLIT)]


@pytest.fixture
def split_server(hub_server, split_files) -> HubServer:
    for name, path in zip(SPLIT, split_files, strict=True):
        hub_server.add(SPLIT_REPO, name, path, sha256=True)
    return hub_server


def cdn_gets_by_file(server: HubServer) -> list[str]:
    by_etag = {entry.etag: file for (_, file), entry in server.files.items()}
    return [by_etag[r.path.removeprefix("/cdn/")] for r in server.requests
            if r.path.startswith("/cdn/") and r.method == "GET"]


@pytest.mark.parametrize("named", [SPLIT[0], SPLIT[1]])
def test_pulling_any_part_of_a_split_gguf_fetches_every_part(hub, split_server, split_files, tmp_path,
                                                             named):
    seen: list[PullProgress] = []
    info = pull(f"{SPLIT_REPO}/{named}", hub=hub, models_dir=tmp_path / "m", progress=seen.append)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == SPLIT
    assert [(tmp_path / "m" / name).read_bytes() for name in SPLIT] == [p.read_bytes() for p in split_files]
    assert (info.name, info.path, info.valid) == ("big-instruct-q4_k_m", str(tmp_path / "m" / SPLIT[0]), True)
    assert info.size_bytes == sum(p.stat().st_size for p in split_files)
    assert [(p.part, p.parts) for p in seen if p.done] == [(1, 3), (2, 3), (3, 3)]


def test_a_repo_id_with_a_split_gguf_fetches_every_part(split_files, tmp_path):
    server = HubServer()
    for name, path in zip(SPLIT, split_files, strict=True):
        server.add(SPLIT_REPO, name, path, sha256=True)
    with server, Hub(endpoint=server.url, offline=False, token="") as hub:
        pull(SPLIT_REPO, hub=hub, models_dir=tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == SPLIT


def test_no_part_is_visible_until_every_part_is_verified(hub, split_server, split_files, tmp_path):
    split_server.add(SPLIT_REPO, SPLIT[1], split_files[1], sha256="0" * 64)  # part 2 arrives corrupt
    with pytest.raises(InvalidModelFile, match="sha256"):
        pull(f"{SPLIT_REPO}/{SPLIT[0]}", hub=hub, models_dir=tmp_path / "m")
    assert list((tmp_path / "m").glob("*.gguf")) == []  # part 1, verified, waits hidden for the others
    assert len(partials(tmp_path / "m")) == 1  # part 2's bad bytes are gone
    split_server.add(SPLIT_REPO, SPLIT[1], split_files[1], sha256=True)
    split_server.reset_counts()
    info = pull(f"{SPLIT_REPO}/{SPLIT[0]}", hub=hub, models_dir=tmp_path / "m")
    assert cdn_gets_by_file(split_server) == [SPLIT[1], SPLIT[2]]  # part 1 was not fetched again
    assert info.valid and sorted(p.name for p in (tmp_path / "m").iterdir()) == SPLIT


def test_the_disk_check_counts_every_part_before_any_is_fetched(hub, split_server, split_files, tmp_path,
                                                                monkeypatch):
    usage = namedtuple("usage", "total used free")
    two_parts = split_files[0].stat().st_size + split_files[1].stat().st_size
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 << 30, 0, two_parts))
    with pytest.raises(NotEnoughSpace, match="not enough space: acme/Big-Instruct-GGUF/big-instruct"):
        pull(f"{SPLIT_REPO}/{SPLIT[0]}", hub=hub, models_dir=tmp_path / "models")
    assert cdn_ranges(split_server) == []


def test_a_missing_part_is_refused_before_anything_is_fetched(hub, hub_server, split_files, tmp_path):
    hub_server.add(SPLIT_REPO, SPLIT[0], split_files[0], sha256=True)
    with pytest.raises(HubFileNotFound, match=SPLIT[1]):
        pull(f"{SPLIT_REPO}/{SPLIT[0]}", hub=hub, models_dir=tmp_path / "m")
    assert cdn_ranges(hub_server) == []


@pytest.mark.parametrize("download_to", ["models_dir", "hf_cache"])
def test_discovery_lists_a_pulled_split_gguf_as_one_model(split_server, isolated, monkeypatch, download_to):
    monkeypatch.setenv("HF_ENDPOINT", split_server.url)
    settings = FallbackSettings(models_dir=isolated / "models", download_to=download_to)
    with FallbackManager(settings, background=False) as manager:
        info = manager.pull_model(f"{SPLIT_REPO}/{SPLIT[2]}")
        found = [m for m in manager.discover_models() if m.name == "big-instruct-q4_k_m"]
    assert len(found) == 1 and found[0].valid and found[0].path == info.path


# -- a transformers model's folder ------------------------------------------------------

HF_REPO = "acme/Tiny-Chat-HF"
HF_FILES = ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer.model", "tokenizer_config.json"]
NEVER = ["pytorch_model.bin", "modeling_tiny.py", "training_args.bin", "original/consolidated.pth",
         "consolidated.safetensors", "README.md"]


@pytest.fixture(scope="module")
def hf_repo(tmp_path_factory) -> Path:
    folder = write_hf_folder(tmp_path_factory.mktemp("hf-repo") / "Tiny-Chat-HF", shards=2)
    for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_text('{"stand_in": true}', encoding="utf-8")
    (folder / "tokenizer.model").write_bytes(b"\x0a\x05stand-in sentencepiece")
    for name in NEVER:  # what a repo also holds and pull must never fetch
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"not to be fetched")
    return folder


@pytest.fixture
def hf_server(hub_server, hf_repo) -> HubServer:
    for path in sorted(p for p in hf_repo.rglob("*") if p.is_file()):
        name = path.relative_to(hf_repo).as_posix()
        lfs = name.endswith((".safetensors", ".bin", ".pth", ".model"))
        hub_server.add(HF_REPO, name, path, sha256=lfs, lfs=lfs)
    return hub_server


def fetched_files(server: HubServer) -> set[str]:
    by_etag = {entry.etag: file for (_, file), entry in server.files.items()}
    direct = {r.path.split("/resolve/main/")[1] for r in server.requests
              if r.method == "GET" and "/resolve/" in r.path}
    return {by_etag[r.path.removeprefix("/cdn/")] for r in server.requests
            if r.method == "GET" and r.path.startswith("/cdn/")} | {
        f for f in direct if not server.files[(HF_REPO, f)].lfs}


@pytest.mark.parametrize("spec", [HF_REPO, f"{HF_REPO}/model-00001-of-00002.safetensors"])
def test_a_repo_without_gguf_gives_the_files_transformers_needs(hub, hf_server, hf_repo, tmp_path, spec):
    info = pull(spec, hub=hub, models_dir=tmp_path / "m")
    folder = tmp_path / "m" / "Tiny-Chat-HF"
    assert sorted(p.name for p in folder.iterdir()) == HF_FILES
    assert all((folder / n).read_bytes() == (hf_repo / n).read_bytes() for n in HF_FILES)
    assert fetched_files(hf_server) == set(HF_FILES)
    assert (info.format, info.valid, info.path, info.architecture) == (
        "transformers", True, str(folder), "llama")


def test_pickle_weights_and_code_in_a_repo_are_never_fetched(hub, hf_server, tmp_path):
    pull(HF_REPO, hub=hub, models_dir=tmp_path / "m")
    assert not fetched_files(hf_server) & set(NEVER)
    assert not [p for p in (tmp_path / "m" / "Tiny-Chat-HF").iterdir() if p.suffix in (".bin", ".py", ".pth")]


def test_a_repo_with_only_pickle_weights_is_refused(hub, hub_server, tmp_path):
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"pickle")
    hub_server.add("acme/Old-HF", "pytorch_model.bin", path, sha256=True)
    hub_server.add("acme/Old-HF", "config.json", path, lfs=False)
    with pytest.raises(HubFileNotFound, match="only pickle weights .*pytorch_model.bin"):
        pull("acme/Old-HF", hub=hub, models_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()


def test_a_folder_is_not_a_model_until_its_config_arrives(hub, hf_server, hf_repo, tmp_path):
    hf_server.add(HF_REPO, "tokenizer.json", hf_repo / "tokenizer.json", sha256="0" * 64)  # corrupt
    with pytest.raises(InvalidModelFile):
        pull(HF_REPO, hub=hub, models_dir=tmp_path / "m")
    folder = tmp_path / "m" / "Tiny-Chat-HF"
    assert not (folder / "config.json").exists() and list(folder.glob("*.safetensors")) == []


@pytest.mark.parametrize("download_to", ["models_dir", "hf_cache"])
def test_discovery_lists_a_pulled_folder_as_an_hf_model(hf_server, isolated, monkeypatch, download_to):
    monkeypatch.setenv("HF_ENDPOINT", hf_server.url)
    settings = FallbackSettings(models_dir=isolated / "models", download_to=download_to)
    with FallbackManager(settings, background=False) as manager:
        info = manager.pull_model(HF_REPO)
        found = [m for m in manager.discover_models() if m.path == info.path]
    assert len(found) == 1 and found[0].valid and found[0].format == "transformers"


@pytest.mark.parametrize("name", ["..\\evil.gguf", "sub/../../evil.gguf", "C:evil.gguf"])
def test_a_name_that_could_write_outside_the_models_folder_is_refused(hub, tmp_path, name):
    with pytest.raises(InvalidSettings, match="could write outside the models folder"):
        pull(f"{REPO}/{name}", hub=hub, models_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists() and not (tmp_path / "evil.gguf").exists()


def test_the_progress_line_says_which_file_of_a_pull_of_several():
    from zwaif_fallback.cli_text import format_pull_progress

    def line(part: int, parts: int) -> str:
        return format_pull_progress(PullProgress(
            file="m-00002-of-00003.gguf", downloaded_bytes=2**20, total_bytes=2**21,
            resumed_from_bytes=0, rate_bytes_per_s=2**20, eta_s=1.0, part=part, parts=parts))

    assert line(2, 3) == "file 2 of 3, m-00002-of-00003.gguf: 1 MiB of 2 MiB (50%), 1 MiB/s, 1 s left"
    assert line(1, 1) == "m-00002-of-00003.gguf: 1 MiB of 2 MiB (50%), 1 MiB/s, 1 s left"
