"""A load planned through llama.cpp's own memory accounting, without loading it.

llama.cpp's ``no_alloc`` model parameter loads a model's metadata and sizes every
buffer a load would allocate without allocating or reading the weights; it is the
dry run behind llama.cpp's ``--fit``. ``dry_run`` runs one in a child process (a
damaged file can abort llama.cpp) for the exact plan a real load would use and
reports where the memory would go, buffer by buffer, next to our own estimate
(``memory.py``). The child captures llama.cpp's log; ``dry_run_log`` reads the figures
from it.

The dry run reads the file without mmap (llama.cpp requires it), so its weights are what a
load with ``use_mmap=False`` allocates. A mapped load (llama-cpp-python's default) maps
the file instead: the same weights, except that the originals of repacked tensors stay
mapped beside their ``CPU_REPACK`` copy. ``model_mb`` is the file's weights, what a mapped
load maps. On a GPU build, the host-side weights of a partial offload land in a pinned
``CUDA_Host`` buffer without mmap and in the mapping with it; both are RAM.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ._model import Model
from .dry_run_log import DryRun, parse_log
from .errors import BackendUnavailable, InvalidModelFile, ModelLoadError
from .gguf_header import read_gguf_header
from .locations import SPLIT_RE
from .memory import LoadConfig, MemoryBreakdown

__all__ = ["DryRunCheck", "Refused", "cached", "dry_run"]

CACHE_SIZE = 128

# Runs in a fresh interpreter: argv = path, the load plan as JSON. Prints one JSON line
# on success; exits 3 (model) or 4 (context) with llama.cpp's errors on stderr otherwise.
_CHILD = r"""
import ctypes, json, sys
if sys.platform == 'linux':  # as backends/llama_cpp.py's _share_libstdcxx() does
    try: ctypes.CDLL('libstdc++.so.6', mode=ctypes.RTLD_GLOBAL)
    except OSError: pass
try:
    import llama_cpp
except ImportError as exc:
    sys.stderr.write(f'cannot import llama_cpp: {exc}\n')
    sys.exit(5)
path, plan = sys.argv[1], json.loads(sys.argv[2])
KEEP = ('load_tensors:', 'llama_kv_cache:', 'llama_context:', 'sched_reserve:', 'tensor ')
pieces = []

@llama_cpp.llama_log_callback
def on_log(level, text, user_data):
    text = text.decode('utf-8', 'replace')
    pieces.append(text)
    if level == 4:  # GGML_LOG_LEVEL_ERROR: on stderr now, in case llama.cpp aborts next
        sys.stderr.write(text)
        sys.stderr.flush()

llama_cpp.llama_log_set(on_log, None)
llama_cpp.llama_backend_init()
mparams = llama_cpp.llama_model_default_params()
mparams.n_gpu_layers = plan['gpu_layers']
mparams.no_alloc = True
mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # no_alloc asserts on a mapped load
if plan['cpu_only']:
    mparams.n_gpu_layers = 0
    mparams.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
    mparams.main_gpu = -1  # llama.cpp then clears its device list
overrides = None
if plan['cpu_only'] or plan['gpu_layers'] == 0 or not llama_cpp.llama_supports_gpu_offload():
    class Override(ctypes.Structure):
        _fields_ = [('pattern', ctypes.c_char_p), ('buft', ctypes.c_void_p)]
    try:
        cpu_buft = llama_cpp.llama_cpp._lib.ggml_backend_cpu_buffer_type
    except AttributeError:
        cpu_buft = None
    if cpu_buft is not None:
        cpu_buft.restype = ctypes.c_void_p
        overrides = (Override * 2)(Override(b'.', cpu_buft()), Override(None, None))
        mparams.tensor_buft_overrides = ctypes.cast(overrides, ctypes.c_void_p)
model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
if not model:
    sys.exit(3)
cparams = llama_cpp.llama_context_default_params()
cparams.n_ctx = plan['n_ctx']
cparams.n_batch = plan['n_batch']
cparams.n_ubatch = min(plan['n_batch'], plan['n_ubatch'])  # as llama_cpp.Llama does
cparams.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if plan['flash_attn']
                           else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
cparams.type_k = cparams.type_v = getattr(llama_cpp, 'GGML_TYPE_' + plan['kv_type'].upper())
ctx = llama_cpp.llama_init_from_model(model, cparams)
if not ctx:
    sys.exit(4)
lines = [line for line in ''.join(pieces).splitlines() if line.startswith(KEEP)]
print(json.dumps({'version': llama_cpp.__version__, 'model_bytes': llama_cpp.llama_model_size(model),
                  'log': lines}))
sys.stdout.flush()
llama_cpp.llama_free(ctx)
llama_cpp.llama_model_free(model)
"""

_cache: dict[tuple[object, ...], DryRun | str] = {}  # plan -> result, or why it failed
_cache_lock = threading.Lock()


class DryRunCheck(Model):
    """llama.cpp's dry run of a plan beside our estimate of it, for ``check``.

    Buffers only, on both sides: the runtime's own overhead (a CUDA context, threads, the
    vocabulary) is left out of the estimate, since llama.cpp does not count it. The dry
    run's RAM counts the originals of repacked weights, which a mapped load keeps mapped.
    A difference is the estimate less llama.cpp's figure.
    """

    vram_mb: float
    ram_mb: float
    estimate_vram_mb: float
    estimate_ram_mb: float
    vram_diff_mb: float
    ram_diff_mb: float
    gpu_layers: int
    seconds: float
    llama_cpp_version: str

    @classmethod
    def of(cls, dry: DryRun, estimate_vram: MemoryBreakdown, estimate_ram: MemoryBreakdown
           ) -> DryRunCheck:
        repacked = dry.devices["CPU_REPACK"].weights_mb if "CPU_REPACK" in dry.devices else 0.0
        ram = dry.ram_mb + repacked
        ours_vram = estimate_vram.total_mb - estimate_vram.overhead_mb
        ours_ram = estimate_ram.total_mb - estimate_ram.overhead_mb
        return cls(vram_mb=round(dry.vram_mb, 1), ram_mb=round(ram, 1),
                   estimate_vram_mb=round(ours_vram, 1), estimate_ram_mb=round(ours_ram, 1),
                   vram_diff_mb=round(ours_vram - dry.vram_mb, 1),
                   ram_diff_mb=round(ours_ram - ram, 1), gpu_layers=dry.gpu_layers,
                   seconds=dry.seconds, llama_cpp_version=dry.llama_cpp_version)


class Refused(ModelLoadError):
    """llama.cpp's dry run refused the file or the plan: a load of it would fail the same way."""


def dry_run(path: str | os.PathLike[str], config: LoadConfig, *, cpu_only: bool = False,
            timeout_s: float = 60.0) -> DryRun:
    """Dry-run loading the GGUF at ``path`` with ``config`` through llama.cpp's accounting.

    Results (and load failures) are cached in this process per file (path, size,
    modification time), configuration and ``cpu_only``.

    Args:
        path: a GGUF file (the first shard of a split model).
        config: the load plan; ``gpu_layers`` in llama.cpp's meaning (-1: all).
        cpu_only: plan for no GPU at all, as if the machine had none (llama.cpp's
            ``split_mode=none, main_gpu=-1``), whatever ``config.gpu_layers`` says.
        timeout_s: how long the child may take.

    Returns:
        The buffers llama.cpp would allocate, per device and buffer type.

    Raises:
        BackendUnavailable: llama-cpp-python is not installed, or no child could start.
        InvalidModelFile: the file cannot be read, or its tensor table not parsed.
        Refused: llama.cpp refused the file or the configuration.
        ModelLoadError: the child died another way (a signal, an error of its own), ran
            past ``timeout_s``, or printed no report; none of these is kept.
    """
    try:
        key = _key(path, config, cpu_only)
    except OSError as exc:
        raise InvalidModelFile(os.fspath(path), f"cannot read: {exc.strerror or exc}") from exc
    with _cache_lock:
        cached = _cache.get(key)
    if isinstance(cached, str):
        raise Refused(cached)
    if cached is not None:
        return cached
    if importlib.util.find_spec("llama_cpp") is None:
        raise BackendUnavailable(
            'llama-cpp-python is not installed: pip install "zwaif-fallback[gguf]"')
    result = _run_child(os.fspath(path), config, cpu_only, timeout_s)
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > CACHE_SIZE:
            del _cache[next(iter(_cache))]
    if isinstance(result, str):
        raise Refused(result)
    return result


def cached(path: str | os.PathLike[str], config: LoadConfig, *, cpu_only: bool = False
           ) -> DryRun | None:
    """The dry run of this plan if one was made in this process, without making one."""
    try:
        found = _cache.get(_key(path, config, cpu_only))
    except OSError:
        return None
    return found if isinstance(found, DryRun) else None


def _key(path: str | os.PathLike[str], config: LoadConfig, cpu_only: bool) -> tuple[object, ...]:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, config.model_dump_json(), cpu_only)


def _run_child(path: str, config: LoadConfig, cpu_only: bool, timeout_s: float) -> DryRun | str:
    """One dry run in a fresh interpreter: the result, or why llama.cpp refused the plan.

    Raises the failures that may not happen again (a timeout, a child that cannot start).
    """
    name = Path(path).name
    plan = json.dumps({**config.model_dump(), "cpu_only": cpu_only})
    # ggml would attach gdb to print a backtrace. The child's output is UTF-8 both ways, not the
    # locale's encoding (Windows' ANSI code page): llama.cpp's messages name the file, and a
    # path under C:\Users\Иван\ raised UnicodeDecodeError here.
    env = dict(os.environ, GGML_NO_BACKTRACE="1", PYTHONIOENCODING="utf-8")
    start = time.perf_counter()
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD, path, plan], capture_output=True,
                               encoding="utf-8", errors="replace", timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"llama.cpp did not finish the dry run of {name} in {timeout_s:g} s: "
                             "raise timeout_s, or check the file") from None
    except OSError as exc:
        raise BackendUnavailable(f"cannot start {sys.executable} for a dry run: {exc}") from exc
    seconds = time.perf_counter() - start
    reason = _reason(child.stderr)
    if child.returncode == 5:
        raise BackendUnavailable(f"llama-cpp-python does not import ({reason}): "
                                 'pip install "zwaif-fallback[gguf]"')
    if child.returncode == 4:
        return (f"llama.cpp cannot create a context for {name} with n_ctx={config.n_ctx}, "
                f"flash_attn={config.flash_attn}, kv_type={config.kv_type} ({reason})")
    # no model from llama.cpp (3), or llama.cpp aborted on the file (a GGML_ASSERT: SIGABRT;
    # abort() exits 3 on Windows): its answer, kept. Another death is not llama.cpp's word.
    if child.returncode in (3, -signal.SIGABRT):
        return f"llama.cpp cannot load {name} ({reason}): the file is damaged or unsupported"
    if child.returncode != 0 or not child.stdout.strip():  # not llama.cpp's answer: not cached
        how = (f"was killed by signal {-child.returncode}" if child.returncode < 0
               else f"failed (exit status {child.returncode})")
        raise ModelLoadError(f"the dry run of {name} {how} ({reason})")
    try:
        report = json.loads(child.stdout.strip().splitlines()[-1])
    except ValueError:
        raise ModelLoadError(f"the dry run of {name} printed no report: {child.stdout.strip()[-200:]!r}"
                             ) from None
    return parse_log(report["log"], _tensor_bytes(Path(path)), model_bytes=report["model_bytes"],
                     seconds=seconds, version=report["version"])


#: The build machine's folders before a source file's name, at the start of a line.
_BUILD_PATH = re.compile(r"^(?:[A-Za-z]:)?[\\/][^:]*[\\/]")


def _reason(stderr: str) -> str:
    """The line of the child's stderr that says what went wrong."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "GGML_ASSERT" in line]
    line = (errors or lines or ["no message"])[0]
    # "/long/build/path/ggml.c:3354: GGML_ASSERT(...) failed", or on Windows "D:\a\...\ggml.c:..."
    return _BUILD_PATH.sub("", line)[:240]


def _tensor_bytes(path: Path) -> dict[str, int]:
    """Each tensor's size from the GGUF's table (and its sibling shards')."""
    header = read_gguf_header(path)
    tensors = list(header.tensors)
    count = header.metadata.get("split.count")
    match = SPLIT_RE.match(path.name)
    if isinstance(count, int) and count > 1 and match:
        for index in range(2, count + 1):
            shard = path.with_name(f"{match['stem']}-{index:05d}-of-{count:05d}.gguf")
            tensors.extend(read_gguf_header(shard).tensors)
    return {t.name: t.nbytes for t in tensors}
