"""llama.cpp's own list of compute devices and their memory, read from libggml through ctypes.

NVML answers only for NVIDIA cards. llama.cpp built for Vulkan, ROCm, SYCL or Metal knows
the other GPUs itself, and ``ggml_backend_dev_memory`` is the figure it plans its own
offload with. The library is found and loaded without importing ``llama_cpp`` (which would
load libllama and install its logger): a few milliseconds the first time, microseconds
after. Loading it first does not give llama-cpp-python a second copy: the loader hands out
the one already mapped.

Asking has a price on CUDA: ``ggml_backend_dev_memory`` creates a CUDA context, and this
process then holds hundreds of MiB of VRAM until it exits. That is why hardware.py asks NVML
first, which reads the same figure for free, and why ``list_devices`` leaves CUDA devices'
memory unasked unless told otherwise. ROCm builds run the same code through HIP and may pay
the same; there is no cheaper way to ask about an AMD card here.

``GgmlLibrary`` is the process edge: the six libggml calls the probe makes. A test double
implements them to simulate devices; the real one wraps the loaded library.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

__all__ = ["DeviceList", "DeviceType", "GgmlDevice", "GgmlLibrary", "list_devices", "share_libstdcxx",
           "threads_spin_briefly"]

DeviceType = Literal["cpu", "gpu", "igpu", "accel", "meta", "unknown"]
#: ggml_backend_dev_type's values in the enum's order; "unknown" for any a newer ggml adds
_TYPES: tuple[DeviceType, ...] = ("cpu", "gpu", "igpu", "accel", "meta")


class GgmlDevice(NamedTuple):
    """One device as llama.cpp lists it. Memory in bytes; None where it was not asked."""

    name: str  # llama.cpp's name for it: CPU, CUDA0, Vulkan0, ROCm0, MTL0
    description: str  # the driver's: "AMD Radeon RX 7800 XT (RADV NAVI32)"
    type: DeviceType
    free_bytes: int | None
    total_bytes: int | None


class DeviceList(NamedTuple):
    """llama.cpp's devices in its own order, or ``reason``: why they could not be read."""

    devices: tuple[GgmlDevice, ...] = ()
    reason: str | None = None


class GgmlLibrary(Protocol):
    """The libggml calls the probe makes; ``device`` is ggml's opaque device handle."""

    def count(self) -> int: ...

    def get(self, index: int) -> Any: ...

    def name(self, device: Any) -> str: ...

    def description(self, device: Any) -> str: ...

    def type(self, device: Any) -> int: ...

    def memory(self, device: Any) -> tuple[int, int]:
        """(free, total) bytes."""
        ...


def list_devices(*, library: GgmlLibrary | None = None, ask_cuda: bool = False,
                 memory: bool = True) -> DeviceList:
    """llama.cpp's compute devices with their memory. Never raises.

    Args:
        library: the libggml calls; by default llama-cpp-python's own library, loaded once.
        ask_cuda: also ask CUDA devices for their memory, which leaves this process holding
            a CUDA context from then on. Off by default: NVML answers for free.
        memory: ask devices for their memory at all; without it, the build's device list.

    Returns:
        The devices; or, when llama.cpp is not installed, its library does not load or a
        call fails, no devices and a ``reason`` a person can act on.
    """
    try:
        found = _read(library if library is not None else _load(), ask_cuda=ask_cuda,
                      memory=memory)
        return DeviceList(devices=tuple(found))
    except _NotLoaded as exc:
        return DeviceList(reason=str(exc))
    except Exception as exc:  # a libggml that answers oddly must not break a status page
        return DeviceList(reason=f"llama.cpp's device list failed ({exc})")


def share_libstdcxx() -> None:
    """Put the system's libstdc++ in the process's global symbol scope before llama.cpp loads.

    A CUDA build of llama.cpp can carry its own copy of libstdc++ inside libggml-cuda.so
    (nvcc links it statically) and export it. When numpy was imported first, libllama's
    std::regex then picks up locale facets from both copies and the first tokenization
    crashes the process with SIGSEGV. Seen on an H100 with CUDA 13 and numpy 2.5; loading
    libstdc++ globally first makes every library bind to the one copy.
    """
    if sys.platform != "linux":
        return
    import ctypes

    try:
        ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
    except OSError:  # no shared libstdc++ (a static build): nothing to share
        pass


#: Spins llama.cpp's OpenMP threads make at a barrier before they sleep (libgomp's default:
#: 300,000). benchmarks/bench_omp_wait.py, SmolLM2 on 2 cores, medians of 5: 0.95x the
#: default's tokens/s on an idle machine, 1.4x beside 2 busy processes, 3.1x beside 6; not
#: spinning at all (OMP_WAIT_POLICY=PASSIVE) was 3.8x and 3.7x busy but 0.38x idle.
OPENMP_SPINS = 10_000
_SPIN_LOCK = threading.RLock()


@contextmanager
def threads_spin_briefly() -> Iterator[None]:
    """Load llama.cpp inside this block: its CPU threads then spin ``OPENMP_SPINS`` times
    while they wait for each other, not 300,000, before they sleep.

    llama-cpp-python runs its CPU backend on OpenMP (libgomp), and a token passes hundreds
    of its barriers. On a machine whose cores other work keeps busy (the host's speech and
    vision, a game) a spinning thread holds the core the thread it waits for needs: answers
    came up to three times slower, and on a machine loaded five times over an 8-token
    answer of SmolLM2 took 14-28 s, not 0.3 s. libgomp reads ``GOMP_SPINCOUNT`` once, when it is
    loaded (with libggml: the device probe's load, or llama-cpp-python's import), so it is
    set for that moment only: the host's own OpenMP libraries and child processes keep
    their defaults. A setting of the user's (``GOMP_SPINCOUNT``, ``OMP_WAIT_POLICY``) stays.
    """
    with _SPIN_LOCK:  # another thread's setting is not the user's
        if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
            yield
            return
        os.environ["GOMP_SPINCOUNT"] = str(OPENMP_SPINS)
        try:
            yield
        finally:
            os.environ.pop("GOMP_SPINCOUNT", None)


class _NotLoaded(Exception):
    """libggml cannot be loaded or lacks a call; the message says why."""


def _read(library: GgmlLibrary, *, ask_cuda: bool, memory: bool) -> Iterator[GgmlDevice]:
    for index in range(library.count()):
        device = library.get(index)
        if not device:
            continue
        name, kind = library.name(device), library.type(device)
        free = total = None
        cuda = name.startswith("CUDA") and name[4:].isdigit()  # CUDA0, CUDA1...
        if memory and (ask_cuda or not cuda):
            free, total = library.memory(device)
        yield GgmlDevice(name=name, description=library.description(device),
                         type=_TYPES[kind] if 0 <= kind < len(_TYPES) else "unknown",
                         free_bytes=free, total_bytes=total)


class _LoadedGgml:
    """GgmlLibrary over libggml and libggml-base, where the per-device calls are defined."""

    def __init__(self, ggml: Any, base: Any, where: Path) -> None:
        import ctypes

        # Windows finds a symbol only in the DLL that defines it: ggml-base, for most of these.
        libraries = [lib for lib in (base, ggml) if lib is not None]

        def function(symbol: str, restype: Any, *argtypes: Any) -> Any:
            for lib in libraries:
                try:
                    call = lib[symbol]
                except AttributeError:  # defined in the other one
                    continue
                call.restype, call.argtypes = restype, list(argtypes)
                return call
            raise _NotLoaded(f"the libggml in {where} has no {symbol}: "
                             "pip install -U llama-cpp-python")

        device, size_p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)
        self._count = function("ggml_backend_dev_count", ctypes.c_size_t)
        self._get = function("ggml_backend_dev_get", device, ctypes.c_size_t)
        self._name = function("ggml_backend_dev_name", ctypes.c_char_p, device)
        self._description = function("ggml_backend_dev_description", ctypes.c_char_p, device)
        self._type = function("ggml_backend_dev_type", ctypes.c_int, device)
        self._memory = function("ggml_backend_dev_memory", None, device, size_p, size_p)

    def count(self) -> int:
        return int(self._count())

    def get(self, index: int) -> Any:
        return self._get(index)

    def name(self, device: Any) -> str:
        return _text(self._name(device))

    def description(self, device: Any) -> str:
        return _text(self._description(device))

    def type(self, device: Any) -> int:
        return int(self._type(device))

    def memory(self, device: Any) -> tuple[int, int]:
        import ctypes

        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self._memory(device, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw else ""


# A shared library is loaded once per process whatever Python does, so its handle is
# process state too: one per folder (LLAMA_CPP_LIB_PATH may name another).
_loaded: dict[Path, _LoadedGgml] = {}
_loaded_lock = threading.Lock()


def _load() -> _LoadedGgml:
    folder = _library_folder()
    with _loaded_lock:
        if folder not in _loaded:
            _loaded[folder] = _open(folder)
        return _loaded[folder]


def _library_folder() -> Path:
    """Where llama-cpp-python loads its libraries from: LLAMA_CPP_LIB_PATH, else its lib/."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override is not None:
        if not os.path.isdir(override):
            raise _NotLoaded(f"LLAMA_CPP_LIB_PATH={override} is not a folder: set it to the "
                             "folder that holds llama.cpp's libraries, or unset it")
        return Path(override).resolve()
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise _NotLoaded('llama-cpp-python is not installed: pip install "zwaif-fallback[gguf]"')
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "lib"


def _library_file(folder: Path, stem: str) -> Path | None:
    """The file llama-cpp-python would load for ``stem``, with the names it tries, in its order."""
    if sys.platform == "win32":
        names = [f"{stem}.dll", f"lib{stem}.dll"]
    elif sys.platform == "darwin":
        names = [f"lib{stem}.so", f"lib{stem}.dylib"]
    else:
        names = [f"lib{stem}.so"]
    return next((folder / n for n in names if (folder / n).exists()), None)


def _open(folder: Path) -> _LoadedGgml:
    import ctypes

    ggml_file = _library_file(folder, "ggml")
    if ggml_file is None:
        raise _NotLoaded(f"llama.cpp's libggml is not in {folder}: "
                         "pip install --force-reinstall llama-cpp-python")
    share_libstdcxx()
    if sys.platform == "win32":
        # As llama-cpp-python does: ggml.dll's own dependencies, and the CUDA or HIP runtime.
        runtimes = [os.environ[v] for v in ("CUDA_PATH", "HIP_PATH") if os.environ.get(v)]
        for extra in [str(folder)] + [os.path.join(r, sub) for r in runtimes for sub in ("bin", "lib")]:
            if os.path.isdir(extra):
                os.add_dll_directory(extra)
    base_file = _library_file(folder, "ggml-base")  # older builds have no separate base
    try:
        with threads_spin_briefly():  # libggml loads libgomp, which reads it then
            base = ctypes.CDLL(str(base_file)) if base_file else None
            ggml = ctypes.CDLL(str(ggml_file))
    except OSError as exc:
        raise _NotLoaded(f"could not load llama.cpp's {ggml_file.name} from {folder} ({exc})") from None
    return _LoadedGgml(ggml, base, folder)
