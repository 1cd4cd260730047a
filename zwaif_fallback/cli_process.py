"""The CLI's process as its terminal and the system see it: stdout that cannot take every
character, a reader that went away, a failure nothing foresaw, and Ctrl+C, SIGTERM or SIGHUP
stopping a command."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["STOP_SIGNALS", "crashed", "escape_what_stdout_cannot_encode", "reader_went_away",
           "retries_to_the_log", "stopped_as_by_ctrl_c", "until_stopped"]

log = logging.getLogger("zwaif_fallback.cli")


def crashed(command: str, exc: Exception) -> int:
    """A failure nothing foresaw: one line for the person, the traceback in the log."""
    log.exception("%s crashed", command)
    files = [h.baseFilename for h in logging.getLogger("zwaif_fallback").handlers
             if isinstance(h, logging.FileHandler)]
    where = f"details in {files[0]}" if files else "no log file was written (is FALLBACK_LOG_DIR writable?)"
    print(f"error: unexpected failure ({type(exc).__name__}: {exc}); {where}", file=sys.stderr)
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
    """Run ``serve`` until Ctrl+C, SIGTERM or SIGHUP (``stopped_as_by_ctrl_c``). uvicorn stops
    gracefully on SIGTERM too, then raises it again once it has restored this handler."""
    try:
        with stopped_as_by_ctrl_c():
            serve()
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)


#: What stops a command as Ctrl+C does: a supervisor (systemd, ``timeout``, a host that started
#: it) sends SIGTERM, a terminal closed under it SIGHUP (POSIX only).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def stopped_as_by_ctrl_c() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise KeyboardInterrupt, so that the process unwinds as
    for Ctrl+C: the manager is closed (models unloaded, history written) and a monitoring
    session's report is shown and saved, instead of dying by the signal's default action."""
    if threading.current_thread() is not threading.main_thread():  # signals are the main thread's
        yield
        return
    # One ignored stays ignored: `nohup zwaif-fallback serve &` outlives its terminal
    previous = {sig: signal.signal(sig, _hang_up if sig != signal.SIGTERM else _interrupt)
                for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _hang_up(signum: int, frame: Any) -> None:
    """A hangup is a SIGTERM: serve's uvicorn then ends its answers with the shutting-down
    error a host can read (it handles SIGTERM, not SIGHUP), as for a service manager's stop."""
    os.kill(os.getpid(), signal.SIGTERM)
