"""Before llama.cpp loads a GGUF in this process: importing llama-cpp-python, and a
child process that loads the file first.

Some llama.cpp failures abort the process instead of raising (a vocabulary with
duplicate tokens, a tensor of the wrong shape). Before a file is loaded in this
process for the first time, a child process loads it; if the child dies, the
file is refused and the host lives on. The verdict is kept per file (path, size,
modification time), so each file is checked once.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailable, ModelLoadError
from ..ggml_devices import share_libstdcxx, threads_spin_briefly

__all__ = ["import_llama", "preflight", "warm_up"]

log = logging.getLogger(__name__)

_checked: dict[tuple[str, int, int], str | None] = {}  # file identity -> why it is unsafe
_checked_lock = threading.Lock()

# Loads the weights' layout (mmap, no repacking) and builds a small context: enough for
# llama.cpp to check every tensor's shape and reserve its compute graph, which is where
# a malformed file makes it abort.
_PREFLIGHT = (
    "import ctypes, sys\n"
    "if sys.platform == 'linux':\n"  # as share_libstdcxx() does, without importing this package
    "    try: ctypes.CDLL('libstdc++.so.6', mode=ctypes.RTLD_GLOBAL)\n"
    "    except OSError: pass\n"
    "import llama_cpp\n"
    "llama_cpp.llama_backend_init()\n"
    "params = llama_cpp.llama_model_default_params()\n"
    "params.n_gpu_layers = 0\n"
    "params.use_extra_bufts = False\n"
    "model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), params)\n"
    "if not model: sys.exit(3)\n"
    "cparams = llama_cpp.llama_context_default_params()\n"
    "cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 256\n"
    "sys.exit(0 if llama_cpp.llama_init_from_model(model, cparams) else 4)\n"
)


def import_llama() -> Any:
    """llama-cpp-python's module, imported with the system libstdc++ made global first.

    Raises:
        BackendUnavailable: llama-cpp-python is not installed.
    """
    share_libstdcxx()
    try:
        with threads_spin_briefly():
            import llama_cpp
    except ImportError:
        raise BackendUnavailable(
            'llama-cpp-python is not installed: pip install "zwaif-fallback[gguf]"') from None
    return llama_cpp


def warm_up(path: str) -> None:
    """Import llama-cpp-python and check ``path`` in a child, so that a first load costs
    only the load itself. Failures are left for the load to report."""
    try:
        import_llama()
        preflight(path)
    except Exception as exc:
        log.debug("warming up for %s: %s", path, exc)


def preflight(path: str, *, timeout_s: float = 120.0) -> None:
    """Load the file in a child process once; raise ModelLoadError if that fails or kills it."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _checked_lock:
        if key in _checked:
            problem = _checked[key]
            if problem:
                raise ModelLoadError(problem)
            return
    try:
        # llama.cpp logs the path in UTF-8, not in the locale's encoding (Windows' ANSI code
        # page), which raised UnicodeDecodeError for a model under C:\Users\Иван\.
        child = subprocess.run([sys.executable, "-c", _PREFLIGHT, path], capture_output=True,
                               encoding="utf-8", errors="replace", timeout=timeout_s,
                               env=dict(os.environ, PYTHONIOENCODING="utf-8"))
        problem = None
        if child.returncode != 0:
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1][:200]
            how = (f"was killed by signal {-child.returncode}" if child.returncode < 0
                   else f"failed ({tail})")
            problem = f"llama.cpp {how} while reading {Path(path).name}; the file is damaged or unsupported"
    except subprocess.TimeoutExpired:
        problem = f"llama.cpp did not finish reading {Path(path).name} in {timeout_s:.0f} s"
    with _checked_lock:
        _checked[key] = problem
    if problem:
        raise ModelLoadError(problem)
