"""Logging for the entry points (CLI, UI). The library itself only creates loggers."""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

__all__ = ["setup_logging"]

LOG_FILE = "zwaif_fallback.log"
_configured: set[str] = set()


class _RotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that writes on when the log file cannot be renamed.

    Windows refuses to rename a file that another process holds open, and a ``serve`` and a
    CLI command started in the same folder share one log file. The stdlib handler then lost
    every record from there on, printed a traceback on stderr for each, and shifted the
    backups once more each time (deleting the oldest). Here the file is moved aside first,
    and the backups move only when that worked; else, or when a backup is held open, the
    records go on into the same file, and the next record tries again.
    """

    def doRollover(self) -> None:
        if self.backupCount < 1:
            super().doRollover()
            return
        if self.stream:
            self.stream.close()
            self.stream = None  # reopened by the next record
        aside = f"{self.baseFilename}.rotating"
        try:
            os.replace(self.baseFilename, aside)
        except OSError:
            return
        try:
            for i in range(self.backupCount - 1, 0, -1):
                older = f"{self.baseFilename}.{i}"
                if os.path.exists(older):
                    os.replace(older, f"{self.baseFilename}.{i + 1}")
            os.replace(aside, f"{self.baseFilename}.1")
        except OSError:  # a backup is held open (a viewer): the records go on where they were
            try:
                os.replace(aside, self.baseFilename)
            except OSError:
                pass
        if not self.delay:
            self.stream = self._open()


def setup_logging(log_dir: str | Path | None = None, *, level: int = logging.INFO,
                  max_bytes: int = 5 * 1024 * 1024, backups: int = 3) -> Path | None:
    """Send ``zwaif_fallback`` logs, and the retries stamina schedules, to a rotating file in
    ``log_dir`` (default ``Logs``).

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
        # A path that is not UTF-8 (a model file from a cp1252 zip) is logged with \x escapes,
        # not dropped with a "Logging error" traceback on stderr.
        handler = _RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups,
                                       encoding="utf-8", errors="backslashreplace", delay=True)
        with open(path, "a", encoding="utf-8"):
            pass  # fail now, not at the first log line, when the folder is not writable
    except OSError as exc:
        # on stderr itself: the package's NullHandler keeps records from Python's last resort
        print(f"logging to {directory} is off: {exc}", file=sys.stderr)
        return None
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    logger.addHandler(handler)
    handler.addFilter(_RetryDetails())
    logging.getLogger("stamina").addHandler(handler)  # the retries of the calls to servers
    _configured.add(str(path.resolve()))
    return path


class _RetryDetails(logging.Filter):
    """Puts the details of stamina's retry records in their line.

    stamina logs each retry it schedules as the bare message "stamina.retry_scheduled", its
    details in fields a formatter leaves out, to its own logger. With no handler there,
    Python's last resort printed it on stderr, a line per retry beside the CLI's one-line
    errors and its --json. Its hooks are left as they are: a host may have set its own.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == "stamina.retry_scheduled":
            fields = vars(record)
            record.msg = "retry %s in %s s after %s"
            record.args = tuple(fields.get(f"stamina.{name}")
                                for name in ("retry_num", "wait_for", "caused_by"))
        return True
