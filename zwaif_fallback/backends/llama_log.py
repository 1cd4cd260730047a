"""llama.cpp's own log, which it writes through one process-wide callback: kept while a load
runs, to say why it failed (``LlamaLog``), and sent to ``logging`` between loads."""

from __future__ import annotations

import logging
import re
from collections import deque
from typing import Any

__all__ = ["LlamaLog"]

log = logging.getLogger(__name__)

_OUT_OF_MEMORY = re.compile(r"out of memory|insufficient memory|failed to allocate|unable to allocate|"
                            r"OutOfDeviceMemory|OutOfHostMemory|cannot allocate memory|bad_alloc",
                            re.IGNORECASE)
_FAILED = re.compile(r"error|fail|unable|cannot|invalid", re.IGNORECASE)


class LlamaLog:
    """llama.cpp's log while a load runs, kept to say why a load failed.

    llama-cpp-python sends the log to stderr (muted when ``verbose=False``), so the cause
    of a failed load (``cudaMalloc failed: out of memory``) is otherwise lost. The log
    callback is process-wide: loads are serialised by the pool, and the log between loads
    (``_resting_log``) is put back afterwards. Levels are not trusted (their numbering
    changed between ggml versions): the lines are matched by what they say.
    """

    def __init__(self, llama_cpp: Any) -> None:
        self._llama_cpp = llama_cpp
        self._lines: deque[str] = deque(maxlen=200)

        def keep(_level: int, text: bytes, _user: Any) -> None:
            self._lines.append(text.decode("utf-8", errors="replace").strip())

        self._callback = llama_cpp.llama_log_callback(keep)  # kept alive while installed

    def __enter__(self) -> LlamaLog:
        self._llama_cpp.llama_log_set(self._callback, None)
        return self

    def __exit__(self, *exc: object) -> None:
        self._llama_cpp.llama_log_set(_resting_log(self._llama_cpp), None)

    def out_of_memory(self) -> str | None:
        """The first line that says an allocation failed, or None."""
        return next((line for line in self._lines if _OUT_OF_MEMORY.search(line)), None)

    def failure(self) -> str | None:
        """The last line that says something failed, or None."""
        return next((line for line in reversed(self._lines) if _FAILED.search(line)), None)


_resting: list[Any] = []  # the one callback made, kept alive for as long as llama.cpp may call it


def _resting_log(llama_cpp: Any) -> Any:
    """llama.cpp's log between loads: to ``logging``, as debug lines. A failure in a decode
    is raised by llama-cpp-python, and reported with its message (``TargetFailed``); the log
    lines of one that a cancel aborted would only be noise.

    llama-cpp-python's own callback reads ggml's log levels by their old numbers, so with
    ``verbose=False`` it printed the warnings of the ggml it ships as errors, on stderr: a
    "decode: removing memory module entries" line on serve's console for every answer a
    host stopped. Where llama-cpp-python's logger is set to show everything (a ``verbose``
    Llama elsewhere in the process), its own callback stays.
    """
    from llama_cpp import _logger

    if _logger.logger.level <= logging.DEBUG:
        return _logger.llama_log_callback
    if not _resting:
        def to_logging(_level: int, text: bytes, _user: Any) -> None:
            line = text.decode("utf-8", errors="replace").strip()
            if line:
                log.debug("llama.cpp: %s", line)

        _resting.append(llama_cpp.llama_log_callback(to_logging))
    return _resting[0]
