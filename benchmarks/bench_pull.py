"""Download throughput of ``zwaif-fallback pull`` against curl, on the same file and server.

A local server in the Hub's URL layout (tests/hub_server.py, in a process of its own, as
it would be for curl) serves one file of random bytes with its real sha256. Each round
downloads it with ``curl -L`` and with ``zwaif_fallback.pull``, in alternating order, both
to a fresh folder on the same file system, after one unmeasured round of each (pull's
first call in a process imports http.client and loads the CA bundle once, ~50 ms; curl's
process pays its own start in every round). pull does more than curl: a HEAD for the size
and sha256 first, the sha256 of every byte, and the rename after the check; curl only
writes. Every round's rates and the medians are printed. Goal: pull / curl at least 0.9.

Usage: python benchmarks/bench_pull.py [--mib 200] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from zwaif_fallback.hub import Hub
from zwaif_fallback.pull import pull

ROOT = Path(__file__).resolve().parents[1]
REPO, FILE = "bench/random-GGUF", "model.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / "source.bin"
        with open(source, "wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(1 << 20))
        server = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hub_server.py"), REPO, FILE,
                                   str(source)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            endpoint = server.stdout.readline().strip()
            _round(endpoint, Path(work), -1)  # the warm-up
            rounds = [_round(endpoint, Path(work), i) for i in range(args.rounds)]
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=10)
    print(f"{args.mib} MiB from a local server in the Hub's layout (its own process), "
          f"{args.rounds} rounds in alternating order; files written under {tempfile.gettempdir()}")
    for i, (curl_s, pull_s) in enumerate(rounds):
        print(f"round {i + 1}: curl {args.mib / curl_s:6.0f} MiB/s   pull {args.mib / pull_s:6.0f} MiB/s"
              f"   ratio {curl_s / pull_s:.2f}")
    c = statistics.median(r[0] for r in rounds)
    o = statistics.median(r[1] for r in rounds)
    print(f"curl -L          : median {c:6.3f} s  {args.mib / c:7.0f} MiB/s")
    print(f"pull (+sha256)   : median {o:6.3f} s  {args.mib / o:7.0f} MiB/s")
    print(f"pull / curl throughput: {c / o:.2f} (median of rounds' ratios "
          f"{statistics.median(r[0] / r[1] for r in rounds):.2f}; goal: at least 0.9)")


def _round(endpoint: str, work: Path, i: int) -> tuple[float, float]:
    """One download with each, in an order that alternates with ``i``: (curl_s, pull_s)."""
    curl_dir, pull_dir = work / f"curl{i}", work / f"pull{i}"
    curl_dir.mkdir()
    url = f"{endpoint}/{REPO}/resolve/main/{FILE}"

    def run_curl() -> float:
        started = time.perf_counter()
        subprocess.run(["curl", "-sSfL", "-o", str(curl_dir / FILE), url], check=True)
        return time.perf_counter() - started

    def run_pull() -> float:
        started = time.perf_counter()
        with Hub(endpoint=endpoint, offline=False, token="") as hub:
            pull(f"{REPO}/{FILE}", hub=hub, models_dir=pull_dir)
        return time.perf_counter() - started

    if i % 2:
        pull_s = run_pull()
        curl_s = run_curl()
    else:
        curl_s = run_curl()
        pull_s = run_pull()
    same = os.stat(curl_dir / FILE).st_dev == os.stat(pull_dir / FILE).st_dev
    assert same, "curl's file and pull's are on different file systems"
    assert os.path.getsize(curl_dir / FILE) == os.path.getsize(pull_dir / FILE)
    shutil.rmtree(curl_dir)
    shutil.rmtree(pull_dir)
    return curl_s, pull_s


if __name__ == "__main__":
    main()
