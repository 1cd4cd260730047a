from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from builders import write_gguf, write_hf_folder

from zwaif_fallback import FallbackSettings, ModelNotFound, locations
from zwaif_fallback.catalog import Catalog


def discover(**settings) -> dict[str, object]:
    models = Catalog().discover(FallbackSettings(**settings))
    return {m.name: m for m in models}


def test_models_dir_is_searched_recursively(tiny_gguf, tiny_hf):
    (Path("models/sub/deeper")).mkdir(parents=True)
    shutil.copy(tiny_gguf, "models/sub/deeper/a.gguf")
    shutil.copytree(tiny_hf, "models/sub/hf-model")
    found = discover()
    assert found["a"].format == "gguf" and found["a"].source == "models_dir"
    assert found["hf-model"].format == "transformers" and found["hf-model"].valid


def test_a_drive_that_gives_every_folder_the_id_0_still_has_every_model_found(tiny_gguf, monkeypatch):
    # Some Windows drives (network shares, virtual ones) report st_ino 0 for every file: each
    # folder after the first was taken for one already walked, and its models were missed
    Path("models/publisher/repo").mkdir(parents=True)
    shutil.copy(tiny_gguf, "models/top.gguf")
    shutil.copy(tiny_gguf, "models/publisher/repo/deep.gguf")
    os.symlink("..", "models/publisher/up")  # a link back up the tree still ends the walk
    real = os.stat

    def no_file_ids(path, *args, **kwargs):
        st = real(path, *args, **kwargs)
        return SimpleNamespace(st_mode=st.st_mode, st_dev=st.st_dev, st_ino=0)

    monkeypatch.setattr(locations, "os", SimpleNamespace(**{**vars(os), "stat": no_file_ids}))
    assert {"top", "deep"} <= set(discover())


def test_gguf_metadata_is_read(tiny_gguf):
    Path("models").mkdir()
    shutil.copy(tiny_gguf, "models/tiny.gguf")
    m = discover()["tiny"]
    assert (m.architecture, m.n_layers, m.context_length, m.quantization) == ("llama", 2, 2048, "F32")
    assert m.size_bytes == tiny_gguf.stat().st_size
    shape = m.shape
    assert (shape.n_heads, shape.n_kv_heads, shape.head_dim_k, shape.n_embd, shape.n_ff) == (
        4, 2, 16, 64, 128)
    assert shape.vocab_size == 264
    assert m.parameters == sum(t.n_elements for t in shape.tensors)
    assert {t.layer for t in shape.tensors} == {None, 0, 1}
    assert "shape" not in m.model_dump()


def test_the_bundled_model_is_found(smollm2):
    m = discover()["SmolLM2-135M-Instruct.Q4_1"]
    assert (m.source, m.valid, m.architecture, m.n_layers) == ("bundled", True, "llama", 30)
    assert (m.quantization, m.context_length, m.parameters) == ("Q4_1", 8192, 134515008)
    assert (m.shape.n_heads, m.shape.n_kv_heads, m.shape.vocab_size) == (9, 3, 49152)


def test_split_gguf_is_one_model(tiny_gguf):
    Path("models").mkdir()
    for i in (1, 2):
        shutil.copy(tiny_gguf, f"models/big-0000{i}-of-00002.gguf")
    m = discover()["big"]
    assert m.valid and m.size_bytes == 2 * tiny_gguf.stat().st_size
    assert len(m.shape.tensors) == 2 * 21
    os.remove("models/big-00002-of-00002.gguf")
    m = discover()["big"]
    assert not m.valid and "missing shard(s) 2 of 2" in m.error


def test_hf_folder_reads_config_and_safetensors_headers(tmp_path):
    folder = write_hf_folder(tmp_path / "sharded", shards=3, dtype="float16")
    m = discover(hf_models=[str(folder)])["sharded"]
    assert (m.format, m.source, m.architecture, m.n_layers, m.context_length) == (
        "transformers", "hf_models", "llama", 2, 1024)
    assert m.quantization == "F16" and m.shape.dtype == "F16"
    expected = 2 * 300 * 64 + 64 + 2 * (64 * 64 * 2 + 2 * 32 * 64 + 3 * 128 * 64 + 2 * 64)
    assert m.parameters == expected
    assert m.size_bytes > expected * 2


def test_a_missing_hf_shard_is_reported(tmp_path):
    folder = write_hf_folder(tmp_path / "sharded", shards=2)
    next(folder.glob("model-00002-*.safetensors")).unlink()
    m = discover(hf_models=[str(folder)])["sharded"]
    assert not m.valid and "missing weight shard" in m.error


def test_every_shard_missing_or_a_cache_link_gone_says_what_to_download(tmp_path):
    # both read "has no weight files", with the shards' names or the link right there
    folder = write_hf_folder(tmp_path / "sharded", shards=2)
    for shard in folder.glob("model-*.safetensors"):
        shard.unlink()
    m = discover(hf_models=[str(folder)])["sharded"]
    assert not m.valid and "missing weight shard(s) model-00001-of-00002.safetensors" in m.error
    cached = write_hf_folder(tmp_path / "cached")
    blob = tmp_path / "blob"
    (cached / "model.safetensors").rename(blob)
    (cached / "model.safetensors").symlink_to(blob)
    blob.unlink()  # the cache was cleaned under the snapshot's link
    m = discover(hf_models=[str(cached)])["cached"]
    assert not m.valid and m.error.startswith("model.safetensors links to a file that is not there")


def test_pickle_weights_are_not_loadable_by_default(tmp_path):
    folder = write_hf_folder(tmp_path / "old", pickle_only=True)
    m = discover(hf_models=[str(folder)])["old"]
    assert not m.valid and "pickle" in m.error and "allow_pickle" in m.error
    assert discover(hf_models=[str(folder)], allow_pickle=True)["old"].valid


def test_hf_cache_models_are_found_by_repo_id(tiny_hf, tiny_gguf):
    repo = Path(os.environ["HF_HUB_CACHE"]) / "models--TestOrg--tiny-chat"
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(tiny_hf, snapshot)
    shutil.copy(tiny_gguf, snapshot / "tiny-chat-q8.gguf")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    found = discover()
    assert found["TestOrg/tiny-chat"].source == "hf_cache"
    assert found["tiny-chat-q8"].source == "hf_cache"
    assert discover(hf_models=["TestOrg/tiny-chat"])["TestOrg/tiny-chat"].source == "hf_models"


def test_an_hf_id_that_is_not_cached_says_how_to_get_it():
    m = discover(hf_models=["nobody/nothing"])["nobody/nothing"]
    assert not m.valid and "huggingface-cli download nobody/nothing" in m.error


@pytest.mark.parametrize("entry", ["/no/such/folder", "./models/gone", "C:\\models\\gone", "~/gone"])
def test_a_path_in_hf_models_that_is_not_there_is_not_told_to_be_downloaded(entry):
    # "download it first (huggingface-cli download /no/such/folder)": nonsense for a path
    m = discover(hf_models=[entry])[entry]
    assert not m.valid and m.error.startswith("no such folder or file: ") and "download" not in m.error


def test_ollama_models_are_named_by_their_manifest(tiny_gguf):
    root = Path(os.environ["OLLAMA_MODELS"])
    digest = "sha256:" + "ab" * 32
    (root / "blobs").mkdir(parents=True)
    shutil.copy(tiny_gguf, root / "blobs" / digest.replace(":", "-"))
    for ns, tag in (("library/tiny", "latest"), ("someone/other", "q8")):
        manifest = root / "manifests" / "registry.ollama.ai" / ns / tag
        manifest.parent.mkdir(parents=True)
        manifest.write_text(json.dumps({"layers": [
            {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00"},
            {"mediaType": "application/vnd.ollama.image.model", "digest": digest}]}))
    found = discover()
    assert found["tiny:latest"].source == "ollama" and found["tiny:latest"].valid
    assert found["someone/other:q8"].architecture == "llama"
    (root / "blobs" / digest.replace(":", "-")).unlink()  # `ollama rm` of the other, say
    gone = discover()["tiny:latest"]
    assert not gone.valid and "run `ollama pull tiny:latest`" in gone.error


def test_lmstudio_models_are_found(tiny_gguf):
    folder = Path.home() / ".lmstudio" / "models" / "publisher" / "repo"
    folder.mkdir(parents=True)
    shutil.copy(tiny_gguf, folder / "lm.gguf")
    assert discover()["lm"].source == "lmstudio"


def test_lmstudio_models_are_found_where_its_settings_moved_them(tiny_gguf, tmp_path):
    # Windows users move LM Studio's models off C: ("Models Directory", downloadsFolder in its
    # settings.json), and may move its data folder too (~/.lmstudio-home-pointer)
    data, chosen = tmp_path / "D" / "lmstudio-data", tmp_path / "E" / "My Models"
    (chosen / "publisher" / "repo").mkdir(parents=True)
    shutil.copy(tiny_gguf, chosen / "publisher" / "repo" / "moved.gguf")
    data.mkdir(parents=True)
    (data / "settings.json").write_text(json.dumps({"downloadsFolder": str(chosen), "theme": "dark"}))
    (Path.home() / ".lmstudio-home-pointer").write_text(f"\ufeff{data}\n", encoding="utf-8")  # Notepad's
    (data / "models" / "p" / "r").mkdir(parents=True)  # the default folder there is still read
    shutil.copy(tiny_gguf, data / "models" / "p" / "r" / "default.gguf")
    found = discover()
    assert found["moved"].source == found["default"].source == "lmstudio"
    assert Path(found["moved"].path) == chosen / "publisher" / "repo" / "moved.gguf"
    (data / "settings.json").write_text("{not json")  # LM Studio mid-write: the defaults, no error
    assert "default" in discover() and "moved" not in discover()


def test_a_home_of_no_such_user_in_lmstudios_files_or_a_name_finds_nothing_and_breaks_nothing(tiny_gguf):
    # Path.expanduser raises RuntimeError for "~name" of no such user: from LM Studio's files it
    # stopped discovery, and as a model's name it was an unexpected failure
    Path("models").mkdir()
    shutil.copy(tiny_gguf, "models/kept.gguf")
    data = Path.home() / ".lmstudio"
    data.mkdir()
    (data / "settings.json").write_text(json.dumps({"downloadsFolder": "~no-such-user-zw/models"}))
    assert discover()["kept"].valid
    (Path.home() / ".lmstudio-home-pointer").write_text("~no-such-user-zw/lmstudio\n")
    assert discover()["kept"].valid
    with pytest.raises(ModelNotFound):
        Catalog().resolve("~no-such-user-zw/model.gguf", FallbackSettings())


def test_system_stores_can_be_left_out(tiny_gguf):
    folder = Path.home() / ".lmstudio" / "models" / "p" / "r"
    folder.mkdir(parents=True)
    shutil.copy(tiny_gguf, folder / "lm.gguf")
    assert "lm" not in discover(scan_system_stores=False)


def test_broken_files_are_listed_with_a_reason_and_never_hang(tiny_gguf):
    models = Path("models")
    models.mkdir()
    data = tiny_gguf.read_bytes()
    (models / "truncated.gguf").write_bytes(data[: len(data) // 2])
    (models / "header-only.gguf").write_bytes(data[:200])
    (models / "zip.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    (models / "empty.gguf").write_bytes(b"")
    os.mkfifo(models / "fifo.gguf")
    os.symlink("loop-b.gguf", models / "loop-a.gguf")
    os.symlink("loop-a.gguf", models / "loop-b.gguf")
    os.symlink("nowhere.gguf", models / "dangling.gguf")
    (models / "folder.gguf").mkdir()
    os.symlink(".", models / "self")  # a directory loop
    import gguf

    writer = gguf.GGUFWriter(str(models / "vocab-only.gguf"), "llama")  # like llama.cpp's ggml-vocab-*
    writer.add_token_list(["a", "b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()

    result: dict[str, dict] = {}
    thread = threading.Thread(target=lambda: result.update(discover()), daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "discovery hung"
    reasons = {name: m.error for name, m in result.items() if not m.valid}
    assert "incomplete" in reasons["truncated"]
    assert "truncated" in reasons["header-only"]
    assert "not a GGUF file" in reasons["zip"]
    assert "empty" in reasons["empty"]
    assert reasons["fifo"] == "not a regular file"
    assert reasons["loop-a"] == reasons["loop-b"] == "symlink loop"
    assert "broken symlink" in reasons["dangling"]
    assert reasons["folder"] == "not a regular file"
    assert "no tensors" in reasons["vocab-only"]


def _unreadable_by_mode(models: Path) -> Path:
    """``models/locked`` with mode 000; skips the test where this process reads it anyway."""
    locked = models / "locked"
    locked.mkdir(parents=True)
    locked.chmod(0)
    if os.access(locked, os.R_OK | os.X_OK):
        locked.chmod(0o700)
        pytest.skip("this process reads a folder whatever its mode (root)")
    return models


def _unreadable_by_name_length(models: Path) -> Path:
    """A folder that even root cannot look into: the path of its config.json is past PATH_MAX.

    Returns the folder that holds it, deep enough for that: the models folder to search.
    """
    deep = models / "/".join(["d" * 250] * 15)
    (deep / ("x" * (4090 - len(str(deep)) - 1))).mkdir(parents=True)
    return deep


@pytest.mark.parametrize("make_unreadable", [_unreadable_by_mode, _unreadable_by_name_length])
def test_an_unreadable_folder_is_skipped_and_every_other_model_is_listed(
        tiny_gguf, caplog, make_unreadable):
    models = make_unreadable(Path("models").resolve())
    shutil.copy(tiny_gguf, models / "mine.gguf")
    try:
        found = discover(models_dir=models)
    finally:
        if (models / "locked").exists():
            (models / "locked").chmod(0o700)  # so that pytest can remove it
    assert found["mine"].valid and found["mine"].source == "models_dir"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "fix its permissions" in warnings[0]


def test_metadata_is_cached_until_the_file_changes(tmp_path):
    Path("models").mkdir()
    path = write_gguf(Path("models/m.gguf"), n_ctx_train=1024)
    catalog, settings = Catalog(), FallbackSettings()
    first = catalog.discover(settings)[0]
    again = catalog.discover(settings, refresh=True)[0]
    assert again.shape is first.shape  # same header object: not read again
    write_gguf(path, n_ctx_train=4096)
    os.utime(path, ns=(1, 1))
    assert catalog.discover(settings, refresh=True)[0].context_length == 4096


def test_names_are_unique(tiny_gguf):
    for sub in ("a", "b"):
        Path("models", sub).mkdir(parents=True)
        shutil.copy(tiny_gguf, Path("models", sub, "same.gguf"))
    folder = Path.home() / ".lmstudio" / "models" / "p" / "r"
    folder.mkdir(parents=True)
    shutil.copy(tiny_gguf, folder / "same.gguf")
    names = sorted(name for name in discover() if name.startswith("same"))
    assert names == ["same", "same@lmstudio", "same@models_dir"]


def test_the_same_file_reached_twice_is_listed_once(tiny_gguf):
    Path("models").mkdir()
    shutil.copy(tiny_gguf, "models/one.gguf")
    folder = Path.home() / ".lmstudio" / "models" / "p"
    folder.mkdir(parents=True)
    os.symlink(Path("models").resolve(), folder / "r")
    assert [m.source for m in discover().values()] == ["models_dir", "bundled"]


class TestResolve:
    @pytest.fixture(autouse=True)
    def _models(self, tiny_gguf):
        Path("models").mkdir()
        shutil.copy(tiny_gguf, "models/Tiny-Chat.gguf")

    def resolve(self, text: str):
        return Catalog().resolve(text, FallbackSettings())

    def test_by_exact_name_and_ignoring_case(self):
        assert self.resolve("Tiny-Chat").name == "Tiny-Chat"
        assert self.resolve("tiny-chat").name == "Tiny-Chat"

    def test_by_the_files_name_as_a_file_manager_shows_it(self):
        assert self.resolve("Tiny-Chat.gguf").name == "Tiny-Chat"
        assert self.resolve("tiny-chat.GGUF").name == "Tiny-Chat"

    def test_an_existing_path_given_as_such(self, tiny_gguf):
        m = self.resolve(str(tiny_gguf))
        assert m.source == "path" and m.valid

    def test_an_unknown_name_suggests_close_ones(self):
        with pytest.raises(ModelNotFound) as err:
            self.resolve("tiny")
        assert "did you mean 'Tiny-Chat'" in str(err.value)
        assert err.value.exit_code == 2

    def test_a_name_is_never_opened_as_a_path(self):
        Path("secret").write_text("not a model")
        with pytest.raises(ModelNotFound):
            self.resolve("secret")  # a plain word is a name, even when such a file exists
        for hostile in ("../../etc/shadow.gguf", "/nonexistent/x.gguf", "", "\x00"):
            with pytest.raises(ModelNotFound):
                self.resolve(hostile)


def test_a_file_name_that_is_not_utf8_is_listed_escaped_with_a_reason_to_rename_it(tiny_gguf):
    # A Linux name from a cp1252 zip: its byte 0xE9 reached SQLite, JSON and llama.cpp as the
    # surrogate \udce9, which none of them can encode, and the chat crashed
    Path("models").mkdir()
    try:
        shutil.copy(tiny_gguf, os.fsdecode(b"models/mod\xe9le.gguf"))
    except (OSError, UnicodeError):
        pytest.skip("this file system takes only UTF-8 names")
    model = discover()["mod\\xe9le"]
    assert not model.valid and "mod\\xe9le.gguf is not UTF-8" in model.error
    assert "rename it" in model.error
    assert Path(model.path).is_file()  # the real path, for whoever renames it
