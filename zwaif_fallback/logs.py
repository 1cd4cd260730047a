"""Logging for the entry points (CLI, UI). The library itself only creates loggers."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path

__all__ = ["setup_logging"]

LOG_FILE = "zwaif_fallback.log"
_configured: set[str] = set()


def setup_logging(log_dir: str | Path | None = None, *, level: int = logging.INFO,
                  max_bytes: int = 5 * 1024 * 1024, backups: int = 3) -> Path | None:
    """Send ``zwaif_fallback`` logs to a rotating file in ``log_dir`` (default ``Logs``).

    Returns the log file, or None when the folder cannot be written (the host
    goes on without a log file; a warning goes to stderr).
    """
    directory = Path(log_dir or os.environ.get("FALLBACK_LOG_DIR") or "Logs")
    path = directory / LOG_FILE
    logger = logging.getLogger("zwaif_fallback")
    logger.setLevel(min(logger.level or level, level))
    if str(path.resolve()) in _configured:
        return path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=True)
        with open(path, "a", encoding="utf-8"):
            pass  # fail now, not at the first log line, when the folder is not writable
    except OSError as exc:
        logging.getLogger(__name__).warning("logging to %s is off: %s", directory, exc)
        return None
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    logger.addHandler(handler)
    _configured.add(str(path.resolve()))
    return path
