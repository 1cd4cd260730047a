from __future__ import annotations

import json
import locale
import os
from pathlib import Path

import pytest

from zwaif_fallback import FallbackSettings, InvalidSettings, StorageError, settings_file
from zwaif_fallback.cli_text import format_settings
from zwaif_fallback.settings_fields import describe_range

# field: (default, low, high) for the bounded ones, from DESIGN.md's table.
RANGES = {
    "timeout": (30, 5, 120),
    "max_retries": (3, 1, 10),
    "n_ctx": (4096, 512, 131072),
    "keep_alive": (600, 0, 86400),
    "monitor_duration": (60, 10, 300),
}
DEFAULTS = {
    "auto_switch": True, "vram_monitoring": True, "auto_optimize_vram": False,
    "models_dir": Path("models"), "hf_models": [], "primary_url": "", "primary_model": "",
    "remote_urls": [], "preferred_model": "", "settings_file": Path("fallback_settings.json"),
    "data_dir": Path(".zwaif_fallback"),
}


def test_defaults_match_the_design_table():
    s = FallbackSettings()
    for name, (default, _, _) in RANGES.items():
        assert getattr(s, name) == default, name
    for name, default in DEFAULTS.items():
        assert getattr(s, name) == default, name
    assert s.primary_api_key.get_secret_value() == ""


@pytest.mark.parametrize("name", sorted(RANGES))
def test_bounds_are_enforced_and_named(name):
    _, low, high = RANGES[name]
    info = FallbackSettings.model_fields[name]
    whole = "a whole number from " if info.annotation is int else ""
    unit = " seconds" if "seconds" in (info.description or "") else ""
    assert describe_range(info) == f"{whole}{low:g} to {high:g}{unit}"
    FallbackSettings(**{name: low})
    FallbackSettings(**{name: high})
    for bad in (low - 1, high + 1):
        with pytest.raises(InvalidSettings) as err:
            FallbackSettings(**{name: bad})
        assert name in str(err.value) and f"{low:g} to {high:g}" in str(err.value)


@pytest.mark.parametrize(("name", "value", "allowed"), [
    ("download_to", "somewhere", "models_dir or hf_cache"),
    ("auto_switch", "maybe", "true or false"),
    ("max_retries", "2.5", "a whole number from 1 to 10"),
    ("timeout", "soon", "5 to 120 seconds"),
    ("keep_alive", "5m", "0 to 86400 seconds"),  # an Ollama user's duration: the unit says what is meant
    ("models_dir", 5, "a folder or file path"),
    ("data_dir", "", "a folder or file path"),  # not "." (the current folder), silently
    ("primary_url", "127.0.0.1:5000", "an http:// or https:// URL, or empty"),
    ("remote_urls", "127.0.0.1:5000", "a list of http:// or https:// URLs, comma-separated or as JSON"),
    ("hf_models", "[org/a", "a list, comma-separated or as JSON"),
])
def test_a_bad_value_is_refused_with_what_is_allowed(name, value, allowed):
    with pytest.raises(InvalidSettings) as err:
        FallbackSettings().saved(**{name: value})
    assert str(err.value).startswith(f"{name}={value!r} is not valid (")
    assert str(err.value).endswith(f"); allowed: {allowed}")
    assert "Value error" not in str(err.value)  # pydantic's wording, not ours


def test_environment_overrides_file_and_arguments_override_environment(monkeypatch):
    Path("fallback_settings.json").write_text(json.dumps({"timeout": 20, "max_retries": 4}))
    assert FallbackSettings().timeout == 20
    monkeypatch.setenv("FALLBACK_TIMEOUT", "40")
    s = FallbackSettings()
    assert (s.timeout, s.max_retries) == (40, 4)
    assert (s.origin("timeout"), s.origin("max_retries"), s.origin("n_ctx")) == (
        "environment", "file", "default")
    s = FallbackSettings(timeout=50)
    assert s.timeout == 50 and s.origin("timeout") == "argument"


def test_api_fallback_model_is_an_alias_of_preferred_model(monkeypatch):
    monkeypatch.setenv("API_FALLBACK_MODEL", "smol")
    assert FallbackSettings().preferred_model == "smol"
    monkeypatch.setenv("FALLBACK_PREFERRED_MODEL", "other")
    assert FallbackSettings().preferred_model == "other"


def test_an_empty_api_fallback_model_as_z_waifs_env_example_ships_it_pins_nothing(isolated, monkeypatch):
    monkeypatch.setenv("API_FALLBACK_MODEL", "")  # env_example.txt: `API_FALLBACK_MODEL=`
    settings = FallbackSettings()
    assert settings.origin("preferred_model") == "default"
    settings.saved(preferred_model="smol")  # the tabs' save is not refused as pinned
    assert FallbackSettings().preferred_model == "smol"


def test_lists_come_comma_separated_from_the_environment(monkeypatch):
    monkeypatch.setenv("FALLBACK_HF_MODELS", "org/a, /models/b ,")
    monkeypatch.setenv("FALLBACK_REMOTE_URLS", "http://127.0.0.1:8080/v1/,https://x.example/v1")
    s = FallbackSettings()
    assert s.hf_models == ["org/a", "/models/b"]
    assert s.remote_urls == ["http://127.0.0.1:8080/v1", "https://x.example/v1"]


def test_a_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("FALLBACK_MAX_RETRIES", "lots")
    with pytest.raises(InvalidSettings, match="FALLBACK_MAX_RETRIES"):
        FallbackSettings()


def test_a_url_without_scheme_is_refused():
    with pytest.raises(InvalidSettings, match="http://"):
        FallbackSettings(primary_url="127.0.0.1:5000")


@pytest.mark.parametrize(("url", "why"), [
    ("http://", "names no server"),  # was saved as "http:", then refused at every start
    ("http://exa mple.com/v1", "spaces"),
    ("http://127.0.0.1:port/v1", "port"),
    ("http://127.0.0.1:5000/v1/chat/completions", "leave out what follows /v1"),
    ("http://::1:5000/v1", r"IPv6 address without brackets.*\[::1\]"),  # was "a port that is not a number"
])
def test_a_url_that_could_never_answer_is_refused_saying_why(url, why):
    with pytest.raises(InvalidSettings, match=why):
        FallbackSettings().saved(primary_url=url)
    assert not Path("fallback_settings.json").exists()


@pytest.mark.parametrize("url", ["http://[::1]:5000/v1", "https://api.example.com/openai/v1",
                                 "http://127.0.0.1:11434", "http://localhost:1234/v1/",
                                 "http://user:pw@proxy.example:8080/v1"])  # a proxy's login
def test_the_urls_people_use_are_taken(url):
    assert FallbackSettings(primary_url=url).primary_url == url.rstrip("/")


def test_two_urls_run_together_are_refused_not_taken_as_one():
    with pytest.raises(InvalidSettings, match="separate them with commas"):
        FallbackSettings(remote_urls="http://a:1/v1;http://b:2/v1")
    assert FallbackSettings(remote_urls="http://a:1/v1, http://b:2/v1").remote_urls == ["http://a:1/v1",
                                                                                     "http://b:2/v1"]


def test_save_writes_only_the_changes_and_applies_them():
    s = FallbackSettings().saved(timeout=12, auto_switch=False)
    assert (s.timeout, s.auto_switch) == (12, False)
    assert json.loads(Path("fallback_settings.json").read_text()) == {
        "auto_switch": False, "timeout": 12.0}
    assert [p.name for p in Path(".").iterdir()] == ["fallback_settings.json"]  # no temp left


def test_an_out_of_range_save_is_refused_and_leaves_the_file_unchanged():
    FallbackSettings().saved(timeout=12)
    before = Path("fallback_settings.json").read_bytes()
    with pytest.raises(InvalidSettings) as err:
        FallbackSettings().saved(timeout=12.5, max_retries=0)
    assert "max_retries" in str(err.value) and "1 to 10" in str(err.value)
    assert Path("fallback_settings.json").read_bytes() == before


@pytest.mark.parametrize("value", [float("nan"), -1, "ten", None, 10**30])
def test_hostile_values_are_refused(value):
    with pytest.raises(InvalidSettings):
        FallbackSettings().saved(timeout=value)
    assert not Path("fallback_settings.json").exists()


def test_unknown_fields_are_refused():
    with pytest.raises(InvalidSettings, match="unknown setting 'colour'"):
        FallbackSettings().saved(colour="blue")
    with pytest.raises(InvalidSettings, match="unknown setting"):
        FallbackSettings(colour="blue")


def test_a_value_pinned_by_the_environment_cannot_be_saved(monkeypatch):
    monkeypatch.setenv("FALLBACK_TIMEOUT", "40")
    with pytest.raises(InvalidSettings, match="pinned by the environment variable FALLBACK_TIMEOUT"):
        FallbackSettings().saved(timeout=12)
    assert not Path("fallback_settings.json").exists()


def test_a_corrupt_file_is_reported_and_left_where_it_is():
    # a read (status, health, any start) moved it to .bak: an editor half-way through saving
    # it lost its second half there, and the next start used defaults without a word
    Path("fallback_settings.json").write_text('{"timeout": 12,')
    s = FallbackSettings()
    assert s.timeout == 30
    assert Path("fallback_settings.json").read_text() == '{"timeout": 12,'
    assert not list(Path().glob("*.bak*"))
    assert "corrupt" in s.problems[0] and "line 1 column 16" in s.problems[0]
    assert "settings --reset" in s.problems[0]


def test_a_file_nested_too_deeply_is_corrupt_not_a_crash():
    # json.loads raised RecursionError: every command, and FallbackManager() in a host, crashed
    Path("fallback_settings.json").write_text("[" * 100_000 + "]" * 100_000)
    s = FallbackSettings()
    assert s.timeout == 30 and "nested too deeply" in s.problems[0]


def test_a_save_over_a_corrupt_file_is_refused_and_the_file_kept():
    # a trailing comma, then a save in the tabs: the file held only the new value, the main API
    # and the rest went to defaults, and the tab said "Saved"
    text = '{"primary_url": "http://127.0.0.1:5000/v1",\n "n_ctx": 8192,}'
    Path("fallback_settings.json").write_text(text)
    for save in (lambda: FallbackSettings().saved(timeout=40),
                 lambda: FallbackSettings().reset(["timeout"])):
        with pytest.raises(StorageError, match=r"line 2 column 16.*nothing was saved") as info:
            save()
        assert "fallback_settings.json" in str(info.value) and "settings --reset" in str(info.value)
        assert Path("fallback_settings.json").read_text() == text
    assert not list(Path().glob("*.bak*"))


def test_a_reset_of_every_setting_moves_a_corrupt_file_aside_and_says_where():
    Path("fallback_settings.json").write_text('{"timeout": 12,')
    s = FallbackSettings().reset()
    assert Path("fallback_settings.json.bak").read_text() == '{"timeout": 12,'
    assert json.loads(Path("fallback_settings.json").read_text()) == {}
    assert any("fallback_settings.json.bak" in p for p in s.problems)
    Path("fallback_settings.json").write_text("[1, 2]")
    FallbackSettings().reset()
    assert Path("fallback_settings.json.bak2").read_text() == "[1, 2]"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"], ids=["utf-8 with a BOM", "utf-16"])
def test_a_file_saved_by_windows_powershell_is_read_not_moved_aside(encoding):
    # PowerShell 5.1's Set-Content -Encoding UTF8 writes a BOM, its `>` UTF-16: JSON parsers
    # refuse both, and the file was moved aside as corrupt, every saved setting lost
    Path("fallback_settings.json").write_text('{"timeout": 12, "primary_url": "http://127.0.0.1:5000/v1"}',
                                              encoding=encoding)
    s = FallbackSettings()
    assert (s.timeout, s.primary_url, s.problems) == (12, "http://127.0.0.1:5000/v1", [])
    s.saved(max_retries=5)  # a save keeps them, in UTF-8
    assert json.loads(Path("fallback_settings.json").read_text(encoding="utf-8")) == {
        "max_retries": 5, "primary_url": "http://127.0.0.1:5000/v1", "timeout": 12}
    assert not list(Path().glob("*.bak*"))


def test_a_file_in_another_encoding_is_kept_not_written_over():
    # cp1252 text: not UTF-8. It was "cannot read, using defaults", and the next save wrote
    # over it with only the new value
    Path("fallback_settings.json").write_bytes('{"primary_model": "café"}'.encode("cp1252"))
    s = FallbackSettings()
    assert s.primary_model == "" and "save it as UTF-8" in s.problems[0]
    with pytest.raises(StorageError, match="save it as UTF-8"):
        s.saved(max_retries=5)
    assert Path("fallback_settings.json").read_bytes().decode("cp1252") == '{"primary_model": "café"}'


def test_a_path_that_is_not_utf8_is_saved_as_escapes_and_leaves_no_temporary_file():
    # a folder from a Latin-1 zip reaches Python with surrogates for its bytes: UTF-8 cannot
    # hold them, so the file keeps them as \u escapes, as JSON can
    s = FallbackSettings().saved(models_dir="/mnt/caf\udce9")
    assert FallbackSettings().models_dir == s.models_dir == Path("/mnt/caf\udce9")
    assert [p.name for p in Path().iterdir() if p.name.endswith(".tmp")] == []


def test_a_file_notepad_saved_in_the_systems_own_encoding_is_read(monkeypatch):
    # Notepad's "ANSI" before 2019 is the system's code page: cp932 on a Japanese Windows.
    # Python reads the code page from the system's locale, as here.
    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "cp932")
    Path("fallback_settings.json").write_bytes('{"models_dir": "D:/モデル", "timeout": 15}'.encode("cp932"))
    s = FallbackSettings()
    assert (s.models_dir, s.timeout, s.problems) == (Path("D:/モデル"), 15, [])
    s.saved(max_retries=5)  # written back in UTF-8, and readable: not \u escapes
    assert '"models_dir": "D:/モデル"' in Path("fallback_settings.json").read_text(encoding="utf-8")
    assert '"D:/モデル"' in format_settings(FallbackSettings())  # `zwaif-fallback settings` shows it so


def test_a_settings_file_that_is_a_model_is_neither_read_nor_moved_nor_written_over():
    model = Path("model.gguf")
    model.write_bytes(b"GGUF" + bytes(2 << 20))
    s = FallbackSettings(settings_file=model)
    assert "is not a settings file" in s.problems[0]
    with pytest.raises(StorageError, match="nothing was written"):
        s.saved(timeout=12)
    assert model.stat().st_size == 4 + (2 << 20) and not Path("model.gguf.bak").exists()


def test_a_pasted_path_loses_explorers_quotes_and_its_tilde_is_expanded():
    # Explorer's "Copy as path" quotes; cmd.exe and PowerShell leave ~ to the program
    s = FallbackSettings(models_dir=' "~/My Models" ', data_dir="~/.zf", characters_dir='"C:\\tgw"')
    assert (s.models_dir, s.data_dir) == (Path.home() / "My Models", Path.home() / ".zf")
    assert s.characters_dir == "C:\\tgw"
    with pytest.raises(InvalidSettings, match="models_dir"):
        FallbackSettings(models_dir='""')


def test_an_invalid_value_in_the_file_is_ignored_and_reported():
    Path("fallback_settings.json").write_text(json.dumps({"timeout": 999, "max_retries": 5}))
    s = FallbackSettings()
    assert (s.timeout, s.max_retries) == (30, 5)
    assert any("timeout=999" in p for p in s.problems)


def test_reset_forgets_saved_values_but_keeps_unknown_keys():
    Path("fallback_settings.json").write_text(json.dumps({"timeout": 12, "host_theme": "dark"}))
    s = FallbackSettings().reset()
    assert s.timeout == 30
    assert json.loads(Path("fallback_settings.json").read_text()) == {"host_theme": "dark"}


def test_reset_of_some_fields_keeps_the_others():
    Path("fallback_settings.json").write_text(json.dumps({"timeout": 12, "primary_url": "http://h:1/v1"}))
    s = FallbackSettings().reset(["timeout", "max_retries"])
    assert (s.timeout, s.primary_url) == (30, "http://h:1/v1")
    assert json.loads(Path("fallback_settings.json").read_text()) == {"primary_url": "http://h:1/v1"}
    with pytest.raises(InvalidSettings, match=r"unknown setting 'timout' \(did you mean timeout\?\)"):
        FallbackSettings().reset(["timout"])
    assert json.loads(Path("fallback_settings.json").read_text()) == {"primary_url": "http://h:1/v1"}


def test_settings_file_location_comes_from_argument_or_environment(monkeypatch, tmp_path):
    target = tmp_path / "elsewhere" / "s.json"
    target.parent.mkdir()
    FallbackSettings(settings_file=target).saved(n_ctx=2048)
    assert json.loads(target.read_text()) == {"n_ctx": 2048}
    monkeypatch.setenv("FALLBACK_SETTINGS_FILE", str(target))
    assert FallbackSettings().n_ctx == 2048


@pytest.mark.parametrize("given", ['"{tmp}/s.json"', "~/s.json"], ids=["quoted by cmd's set", "tilde"])
def test_a_settings_file_named_as_pasted_is_the_one_saved_and_read(monkeypatch, tmp_path, given):
    # the field stripped the quotes and expanded ~ while the file source read the raw text:
    # a save went to one file and the next start read another
    monkeypatch.setenv("FALLBACK_SETTINGS_FILE", given.format(tmp=tmp_path))
    assert FallbackSettings().saved(n_ctx=2048).n_ctx == 2048
    assert FallbackSettings().n_ctx == 2048


def test_a_path_with_the_home_of_no_user_is_refused_not_a_crash():
    with pytest.raises(InvalidSettings, match="models_dir"):
        FallbackSettings(models_dir="~no-such-user-here/models")


def test_an_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="cannot write settings") as info:
        FallbackSettings(settings_file=blocker / "s.json").saved(timeout=10)
    assert info.value.exit_code == 1  # the value was fine: the operation failed


def _held_for(times: int, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``os.replace`` refuse ``times`` times, as Windows does while a virus scanner
    holds the settings file; returns the count of refusals so far."""
    real, refused = os.replace, [0]

    def replace(src: str, dst: str) -> None:
        if refused[0] < times:
            refused[0] += 1
            raise PermissionError(13, "The process cannot access the file because it is being "
                                      "used by another process")
        real(src, dst)

    monkeypatch.setattr(settings_file.os, "replace", replace)
    return refused


def test_a_save_waits_for_a_moment_while_another_process_holds_the_file(monkeypatch):
    monkeypatch.setattr(settings_file, "REPLACE_WAIT_S", 1.0)  # Windows' wait
    refused = _held_for(3, monkeypatch)
    FallbackSettings().saved(timeout=12)
    assert refused == [3]
    assert json.loads(Path("fallback_settings.json").read_text()) == {"timeout": 12.0}
    assert [p.name for p in Path(".").iterdir()] == ["fallback_settings.json"]  # no temp left


def test_a_file_held_for_good_is_a_clear_error_and_stays_as_it_was(monkeypatch):
    FallbackSettings().saved(timeout=12)
    before = Path("fallback_settings.json").read_bytes()
    _held_for(10**6, monkeypatch)
    monkeypatch.setattr(settings_file, "REPLACE_WAIT_S", 0.2)
    with pytest.raises(StorageError, match="cannot write settings"):
        FallbackSettings().saved(timeout=20)
    assert Path("fallback_settings.json").read_bytes() == before
    assert [p.name for p in Path(".").iterdir()] == ["fallback_settings.json"]


def test_the_api_key_is_never_shown():
    s = FallbackSettings(primary_api_key="sk-secret")
    assert "sk-secret" not in repr(s) and "sk-secret" not in str(s.public_dict())
    assert s.public_dict()["primary_api_key"] == "********"


_SAVE_ON_GO = """
import sys, time
from pathlib import Path
from zwaif_fallback import FallbackSettings
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.005)
FallbackSettings(settings_file=sys.argv[2]).saved(**{sys.argv[3]: sys.argv[4]})
"""


def test_processes_saving_at_once_each_keep_the_others_values(tmp_path):
    # read-merge-write without a lock between processes: a `settings --set` beside the tabs'
    # save lost one of the two, both saying "saved"
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # this tree's code
    values = {"n_ctx": "2048", "timeout": "44", "max_retries": "7", "keep_alive": "90"}
    for round_ in range(3):
        target, go = tmp_path / f"s{round_}.json", tmp_path / f"go{round_}"
        savers = [subprocess.Popen([sys.executable, "-c", _SAVE_ON_GO, str(go), str(target), k, v],
                                   env=env)
                  for k, v in values.items()]
        go.touch()  # all at once, imports done
        assert [p.wait(timeout=60) for p in savers] == [0] * len(values)
        assert sorted(json.loads(target.read_text())) == sorted(values)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".s{round_}")) == []


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits and symbolic links")
def test_a_save_keeps_the_files_permissions_and_a_new_file_is_the_owners_only():
    # mkstemp's 0600 replaced a group-readable file: a service reading it as another user
    # started with defaults
    path = Path("fallback_settings.json")
    FallbackSettings().saved(timeout=12)
    assert path.stat().st_mode & 0o777 == 0o600  # it may hold the API key
    path.chmod(0o644)
    FallbackSettings().saved(n_ctx=2048)
    assert path.stat().st_mode & 0o777 == 0o644


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits and symbolic links")
def test_a_save_through_a_symbolic_link_writes_the_linked_file(tmp_path):
    # the link became a plain file, and the linked one (dotfiles, another host's) never changed
    target = tmp_path / "dotfiles" / "fallback_settings.json"
    target.parent.mkdir()
    target.write_text('{"timeout": 12}')
    Path("fallback_settings.json").symlink_to(target)
    FallbackSettings().saved(n_ctx=8192)
    assert Path("fallback_settings.json").is_symlink()
    assert json.loads(target.read_text()) == {"timeout": 12, "n_ctx": 8192}
    assert FallbackSettings().n_ctx == 8192


def test_a_folder_given_as_the_settings_file_is_called_a_folder(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    s = FallbackSettings(settings_file=folder)
    assert "is a folder" in s.problems[0] and str(folder / "fallback_settings.json") in s.problems[0]
    with pytest.raises(StorageError, match="is a folder") as info:
        s.saved(timeout=12)
    assert "permissions" not in str(info.value)


def test_a_settings_file_in_a_folder_that_does_not_exist_is_refused_and_makes_no_folders(tmp_path):
    # a typo in the path made the whole folder tree, and the next start, without it, never
    # saw the setting
    missing = tmp_path / "does" / "not" / "exist" / "s.json"
    with pytest.raises(StorageError, match=r"does not exist, so nothing was written; create the folder"):
        FallbackSettings(settings_file=missing).saved(n_ctx=2048)
    assert not (tmp_path / "does").exists()


def test_settings_are_read_again_once_another_process_saves_the_file():
    mine = FallbackSettings()
    assert mine.reloaded() is None  # nothing changed
    FallbackSettings().saved(timeout=44)  # as another process's save
    fresh = mine.reloaded()
    assert fresh is not None and fresh.timeout == 44 and fresh.reloaded() is None


def test_a_file_half_saved_by_an_editor_keeps_the_settings_read_before():
    Path("fallback_settings.json").write_text('{"primary_url": "http://127.0.0.1:5000/v1"}')
    mine = FallbackSettings()
    for moment in ('{"primary_url": "http://127.0.0.1:5000', ""):  # half-written, truncated
        Path("fallback_settings.json").write_text(moment)
        assert mine.reloaded() is None
    assert Path("fallback_settings.json").exists()
