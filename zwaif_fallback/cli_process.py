"""The CLI's process as its terminal and the system see it: stdout that cannot take every
character, a reader that went away, a failure nothing foresaw, and Ctrl+C or SIGTERM
stopping a command that serves until then."""

from __future__ import annotations

import errno
import importlib.util
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["crashed", "escape_what_stdout_cannot_encode", "reader_went_away", "retries_to_the_log",
           "until_stopped"]

log = logging.getLogger("zwaif_fallback.cli")


def crashed(command: str, exc: Exception) -> int:
    """A failure nothing foresaw: one line for the person, the traceback in the log."""
    log.exception("%s crashed", command)
    print(f"error: unexpected failure ({type(exc).__name__}: {exc}); "
          "details in Logs/zwaif_fallback.log", file=sys.stderr)
    return 1


def retries_to_the_log() -> None:
    """Where structlog is installed, stamina logs each retry through it rather than through
    ``logging``, and structlog left unconfigured prints on stdout: a line per retry in the
    middle of ``chat --json``. The CLI is a host of its own, so it sends them to ``logging``
    (the log file, ``setup_logging``) whatever is installed; a host that embeds the library
    keeps the hooks it chose."""
    if importlib.util.find_spec("structlog") is None:
        return  # stamina's default is logging already; nothing to import
    from stamina.instrumentation import LoggingOnRetryHook, PrometheusOnRetryHook, set_on_retry_hooks

    counted = [PrometheusOnRetryHook] if importlib.util.find_spec("prometheus_client") else []
    set_on_retry_hooks([*counted, LoggingOnRetryHook])


def reader_went_away(exc: OSError) -> bool:
    """Whether ``exc`` is a write to a pipe whose reader has closed it: BrokenPipeError, or on
    Windows OSError EINVAL (CPython's subprocess reads it so too, bpo-19612), which made
    ``zwaif-fallback models | more`` an "unexpected failure" once ``more`` was quit. An EINVAL
    that names a file, or with stdout a console, is some other call's."""
    if isinstance(exc, BrokenPipeError):
        return True
    return (os.name == "nt" and exc.errno == errno.EINVAL and exc.filename is None
            and not sys.stdout.isatty())


def escape_what_stdout_cannot_encode() -> None:
    """A character stdout's encoding lacks is written as ``\\u30e2``, not raised.

    On Windows, stdout redirected to a file or a pipe (a host reading it) is in the ANSI code
    page, cp1252 and the like, unless PYTHONUTF8 or PYTHONIOENCODING says otherwise: a model
    named in Japanese, or an emoji in an answer, then raised UnicodeEncodeError and the
    command failed. Python writes stderr this way already; the encoding stays the reader's.
    """
    stream = sys.stdout
    if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
        stream.reconfigure(errors="backslashreplace")


def until_stopped(serve: Callable[[], None]) -> None:
    """Run ``serve`` until Ctrl+C or SIGTERM.

    SIGTERM is made a KeyboardInterrupt, so that the process unwinds as for Ctrl+C and the
    manager is closed (models unloaded, history written) instead of dying by the signal's
    default action. uvicorn stops gracefully on SIGTERM too, then raises it again once it has
    restored this handler.
    """
    main = threading.current_thread() is threading.main_thread()  # signals are the main thread's
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        serve()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
