"""Self-check of this installation of zwaif-fallback, feature by feature.

    python test_advanced_fallback_features.py [--json] [--models-dir DIR]

Each feature prints one line, PASS or FAIL, with what was measured; then a
summary. The exit status is 1 when a feature failed. Nothing the user would
notice changes: history, settings and logs go to a temporary folder, the
settings check works on a copy of the real settings file, and the model
switch is not saved as the preferred model.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zwaif_fallback import FallbackError, FallbackManager, FallbackSettings

Check = Callable[[FallbackManager], str]


def check_probes(manager: FallbackManager) -> str:
    status = manager.system_status(refresh=True)
    gpus = ", ".join(f"{g.name} {g.vram_free_mb} MiB free" for g in status.gpus) or "no GPU"
    return (f"probe {status.vram_source}; {gpus}; RAM {status.ram_available_mb} of "
            f"{status.ram_total_mb} MiB free; {status.cpu_count} CPUs")


def check_discovery(manager: FallbackManager) -> str:
    start = time.perf_counter()
    models = manager.discover_models(refresh=True)
    valid = [m for m in models if m.valid]
    if not valid:
        raise AssertionError("no usable model found: put a .gguf file in the models folder")
    return (f"{len(models)} models ({len(valid)} usable) in {time.perf_counter() - start:.2f} s: "
            + ", ".join(m.name for m in valid[:5]) + (" ..." if len(valid) > 5 else ""))


def check_compatibility(manager: FallbackManager) -> str:
    verdicts = []
    for model in manager.discover_models():
        if model.usable:
            fit = manager.check_compatibility(model.name)
            verdicts.append(f"{model.name}: {fit.verdict} ({fit.vram_mb:.0f} MiB VRAM, "
                            f"{fit.ram_mb:.0f} MiB RAM)")
    if not verdicts:
        raise AssertionError("no model to check")
    return "; ".join(verdicts)


def _best(manager: FallbackManager) -> str:
    ranking = manager.optimize(apply=False)
    if ranking.selected is None:
        raise AssertionError(f"no local model fits this machine: {ranking.reason}")
    return ranking.selected


def check_switching(manager: FallbackManager) -> str:
    name = _best(manager)
    start = time.perf_counter()
    manager.switch_model(name, persist=False)
    return f"loaded {name} in {time.perf_counter() - start:.2f} s"


def check_failover_chat(manager: FallbackManager) -> str:
    unreachable = "http://127.0.0.1:9/v1"  # the discard port: nothing answers there
    result = manager.chat([{"role": "user", "content": "Say hello in five words."}],
                          primary=unreachable, max_tokens=32)
    if result.source != "local" or not result.text.strip():
        raise AssertionError(f"expected a local answer, got {result.source}: {result.text!r}")
    first = result.attempts[0]
    return (f"primary failed in {first.latency_s * 1000:.0f} ms ({first.error}); {result.model} "
            f"answered {result.tokens} tokens, first after {result.ttft_s:.2f} s: "
            f"{result.text.strip()[:60]!r}")


def check_serve(manager: FallbackManager) -> str:
    """The OpenAI-compatible endpoint a host points at, on a free loopback port: a streamed
    chat of 16 tokens through it (to the main API when one is set and answers, else a local
    model) and /health."""
    import httpx

    from zwaif_fallback.server import build_api, front, listen, need_web_stack, serving

    need_web_stack()

    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    server = serving(front(build_api(manager)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not server.started:
            raise AssertionError("serve did not start within 30 s" if thread.is_alive() else
                                 "serve stopped as it started (see Logs/zwaif_fallback.log)")
        url = f"http://127.0.0.1:{port}"
        ask = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "stream": True}
        with httpx.Client(trust_env=False, timeout=120) as client:  # no system proxy for loopback
            with client.stream("POST", url + "/v1/chat/completions", json=ask) as response:
                response.raise_for_status()
                source = response.headers.get("x-fallback-source")
                events = [line for line in response.iter_lines() if line.startswith("data: {")]
            health = client.get(url + "/health").json()
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()
    if not events or not source:
        raise AssertionError(f"serve streamed {len(events)} events, source {source!r}")
    return (f"a chat streamed {len(events)} events through serve on 127.0.0.1:{port} from the "
            f"{source} target; /health says {health['status']}")


def check_benchmark(manager: FallbackManager) -> str:
    result = manager.benchmark(_best(manager))
    if not result.ok:
        raise AssertionError(result.error or "benchmark failed")
    return (f"{result.model}: load {result.load_s:.2f} s, TTFT {result.ttft_s:.2f} s, "
            f"{result.gen_tps:.1f} tokens/s, +{result.peak_ram_mb:.0f} MiB RAM, "
            f"perplexity {result.perplexity}, quality {result.quality_score}")


def check_optimization(manager: FallbackManager) -> str:
    result = manager.optimize(apply=False)
    return f"would pick {result.selected}: {result.reason} (dry run, nothing switched)"


def check_health(manager: FallbackManager) -> str:
    report = manager.health()
    weakest = min(report.factors.items(), key=lambda item: item[1].score)
    return (f"{report.score}/100 {report.status}; weakest: {weakest[0]} {weakest[1].score} "
            f"({weakest[1].detail}); {len(report.recommendations)} recommendations")


def check_monitoring(manager: FallbackManager) -> str:
    manager.start_monitoring(10, interval_s=1.0)
    manager.wait_monitoring(30)
    report = manager.stop_monitoring()
    if len(report.samples) < 10:
        raise AssertionError(f"only {len(report.samples)} samples in 10 s")
    ram = report.summary["ram_used_mb"]
    return (f"{len(report.samples)} samples in {report.duration_s:.0f} s; RAM used mean "
            f"{ram.mean:.0f} MiB (p95 {ram.p95:.0f})")


def check_settings(manager: FallbackManager) -> str:
    """Save, refuse and reset on a copy of the real settings file."""
    real = Path(FallbackSettings().settings_file)
    work = Path(tempfile.mkdtemp(prefix="zwaif-selfcheck-settings-"))
    copy = work / "settings.json"
    if real.is_file():
        shutil.copy2(real, copy)
    try:
        settings = FallbackSettings(settings_file=copy)
        free = [f for f in ("max_retries", "monitor_duration", "keep_alive") if
                settings.origin(f) not in ("environment", "argument")]
        if not free:
            return "every checked setting is pinned by the environment: nothing to save"
        field = free[0]
        before = copy.read_bytes() if copy.exists() else b""
        try:
            settings.saved(**{field: -1})
            raise AssertionError(f"an out-of-range {field} was accepted")
        except FallbackError:
            pass
        if (copy.read_bytes() if copy.exists() else b"") != before:
            raise AssertionError("a refused value changed the file")
        value = 7 if field == "max_retries" else 42
        if settings.saved(**{field: value}).model_dump()[field] != value:
            raise AssertionError(f"a saved {field} did not come back")
        if FallbackSettings(settings_file=copy).reset().origin(field) == "file":
            raise AssertionError("reset kept a saved value")
        return (f"save, refusal and reset of {field} work on a copy of {real} "
                "(the real file is untouched)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


CHECKS: list[tuple[str, Check]] = [
    ("probes", check_probes),
    ("discovery", check_discovery),
    ("compatibility", check_compatibility),
    ("switching", check_switching),
    ("failover chat", check_failover_chat),
    ("serve", check_serve),
    ("benchmark", check_benchmark),
    ("optimization", check_optimization),
    ("health", check_health),
    ("monitoring", check_monitoring),
    ("settings", check_settings),
]


def run(models_dir: str | None) -> list[dict[str, Any]]:
    scratch = Path(tempfile.mkdtemp(prefix="zwaif-selfcheck-"))
    overrides: dict[str, Any] = {"data_dir": scratch / "data", "settings_file": scratch / "s.json",
                                 "keep_alive": 0}
    if models_dir:
        overrides["models_dir"] = models_dir
    base = FallbackSettings()
    for name in ("models_dir", "hf_models", "n_ctx", "scan_system_stores", "allow_pickle"):
        overrides.setdefault(name, getattr(base, name))
    results = []
    try:
        with FallbackManager(FallbackSettings(**overrides), background=False) as manager:
            for name, check in CHECKS:
                start = time.perf_counter()
                try:
                    detail, ok = check(manager), True
                except Exception as exc:  # a self-check reports every failure, whatever it is
                    detail, ok = f"{type(exc).__name__}: {exc}", False
                results.append({"feature": name, "ok": ok, "detail": detail,
                                "seconds": round(time.perf_counter() - start, 3)})
                _print_line(results[-1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


_quiet = False


def _print_line(result: dict[str, Any]) -> None:
    if not _quiet:
        mark = "PASS" if result["ok"] else "FAIL"
        print(f"{mark}  {result['feature']:<14} {result['detail']}  [{result['seconds']:.1f} s]",
              flush=True)


def main(argv: list[str] | None = None) -> int:
    global _quiet
    # A model's answer may hold characters the console's code page lacks (Windows writes a
    # redirected stdout in cp1252): escaped, as the CLI does, instead of UnicodeEncodeError.
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        sys.stdout.reconfigure(errors="backslashreplace")
    # Failures are reported on the lines below; the library's own warnings would repeat them.
    library_log = logging.getLogger("zwaif_fallback")
    library_log.addHandler(logging.NullHandler())
    library_log.propagate = False
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--models-dir", help="where to discover models (default: the settings')")
    args = parser.parse_args(argv)
    _quiet = args.json
    try:
        results = run(args.models_dir)
    except FallbackError as exc:  # the settings themselves are unusable: nothing can be checked
        print(f"FAIL  setup          {exc}", file=sys.stderr)
        return 2
    failed = [r["feature"] for r in results if not r["ok"]]
    if args.json:
        print(json.dumps({"ok": not failed, "results": results}, indent=2))
    else:
        print(f"\n{len(results) - len(failed)} of {len(results)} features passed"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
