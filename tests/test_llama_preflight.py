"""The check that a GGUF is loaded in a child process before its first load in this one."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from zwaif_fallback.ggml_devices import OPENMP_SPINS

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


# libgomp's own report of its settings (OpenMP's omp_display_env, on stderr), in a process that
# loaded llama.cpp as serve does: libggml for the device list first, then llama-cpp-python.
GOMP_SETTINGS = """
import ctypes, os
from zwaif_fallback.backends.llama_preflight import import_llama
from zwaif_fallback.ggml_devices import list_devices
list_devices()
import_llama()
print("left:", os.environ.get("GOMP_SPINCOUNT"))  # for the host's own OpenMP and its children
try:
    ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD).omp_display_env(1)  # the one llama.cpp loaded
except OSError:
    print("no libgomp")
"""


def gomp_spincount(**env: str) -> str:
    """How many times llama.cpp's CPU threads spin at a barrier before they sleep."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    run = subprocess.run([sys.executable, "-c", GOMP_SETTINGS], capture_output=True, text=True,
                         env={**clean, "PYTHONPATH": str(ROOT), **env}, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"left: {env.get('GOMP_SPINCOUNT')}\n"), run.stdout
    if run.stdout.endswith("no libgomp\n"):
        pytest.skip("this llama-cpp-python runs its CPU threads without OpenMP")
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", run.stderr)
    assert found is not None, run.stderr[-2000:]
    return found.group(1)


def test_llama_cpps_cpu_threads_spin_briefly_while_they_wait_for_each_other():
    # Spinning 300,000 times, they took the cores of a busy machine from each other: answers
    # several times slower (benchmarks/bench_omp_wait.py); the setting is not left behind
    assert gomp_spincount() == str(OPENMP_SPINS)


@pytest.mark.parametrize("env, spins", [({"OMP_WAIT_POLICY": "ACTIVE"}, "30000000000"),
                                         ({"GOMP_SPINCOUNT": "1234"}, "1234")])
def test_how_the_user_told_openmp_to_wait_is_kept(env, spins):
    assert gomp_spincount(**env) == spins
