"""Bad input, broken storage and security: every command and handler answers clearly,
nothing is written that should not be, and the chat path keeps answering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from servers import refused_url

from zwaif_fallback import FallbackManager, FallbackSettings

SMOL = "SmolLM2-135M-Instruct.Q4_1"
HUGE = "x" * (10 * 1024 * 1024)


def written(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} - {"Logs", "models"}


@pytest.mark.parametrize("args", [
    ["check", "../../etc/passwd"],
    ["check", "/etc/passwd"],
    ["check", ""],
    ["check", "\x1b[31mred"],
    ["check", SMOL, "--ctx", "-5"],
    ["check", SMOL, "--ctx", "99999999999999999999"],
    ["check", SMOL, "--free-vram-mb", "-1"],
    ["check", SMOL, "--free-vram-mb", "inf"],
    ["chat", ""],
    ["chat", "hi", "--model", "../../../models/x.gguf"],
    ["chat", "hi", "--max-tokens", "0"],
    ["bench", "no-such-model"],
    ["monitor", "--duration", "nan"],
    ["monitor", "--duration", "10", "--interval", "-1"],
    ["settings", "--set", "timeout=nan"],
    ["settings", "--set", "timeout=-5"],
    ["settings", "--set", "max_retries=1e9"],
    ["settings", "--set", "auto_switch=maybe"],
    ["settings", "--set", "primary_url=file:///etc/passwd"],
    ["settings", "--set", "settings_file=/tmp/elsewhere.json"],
    ["settings", "--set", "=5"],
    ["ui", "--host", "0.0.0.0"],
])
def test_cli_refuses_hostile_values_clearly_and_writes_nothing(isolated, args):
    result = run_cli(*args, cwd=isolated, env={"FALLBACK_KEEP_ALIVE": "0"}, timeout=120)
    assert result.returncode in (1, 2), result.stdout
    assert "Traceback" not in result.stderr and result.stderr.strip()
    assert len(result.stderr.strip().splitlines()) == 1
    assert written(isolated) == set()


def test_a_ten_megabyte_prompt_is_refused(isolated):
    with FallbackManager(FallbackSettings(keep_alive=0, scan_system_stores=False)) as manager:
        from zwaif_fallback import InvalidSettings

        with pytest.raises(InvalidSettings, match="characters"):
            manager.chat([{"role": "user", "content": HUGE}])


@pytest.fixture
def handlers(isolated):
    from webui.diagnostics import DiagnosticsHandlers
    from webui.health_monitor import HealthHandlers
    from webui.management import ManagementHandlers

    manager = FallbackManager(FallbackSettings(keep_alive=0, scan_system_stores=False,
                                               vram_monitoring=False), background=False)
    yield DiagnosticsHandlers(manager), ManagementHandlers(manager), HealthHandlers(manager)
    manager.close()


HOSTILE_NAMES = [None, "", "../../etc/passwd", "/etc/shadow", "\x00", HUGE[:100_000], 42]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_ui_handlers_answer_hostile_names_with_a_message(handlers, isolated, name):
    diagnostics, management, _ = handlers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gr.Warning outside a request is a UserWarning
        for call in (lambda: diagnostics.test_compatibility(name, None, "f16", False, None),
                     lambda: management.switch_model(name)):
            out = call()
            assert isinstance(out, (str, tuple)) and out
    assert written(isolated) == set()


@pytest.mark.parametrize("timeout, retries", [(float("nan"), 3), (-5, 3), (1e12, 3), (30, -1),
                                              (30, float("inf"))])
def test_ui_refuses_hostile_settings_and_writes_nothing(handlers, isolated, timeout, retries):
    _, management, _ = handlers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = management.save_settings(timeout, retries, True, True)
    assert "Nothing was saved" in str(out) or "not valid" in str(out)
    assert not (isolated / "fallback_settings.json").exists()


def test_ui_chat_and_monitoring_refuse_hostile_values(handlers):
    _, management, health = handlers
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        answer = management.send(HUGE, "", 64)
        assert "characters" in str(answer)
        assert "http" in str(management.send("hi", "ftp://x", 8))
        assert health.start_monitoring(float("nan"))


# -- broken storage ---------------------------------------------------------------------------

def test_a_settings_path_that_is_a_folder_is_reported_and_chat_answers(isolated):
    folder = isolated / "fallback_settings.json"
    folder.mkdir()
    settings = FallbackSettings(keep_alive=0, scan_system_stores=False)
    assert any("is a folder" in p for p in settings.problems)
    with FallbackManager(settings) as manager:
        assert manager.chat([{"role": "user", "content": "hi"}], max_tokens=4).text


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))
from zwaif_fallback import FallbackManager, FallbackSettings
from zwaif_fallback.logs import setup_logging
setup_logging()
with FallbackManager(FallbackSettings(keep_alive=0, scan_system_stores=False)) as manager:
    for _ in range(3):
        result = manager.chat([{"role": "user", "content": "hi"}], primary=sys.argv[1], max_tokens=4)
    print("ANSWER", result.source, bool(result.text))
    try:
        manager.update_settings(timeout=11)
    except Exception as exc:
        print("SAVE", type(exc).__name__)
"""


def test_a_full_disk_never_breaks_the_chat_path(isolated):
    """Settings, history and logs cannot grow past 16 bytes: every write fails, answers do not."""
    run = subprocess.run([sys.executable, "-c", FULL_DISK, refused_url()], capture_output=True,
                         text=True, cwd=isolated, timeout=300)
    assert "ANSWER local True" in run.stdout, run.stderr[-2000:]
    assert "SAVE StorageError" in run.stdout


def test_an_unwritable_logs_folder_does_not_stop_the_cli(isolated):
    (isolated / "Logs").write_text("a file where the folder should be")
    result = run_cli("status", "--json", cwd=isolated)
    assert result.returncode == 0 and json.loads(result.stdout)["cpu_count"] > 0


def test_a_corrupt_history_database_never_breaks_the_chat_path(isolated):
    data = isolated / "data"
    data.mkdir()
    (data / "history.sqlite3").write_bytes(os.urandom(8192))
    settings = FallbackSettings(keep_alive=0, scan_system_stores=False, data_dir=data)
    with FallbackManager(settings) as manager:
        result = manager.chat([{"role": "user", "content": "hi"}], primary=refused_url(),
                              max_tokens=4)
        assert result.source == "local"
        assert manager.failover_history()  # a fresh database took the corrupt one's place


# -- security ---------------------------------------------------------------------------------

def test_api_keys_are_never_logged_or_shown(isolated):
    env = {"FALLBACK_PRIMARY_URL": refused_url(), "FALLBACK_PRIMARY_API_KEY": "sk-VERY-SECRET",
           "FALLBACK_KEEP_ALIVE": "0"}
    chat = run_cli("chat", "hi", "--max-tokens", "4", cwd=isolated, env=env)
    shown = run_cli("settings", "--json", cwd=isolated, env=env)
    log = (isolated / "Logs" / "zwaif_fallback.log").read_text()
    for text in (chat.stdout, chat.stderr, shown.stdout, shown.stderr, log):
        assert "sk-VERY-SECRET" not in text
    assert json.loads(shown.stdout)["settings"]["primary_api_key"] == "********"


def test_remote_code_is_not_run_without_the_setting(tmp_path):
    from builders import write_hf_chat_model

    from zwaif_fallback.backends.transformers import TransformersBackend
    from zwaif_fallback.errors import ModelLoadError

    folder = write_hf_chat_model(tmp_path / "custom")
    marker = tmp_path / "code-ran"
    (folder / "custom_model.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import LlamaForCausalLM as CustomModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "custom_model.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    backend = TransformersBackend("custom", str(folder))
    try:
        backend.load()
    except ModelLoadError:
        pass
    finally:
        backend.unload()
    assert not marker.exists()


def test_pickle_weights_are_not_loaded_without_the_setting(tmp_path):
    from builders import write_hf_chat_model

    from zwaif_fallback.backends.transformers import TransformersBackend
    from zwaif_fallback.errors import ModelLoadError

    folder = write_hf_chat_model(tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not loaded: a pickle could run code")
    with pytest.raises(ModelLoadError):
        TransformersBackend("pickled", str(folder)).load()


def test_importing_the_library_runs_nothing_of_the_hosts(isolated):
    code = "import zwaif_fallback, os; print(sorted(os.listdir('.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=isolated,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.stdout.strip() == "[]"  # no settings file, no log folder, no database


HOSTILE_VALUES = [None, "", "x" * 1_000_000, float("nan"), float("-inf"), -1, 10**30,
                  "../../etc/passwd", ["a", "list"], {"a": "dict"}]


def test_every_ui_handler_answers_every_hostile_value(handlers, isolated):
    """Each public handler, each parameter set to each hostile value: an answer, never an exception."""
    import inspect

    skipped = {"start_benchmark_all"}  # would benchmark every model for real; refused names covered above
    calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for owner in handlers:
            for name, method in inspect.getmembers(owner, inspect.ismethod):
                if name.startswith("_") or name in skipped:
                    continue
                params = list(inspect.signature(method).parameters)
                for value in HOSTILE_VALUES if params else [None]:
                    method(*[value] * len(params))
                    calls += 1
        _, management, health = handlers
        for job in management.manager.jobs():
            job.cancel()
        try:
            health.stop_monitoring()
        except Exception:  # no session was started by a hostile duration: nothing to stop
            pass
    assert calls > 100
    saved = isolated / "fallback_settings.json"  # reset and optimize legitimately write it
    if saved.exists():
        text = saved.read_text()
        assert "passwd" not in text and "xxxx" not in text and "NaN" not in text
        assert FallbackSettings().problems == []
