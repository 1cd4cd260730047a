"""How ``zwaif-fallback``'s command line is read: the subcommands and their arguments.

``cli_commands.py`` registers each command's handler with ``@command(name, help,
arguments)``; ``build_parser`` makes the parser from that registry, with the global options before the
command and ``--json`` after each command's own. Bad arguments are one line on stderr and
exit status 2, as every other bad input is. The argument types here refuse a value as it
is typed, naming the range it must be in.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NoReturn

from .errors import InvalidSettings
from .settings import FallbackSettings
from .settings_fields import bounds

if TYPE_CHECKING:
    from .manager import FallbackManager

__all__ = ["COMMANDS", "Command", "Handler", "build_parser", "command", "context_size", "parse_assignment",
           "port_number", "positive_int", "setting_bounds"]


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line on stderr, like every other error, and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see: {self.prog} --help)\n")


Handler = Callable[["FallbackManager", argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, the arguments it takes, and its handler."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Handler
    json_flag: bool = True  # takes --json, after its own arguments
    long_running: bool = False  # keeps the manager's background work running


#: every subcommand, in the order ``--help`` lists them
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None,
            *, json_flag: bool = True, long_running: bool = False) -> Callable[[Handler], Handler]:
    """Register the decorated handler as the subcommand ``name``; ``arguments(parser)`` adds
    its own arguments (define it right above the handler)."""

    def register(run: Handler) -> Handler:
        COMMANDS[name] = Command(help=help, arguments=arguments or _no_arguments, run=run,
                                 json_flag=json_flag, long_running=long_running)
        return run

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="zwaif-fallback",
        description="Local-LLM fallback for chatbot hosts: models, fit, failover.")
    parser.add_argument("--models-dir", metavar="DIR", help="where to discover models")
    parser.add_argument("--settings-file", metavar="F", help="the saved settings file")
    parser.add_argument("--metrics-port", type=port_number, metavar="P",
                        help="serve Prometheus metrics on 127.0.0.1:P while the command runs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        sub = subparsers.add_parser(name, help=cmd.help)
        cmd.arguments(sub)
        if cmd.json_flag:
            sub.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def context_size(text: str) -> int:
    """--ctx: within the n_ctx setting's range, so that what `check` accepts a load can use."""
    value = _whole_number(text)
    low, high = setting_bounds("n_ctx")
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(
            f"{value} is out of range: use {low:g} to {high:g}, the range of the n_ctx setting")
    return value


def setting_bounds(name: str) -> tuple[float, float]:
    limits = bounds(FallbackSettings.model_fields[name])
    assert limits is not None, f"{name} has no range"
    return limits


def port_number(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port: use 0 to 65535")
    return value


def parse_assignment(item: str) -> tuple[str, str]:
    """``--set KEY=VALUE``: the key and the value, stripped."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise InvalidSettings(f"--set expects KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()
