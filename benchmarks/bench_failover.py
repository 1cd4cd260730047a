"""Failover latency, measured in one run on the bundled SmolLM2 (preloaded).

1. Refused primary: time to the first fallback token, minus the local model's own
   time to first token for the same prompt (measured alternately). Target < 50 ms.
2. Breaker open: no connection is attempted (a counting server in front says so).
3. Hung primary (accepts, never answers) with timeout 5 s: the fallback's first
   token arrives within 5.5 s.
"""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, table

sys.path.insert(0, str(ROOT / "tests"))
from servers import FaultProxy, HangServer, free_port, refused_url  # noqa: E402

from zwaif_fallback import FallbackManager, FallbackSettings  # noqa: E402

PROMPT = [{"role": "user", "content": "Say hello."}]
GEN = {"max_tokens": 4, "temperature": 0.0}
RUNS = 15


def first_piece_s(stream) -> float:
    start = time.perf_counter()
    for _ in stream:
        elapsed = time.perf_counter() - start
        for _ in stream:
            pass
        return elapsed
    raise RuntimeError("no answer")


def main() -> None:
    logging.getLogger("zwaif_fallback").setLevel(logging.ERROR)
    logging.getLogger("stamina").setLevel(logging.ERROR)
    work = Path(tempfile.mkdtemp())
    settings = FallbackSettings(models_dir=work / "models", scan_system_stores=False, keep_alive=0,
                                settings_file=work / "s.json", timeout=5, n_ctx=2048)
    manager = FallbackManager(settings)
    model = next(m for m in manager.discover_models() if m.source == "bundled")
    manager.switch_model(model.name, persist=False)
    first_piece_s(manager.stream_chat(PROMPT, **GEN))  # warm-up

    local, failover = [], []
    down = refused_url()
    for _ in range(RUNS):
        local.append(first_piece_s(manager.stream_chat(PROMPT, **GEN)))
        manager._router._breakers.clear()  # each run meets a closed breaker and a refused port
        failover.append(first_piece_s(manager.stream_chat(PROMPT, primary=down, **GEN)))
    overhead_ms = (statistics.median(failover) - statistics.median(local)) * 1000

    proxy = FaultProxy(free_port())
    proxy.mode = "500"
    for _ in range(3):
        manager.chat(PROMPT, primary=proxy.url, **GEN)
    sent = proxy.requests
    open_result = manager.chat(PROMPT, primary=proxy.url, **GEN)
    skipped = open_result.attempts[0]
    proxy.close()

    hang = HangServer()
    start = time.perf_counter()
    hung = first_piece_s(manager.stream_chat(PROMPT, primary=hang.url, **GEN))
    hung_total = time.perf_counter() - start
    hang.close()
    manager.close()

    print(table([
        ("measure", "median", "target"),
        ("local model's own TTFT (baseline)", f"{statistics.median(local) * 1000:.1f} ms", ""),
        ("TTFT with a refused primary", f"{statistics.median(failover) * 1000:.1f} ms", ""),
        ("failover overhead (difference)", f"{overhead_ms:.1f} ms", "< 50 ms"),
        ("requests sent once the breaker is open", f"{proxy.requests - sent} "
         f"(attempt: {skipped.error!r}, {skipped.latency_s * 1000:.1f} ms)", "0"),
        ("hung primary, timeout 5 s: first fallback token", f"{hung:.2f} s", "< 5.5 s"),
    ]))
    print(f"\n{RUNS} alternating runs each; hung-primary answer complete after {hung_total:.2f} s")


if __name__ == "__main__":
    main()
