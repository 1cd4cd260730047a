"""The check that a GGUF is loaded in a child process before its first load in this one."""

from __future__ import annotations

import os
import subprocess
import sys

# A process whose locale encoding is not UTF-8, as Windows' ANSI code page (cp1252, cp1251) is
# not; -X utf8=0 is for this process only, not for the child it starts.
PREFLIGHT_IN_A_NOT_UTF8_LOCALE = """
import sys
from zwaif_fallback.backends.llama_preflight import preflight
try:
    preflight(sys.argv[1])
except Exception as exc:
    print(type(exc).__name__)
"""


def test_the_preflight_of_a_file_under_a_non_ascii_folder_reads_llama_cpps_utf8_log(tmp_path, tiny_gguf):
    folder = tmp_path / "Иван"  # llama.cpp logs the path it loads, in UTF-8
    folder.mkdir()
    (folder / "damaged.gguf").write_bytes(tiny_gguf.read_bytes()[:64])
    run = subprocess.run([sys.executable, "-X", "utf8=0", "-c", PREFLIGHT_IN_A_NOT_UTF8_LOCALE,
                          str(folder / "damaged.gguf")], capture_output=True, text=True,
                         env=dict(os.environ, LC_ALL="C", PYTHONCOERCECLOCALE="0"), timeout=120)
    assert run.stdout.strip() == "ModelLoadError", run.stdout + run.stderr[-2000:]
