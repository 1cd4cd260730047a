from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import pytest
from conftest import run_cli
from servers import FaultProxy

from zwaif_fallback.logs import setup_logging

log = logging.getLogger("zwaif_fallback.test_logs")


@pytest.fixture
def log_file(tmp_path: Path):
    path = setup_logging(tmp_path, max_bytes=400, backups=2)
    assert path is not None
    yield path
    root = logging.getLogger("zwaif_fallback")
    for handler in [h for h in root.handlers if getattr(h, "baseFilename", "").startswith(str(tmp_path))]:
        root.removeHandler(handler)
        handler.close()


@pytest.fixture
def held_open(log_file: Path, monkeypatch: pytest.MonkeyPatch):
    """What Windows does while another process has the log file open: it cannot be renamed."""
    def refuse(real):
        def rename(src, dst, *args, **kwargs):
            if os.fspath(src) == str(log_file.resolve()):
                raise PermissionError(13, "The process cannot access the file because it is being "
                                          "used by another process", os.fspath(src))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "rename", refuse(os.rename))
    monkeypatch.setattr(os, "replace", refuse(os.replace))
    return monkeypatch


def test_a_log_file_another_process_holds_keeps_every_record_and_its_backups(log_file, held_open, capsys):
    for name in ("1", "2"):
        Path(f"{log_file}.{name}").write_text(f"backup {name}\n", encoding="utf-8")
    for i in range(20):  # 2 KB: past max_bytes many times over
        log.warning("record %02d %s", i, "x" * 80)
    text = log_file.read_text(encoding="utf-8")
    assert all(f"record {i:02d}" in text for i in range(20))
    assert "Logging error" not in capsys.readouterr().err
    assert [Path(f"{log_file}.{n}").read_text(encoding="utf-8") for n in "12"] == ["backup 1\n", "backup 2\n"]


def test_the_log_rotates_once_no_other_process_holds_it(log_file, held_open):
    Path(f"{log_file}.1").write_text("backup 1\n", encoding="utf-8")
    for i in range(10):
        log.warning("record %02d %s", i, "x" * 80)
    held_open.undo()  # the other process has closed it
    log.warning("after")
    assert Path(f"{log_file}.2").read_text(encoding="utf-8") == "backup 1\n"
    assert "record 09" in Path(f"{log_file}.1").read_text(encoding="utf-8")
    assert "after" in log_file.read_text(encoding="utf-8")


def test_a_backup_another_process_holds_keeps_the_records_in_the_live_file(log_file, monkeypatch, capsys):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(dst) == f"{log_file}.1" or os.fspath(src) == f"{log_file}.1":
            raise PermissionError(13, "The process cannot access the file", os.fspath(dst))
        return real(src, dst, *args, **kwargs)

    Path(f"{log_file}.1").write_text("backup 1\n", encoding="utf-8")
    monkeypatch.setattr(os, "replace", replace)
    for i in range(10):
        log.warning("record %02d %s", i, "x" * 80)
    assert all(f"record {i:02d}" in log_file.read_text(encoding="utf-8") for i in range(10))
    assert "Logging error" not in capsys.readouterr().err
    assert not Path(f"{log_file}.rotating").exists()
    assert Path(f"{log_file}.1").read_text(encoding="utf-8") == "backup 1\n"


def test_a_path_that_is_not_utf8_is_logged_with_escapes(log_file, capsys):
    # A model file from a cp1252 zip reaches Python with the surrogate \udce9 for its byte 0xE9:
    # the record was dropped, with a "Logging error" traceback on stderr
    log.warning("cannot load %s", os.fsdecode(b"/models/mod\xe9le.gguf"))
    assert "cannot load /models/mod\\udce9le.gguf" in log_file.read_text(encoding="utf-8")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("structlog", ["installed", "not installed"])
def test_a_retry_is_a_line_in_the_log_file_and_nothing_on_stderr(isolated, structlog):
    # stamina's own hook printed a bare "stamina.retry_scheduled" on stderr for each retry; where
    # structlog is installed, stamina logs through it instead, and it printed on stdout
    assert importlib.util.find_spec("structlog") is not None  # a test dependency
    env = {"FALLBACK_KEEP_ALIVE": "0"}
    if structlog == "not installed":  # a module of that name that cannot be imported
        (isolated / "shadow").mkdir()
        (isolated / "shadow" / "structlog.py").write_text("raise ImportError('not installed')\n")
        env["PYTHONPATH"] = os.pathsep.join([str(isolated / "shadow"), os.environ.get("PYTHONPATH", "")])
    proxy = FaultProxy(upstream_port=0)  # never reached: every request is answered 500
    proxy.mode = "500"
    try:
        result = run_cli("chat", "Say hi.", "--json", "--max-tokens", "4", cwd=isolated,
                         env={**env, "FALLBACK_PRIMARY_URL": proxy.url})
    finally:
        proxy.close()
    assert result.returncode == 0 and result.stderr == ""
    assert json.loads(result.stdout)["source"] != "primary"
    logged = (isolated / "Logs" / "zwaif_fallback.log").read_text(encoding="utf-8")
    assert "retry 1 in" in logged and "retry 2 in" in logged and "injected 500" in logged
    assert "stamina.retry_scheduled" not in logged
