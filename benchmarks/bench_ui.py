"""Does the web UI stay responsive while "Benchmark All Models" runs?

Times the "Refresh Diagnostics" handler (called directly, and as a real HTTP call through
the served app with gradio_client) with nothing running, then again while the benchmark
of every model (started through the UI's own handler) loads and runs them on the CPU.
Target: the refresh answers in under 1 s, even while the benchmark runs. It runs on any
Gradio the tabs support: run it in .venv (Gradio 6) and in .venv-host (Z-WAIF's 4.36.1).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _common import ROOT, table

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio  # noqa: E402
import gradio_client  # noqa: E402
from builders import write_gguf  # noqa: E402
from gradio_client import Client  # noqa: E402
from servers import free_port  # noqa: E402

from webui import build_app, launch  # noqa: E402
from webui.diagnostics import DiagnosticsHandlers  # noqa: E402
from webui.management import ManagementHandlers  # noqa: E402
from zwaif_fallback import FallbackManager, FallbackSettings  # noqa: E402

TARGET_S = 1.0


def timed(call: Callable[[], object], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def while_running(calls: dict[str, Callable[[], object]], manager: FallbackManager, *,
                  pause_s: float = 0.05, limit_s: float = 300.0) -> tuple[dict[str, list[float]], str]:
    """Start "Benchmark All Models" through the UI's handler and time each call, in turn, until it
    ends (a short pause between rounds, as a person clicking would leave)."""
    job_id, _, _ = ManagementHandlers(manager).start_benchmark_all("", None)
    job = manager.job(job_id)
    times: dict[str, list[float]] = {name: [] for name in calls}
    pause = threading.Event()
    deadline = time.monotonic() + limit_s
    while job.status().state == "running" and time.monotonic() < deadline:
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
        pause.wait(pause_s)
    job.cancel()
    job.wait(120)
    status = job.status()
    return times, f"{status.state} after {status.elapsed_s:.1f} s"


def row(label: str, times: list[float]) -> tuple[str, ...]:
    median, worst = statistics.median(times) * 1000, max(times) * 1000
    return (label, str(len(times)), f"{median:.1f} ms", f"{worst:.1f} ms")


def main(runs: int = 20) -> None:
    work = Path(tempfile.mkdtemp())
    (work / "models").mkdir()
    write_gguf(work / "models" / "tiny.gguf")
    manager = FallbackManager(FallbackSettings(
        models_dir=work / "models", scan_system_stores=False, keep_alive=0,
        settings_file=work / "fallback_settings.json", data_dir=work / "data"))
    models = [m.name for m in manager.discover_models()]
    app = build_app(manager)
    url = launch(manager, port=free_port(), block=False, blocks=app)
    try:
        refresh = DiagnosticsHandlers(manager).refresh
        client = Client(url, verbose=False)  # gradio_client 1.0.1 (Z-WAIF's pin) takes no analytics_enabled

        def http_refresh() -> object:
            return client.predict(api_name="/fallback_refresh_diagnostics")

        refresh(), http_refresh()  # warm-up: first discovery, first request
        idle_direct = timed(refresh, runs)
        idle_http = timed(http_refresh, runs)
        busy, job = while_running({"handler": refresh, "http": http_refresh}, manager)
    finally:
        app.close()
        manager.close()
    print(f"Gradio {gradio.__version__}, gradio_client {gradio_client.__version__}; "
          f"models benchmarked: {', '.join(models)}; {os.cpu_count()} CPU cores")
    print(table([("Refresh Diagnostics", "n", "median", "max"),
                 row("handler, idle", idle_direct),
                 row("handler, during Benchmark All", busy["handler"]),
                 row("HTTP via gradio_client, idle", idle_http),
                 row("HTTP via gradio_client, during Benchmark All", busy["http"])]))
    print(f"Benchmark All Models: {job}")
    worst = max(busy["handler"] + busy["http"])
    print(f"\nworst refresh while benchmarking: {worst:.3f} s (target < {TARGET_S:.0f} s): "
          + ("OK" if worst < TARGET_S else "TOO SLOW"))


if __name__ == "__main__":
    main()
