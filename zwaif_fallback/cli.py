"""``zwaif-fallback``: the command line. Every command has ``--json``.

Exit status: 0 on success, 1 when an operation failed, 2 for bad input, 130 when stopped
with Ctrl-C, 141 when the reader of stdout went away (``| head``), as for a program that
SIGPIPE ends. Errors are one line on stderr; the traceback goes to the log file only.

Each command is one handler in ``cli_commands``, registered with ``@command(name, help,
arguments)`` (the registry and the parser made from it are ``cli_parser``'s), where
``arguments(parser)`` adds its own options and sits right above the handler; ``--json``
is added after them unless ``json_flag=False``. This module runs the one chosen: its
manager, its warnings, and what it raises turned into an exit status.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from .cli_commands import warn_preferred  # importing it registers every command in COMMANDS
from .cli_parser import COMMANDS, build_parser
from .cli_process import (
    crashed,
    escape_what_stdout_cannot_encode,
    reader_went_away,
    retries_to_the_log,
    stopped_as_by_ctrl_c,
)
from .cli_text import error_json, print_json
from .errors import FallbackError
from .logs import setup_logging
from .manager import FallbackManager
from .settings import FallbackSettings

__all__ = ["main"]

log = logging.getLogger("zwaif_fallback.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    escape_what_stdout_cannot_encode()
    args = build_parser().parse_args(argv)
    setup_logging()
    retries_to_the_log()
    overrides = {}
    if args.models_dir:
        overrides["models_dir"] = args.models_dir
    if args.settings_file:
        overrides["settings_file"] = args.settings_file
    cmd = COMMANDS[args.command]
    try:
        manager = FallbackManager(FallbackSettings(**overrides), background=cmd.long_running)
        for problem in [*manager.settings.problems, *manager.settings.folder_problems()]:
            print(f"warning: {problem}", file=sys.stderr)
        if cmd.long_running:  # serve and ui: said at start, not found out at the first fallback
            warn_preferred(manager)
        with manager:
            stop_metrics = manager.metrics.serve(args.metrics_port) if args.metrics_port else None
            try:
                with stopped_as_by_ctrl_c():
                    status = cmd.run(manager, args)
                sys.stdout.flush()  # here, so that a reader gone away is seen here
                return status
            finally:
                if stop_metrics is not None:
                    stop_metrics()
    except OSError as exc:
        if not reader_went_away(exc):
            return crashed(args.command, exc)
        # The reader of stdout went away (`| head -1`): nothing more can be shown, and that is
        # not a failure of the command. Python's docs: point stdout at devnull, or its flush at
        # exit fails again. 141 is what a shell reports for a program that SIGPIPE ended.
        log.info("%s: stdout was closed by its reader", args.command)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except FallbackError as exc:
        log.info("%s failed: %s", args.command, exc)
        print(f"error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):  # a script reading stdout gets JSON, failure or not
            print_json({"error": error_json(exc)})
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        return crashed(args.command, exc)
