"""The commands of ``zwaif-fallback``: each one's arguments, then its handler.

Each handler is registered with ``@command(name, help, arguments)`` (the registry and the
parser made from it are cli_parser's) when this module is imported; cli.py's ``main``
imports it, builds the parser, and runs the chosen handler on a manager, turning what it
raises into an exit status. A handler calls the manager, and prints its result with
cli_text's formatting or, under ``--json``, as JSON.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from .cli_parser import (
    command,
    context_size,
    parse_assignment,
    port_number,
    positive_int,
    setting_bounds,
)
from .cli_process import until_stopped
from .cli_text import (
    format_benchmarks,
    format_chat_footer,
    format_check,
    format_health,
    format_models,
    format_monitor_sessions,
    format_monitor_summary,
    format_optimization,
    format_pull_progress,
    format_recommendations,
    format_sample,
    format_settings,
    format_status,
    print_json,
)
from .errors import (
    BackendUnavailable,
    IncompatibleModel,
    InvalidModelFile,
    InvalidSettings,
    ModelLoadError,
)
from .fit import KV_TYPES
from .monitor import DURATION_RANGE_S, INTERVAL_RANGE_S, session_problems

if TYPE_CHECKING:
    from .manager import FallbackManager
    from .pull import PullProgress

__all__ = ["warn_preferred"]

log = logging.getLogger("zwaif_fallback.cli")


def _ui_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (anything but loopback needs FALLBACK_UI_AUTH)")
    parser.add_argument("--port", type=port_number, default=7860)


def _show(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> int:
    """What a command found: ``data`` as JSON with ``--json``, else ``text()`` for a person."""
    if args.json:
        return print_json(data)
    print(text())
    return 0


@command("ui", "serve the three settings tabs as a standalone web UI", _ui_arguments,
         json_flag=False, long_running=True)
def cmd_ui(manager: FallbackManager, args: argparse.Namespace) -> int:
    try:
        from webui.app import launch, wait_for_ctrl_c
    except ImportError as exc:
        raise BackendUnavailable(f'the web UI needs gradio: pip install "zwaif-fallback[ui]" ({exc})'
                                 ) from None
    def serve_ui() -> None:
        url = launch(manager, host=args.host, port=args.port, block=False)
        print(f"zwaif-fallback UI: {url}  (metrics at {url.rstrip('/')}/metrics; Ctrl+C stops it)",
              flush=True)
        wait_for_ctrl_c()

    until_stopped(serve_ui)  # SIGTERM is handled from before the URL is printed: a caller may stop it then
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (anything but loopback needs FALLBACK_API_KEY, "
                             "and FALLBACK_UI_AUTH for the tabs)")
    parser.add_argument("--port", type=port_number, default=5001)
    parser.add_argument("--no-ui", action="store_true", help="serve the API without the tabs at /")


@command("serve", "OpenAI-compatible /v1 in front of the main API, with /health, /metrics and the tabs",
         _serve_arguments, json_flag=False, long_running=True)
def cmd_serve(manager: FallbackManager, args: argparse.Namespace) -> int:
    from .listening import need_web_stack
    from .server import run

    need_web_stack()

    mount = None
    if not args.no_ui:
        try:
            from webui.app import mount_tabs
        except ImportError as exc:
            raise BackendUnavailable(f'the tabs need gradio: pip install "zwaif-fallback[ui]" ({exc}); '
                                     "or serve the API alone with --no-ui") from None

        def mount(app: Any) -> None:
            mount_tabs(app, manager, host=args.host)

    until_stopped(partial(run, manager, host=args.host, port=args.port, mount=mount,
                           announce=partial(print, flush=True)))
    return 0


@command("status", "GPUs, VRAM, RAM, CPU and the probe used")
def cmd_status(manager: FallbackManager, args: argparse.Namespace) -> int:
    status = manager.system_status()
    return _show(args, status.model_dump(exclude={"notes"}) | {"notes": status.notes},
                 lambda: format_status(status))


@command("models", "discovered models, invalid ones with the reason")
def cmd_models(manager: FallbackManager, args: argparse.Namespace) -> int:
    models = manager.discover_models()
    return _show(args, [m.model_dump() for m in models], lambda: format_models(models))


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a model name (see 'models') or a file path")
    parser.add_argument("--ctx", type=context_size, metavar="N",
                        help="context size, {:g} to {:g}".format(*setting_bounds("n_ctx")))
    parser.add_argument("--gpu-layers", type=int, metavar="K",
                        help="llama.cpp's n_gpu_layers (-1 = all); default: the most that fit")
    parser.add_argument("--flash-attn", action="store_true", help="estimate with flash attention")
    parser.add_argument("--kv-type", type=str.lower, choices=KV_TYPES, default="f16", help="KV cache type")
    parser.add_argument("--free-vram-mb", type=float, metavar="X",
                        help="what if the GPU had X MiB free")
    parser.add_argument("--no-dry-run", action="store_true",
                        help="skip llama.cpp's own dry run of the plan (GGUF; ~0.4 s)")


@command("check", "memory estimate and fit verdict for a model", _check_arguments)
def cmd_check(manager: FallbackManager, args: argparse.Namespace) -> int:
    result = manager.check_compatibility(
        args.model, n_ctx=args.ctx, gpu_layers=args.gpu_layers, flash_attn=args.flash_attn,
        kv_type=args.kv_type, free_vram_mb=args.free_vram_mb, dry_run=not args.no_dry_run)
    return _show(args, result.model_dump(), lambda: format_check(result))


def _recommend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="REPO/FILE.gguf, a repo id, or the URL of a .gguf file; "
                             "default: the curated list")
    parser.add_argument("--ctx", type=context_size, metavar="N",
                        help="context size to plan for, {:g} to {:g}".format(*setting_bounds("n_ctx")))


@command("recommend", "which GGUF models on the Hugging Face Hub fit this machine, before downloading",
         _recommend_arguments)
def cmd_recommend(manager: FallbackManager, args: argparse.Namespace) -> int:
    results = manager.recommend_models(args.models or None, n_ctx=args.ctx)
    return _show(args, [r.model_dump() for r in results], lambda: format_recommendations(results))


def _pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="REPO[/FILE]",
                        help="REPO/FILE.gguf (or .safetensors), a repo id (its Q4_K_M file), the URL "
                             "of a .gguf file, or a file name from the recommend list")


@command("pull", "download one model from the Hugging Face Hub, verified; Ctrl-C keeps the part "
                 "downloaded for the next pull", _pull_arguments)
def cmd_pull(manager: FallbackManager, args: argparse.Namespace) -> int:
    model = manager.pull_model(args.model, progress=_print_progress)
    if args.json:
        return print_json(model.model_dump())
    print(f"{model.name}  {model.path}" + ("" if model.valid else f"  ({model.error})"))
    return 0


def _print_progress(progress: PullProgress) -> None:
    print(format_pull_progress(progress), file=sys.stderr, flush=True)


def _chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", metavar="PROMPT")
    parser.add_argument("--model", metavar="NAME", help="the local model to fall back to first")
    parser.add_argument("--max-tokens", type=positive_int, default=256, metavar="N")


@command("chat", "one answer through the failover chain", _chat_arguments)
def cmd_chat(manager: FallbackManager, args: argparse.Namespace) -> int:
    if args.model:
        try:
            manager.switch_model(args.model, persist=False)
        except (InvalidModelFile, IncompatibleModel, ModelLoadError) as exc:  # an unknown name stays an error
            # the model to fall back to first: the chain falls back past it, as in a host
            print(f"warning: {exc}; the chat goes on without it", file=sys.stderr)
    messages = [{"role": "user", "content": args.prompt}]
    if args.json:
        answer = manager.chat(messages, max_tokens=args.max_tokens).model_dump()
        return print_json(answer | _history_said(manager))
    try:
        for piece in manager.stream_chat(messages, max_tokens=args.max_tokens):
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:  # Ctrl+C too: its "interrupted" goes on a line of its own
        sys.stdout.write("\n")
    done = manager.last_result
    if done is not None:
        print(format_chat_footer(done), file=sys.stderr)
    _history_said(manager)
    return 0


def _history_said(manager: FallbackManager) -> dict[str, str | None]:
    """For a command that saves history: a line on stderr when it was not saved (or the file
    was moved aside), and ``history_problem`` for its --json (None when all was saved)."""
    lines = [*manager.store_notices(), *filter(None, [manager.store_problem()])]
    for line in lines:
        print(f"warning: history not saved: {line}" if line.startswith("history database unavailable")
              or line.startswith("history is not") else f"warning: {line}", file=sys.stderr)
    return {"history_problem": "; ".join(lines) or None}


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("model", nargs="?", metavar="MODEL", help="a model name")
    target.add_argument("--all", action="store_true", help="every compatible model")
    parser.add_argument("--prompt", metavar="P", help="the user message to answer")


@command("bench", "measure speed, memory and quality of models", _bench_arguments)
def cmd_bench(manager: FallbackManager, args: argparse.Namespace) -> int:
    def progress(fraction: float, message: str) -> None:
        if not args.json:
            print(f"\r[{fraction:4.0%}] {message[:70]:<70}", end="", file=sys.stderr, flush=True)

    if args.all:
        results = manager.benchmark_all(args.prompt, progress)
    else:
        results = [manager.benchmark(args.model, args.prompt, progress)]
    failed = not all(r.ok or (r.error or "").startswith("skipped") for r in results)
    if args.json:  # the same status either way: a script reads it, not the text
        said = _history_said(manager)
        print_json([r.model_dump(exclude={"checks"}) | said for r in results])
        return int(failed)
    print(file=sys.stderr)
    print(format_benchmarks(results))
    _history_said(manager)
    return int(failed)


def _optimize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="rank only, switch nothing")


@command("optimize", "rank the models and switch to the best", _optimize_arguments)
def cmd_optimize(manager: FallbackManager, args: argparse.Namespace) -> int:
    result = manager.optimize(apply=not args.dry_run)
    return _show(args, result.model_dump(), lambda: format_optimization(result))


@command("health", "health score, factors and recommendations")
def cmd_health(manager: FallbackManager, args: argparse.Namespace) -> int:
    report = manager.health()
    return _show(args, report.model_dump(), lambda: format_health(report))


def _monitor_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--duration", type=float, metavar="S",
                      help="{:g} to {:g} seconds".format(*DURATION_RANGE_S))
    what.add_argument("--history", type=int, nargs="?", const=20, metavar="N",
                      help="show the last N saved sessions (20) instead of sampling")
    parser.add_argument("--interval", type=float, metavar="I",
                        help="seconds between samples, {:g} to {:g} (1)".format(*INTERVAL_RANGE_S))


@command("monitor", "sample VRAM, RAM, CPU and tokens/s for a while", _monitor_arguments)
def cmd_monitor(manager: FallbackManager, args: argparse.Namespace) -> int:
    if args.history is not None:
        return _monitor_history(manager, args)
    # Checked here as well as by the session, so that the message names the options typed.
    interval = args.interval if args.interval is not None else 1.0
    problems = session_problems(args.duration, interval, names=("--duration", "--interval"))
    if problems:
        raise InvalidSettings("; ".join(problems), problems=problems)
    manager.start_monitoring(args.duration, interval)
    interrupted = False
    try:
        while not manager.wait_monitoring(timeout=interval):
            if not args.json:
                latest = manager.monitoring_report().samples[-1:]
                for s in latest:
                    print("\r" + format_sample(s), end="", file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # Ctrl-C ends the session early; its report is still shown
        interrupted = True
    report = manager.stop_monitoring()
    if args.json:
        print_json(report.model_dump() | _history_said(manager))
    else:
        print(file=sys.stderr)
        print(format_monitor_summary(report))
        _history_said(manager)
    return 130 if interrupted else 0


def _monitor_history(manager: FallbackManager, args: argparse.Namespace) -> int:
    """``monitor --history N``: the saved sessions, newest first."""
    if args.history < 1:
        raise InvalidSettings(f"--history must be 1 or more; got {args.history}")
    if args.interval is not None:
        raise InvalidSettings("--interval goes with --duration: --history shows saved sessions")
    sessions = manager.monitor_history(limit=args.history)
    problem = manager.store_problem()  # a database that cannot be read reads as no sessions
    if problem:
        print(f"warning: history could not be read: {problem}", file=sys.stderr)
    return _show(args, {"sessions": sessions, "history_problem": problem},
                 lambda: format_monitor_sessions(sessions))


def warn_preferred(manager: FallbackManager, *, logged: bool = False) -> None:
    """A preferred_model no model has (a typo) or one that is unusable, on stderr and in the log."""
    problem = manager.preferred_problem()
    if problem is not None:
        if not logged:
            log.warning("%s", problem)
        print(f"warning: {problem}", file=sys.stderr)


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="save a setting (repeatable)")
    parser.add_argument("--reset", action="store_true", help="forget every saved setting")


@command("settings", "show or change the saved settings", _settings_arguments)
def cmd_settings(manager: FallbackManager, args: argparse.Namespace) -> int:
    changes = dict(parse_assignment(item) for item in args.set or ())
    if args.reset:
        manager.settings.check(**changes)  # first: a refused value must not cost the saved ones
        manager.reset_settings()
    if changes:
        manager.update_settings(**changes)
        if "preferred_model" in changes:
            warn_preferred(manager, logged=True)  # update_settings logged it
        for problem in manager.settings.folder_problems():  # saved, as the tabs would not
            if problem.split(" ", 1)[0] in changes:
                print(f"warning: {problem}", file=sys.stderr)
    settings = manager.settings
    if args.json:
        return print_json({
            "settings": settings.public_dict(),
            "origins": {name: settings.origin(name) for name in type(settings).model_fields},
            "settings_file": str(settings.settings_file),
            "problems": settings.problems,
        })
    print(format_settings(settings))
    return 0
