"""Download throughput of ``zwaif-fallback pull`` against curl, on the same file and server.

A local server in the Hub's URL layout (tests/hub_server.py) serves one file of random
bytes with its real sha256. Each round downloads it with ``curl -L`` and with
``zwaif_fallback.pull`` (which also hashes it and writes it beside its destination before
the rename), alternating, each to a fresh folder; the medians and their ratio are
printed. Goal: pull / curl at least 0.9.

Usage: python benchmarks/bench_pull.py [--mib 200] [--rounds 5]
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

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from hub_server import HubServer  # noqa: E402

from zwaif_fallback.hub import Hub  # noqa: E402
from zwaif_fallback.pull import pull  # noqa: E402

REPO, FILE = "bench/zeros-GGUF", "model.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        source = Path(work) / FILE
        with open(source, "wb") as out:
            for _ in range(args.mib):
                out.write(os.urandom(1 << 20))
        with HubServer() as server:
            server.add(REPO, FILE, source, sha256=True)
            url = f"{server.url}/{REPO}/resolve/main/{FILE}"
            curl, ours = [], []
            for i in range(args.rounds):
                target = Path(work) / f"curl{i}"
                target.mkdir()
                started = time.perf_counter()
                subprocess.run(["curl", "-sSL", "-o", str(target / FILE), url], check=True)
                curl.append(time.perf_counter() - started)
                folder = Path(work) / f"ours{i}"
                started = time.perf_counter()
                with Hub(endpoint=server.url) as hub:
                    pull(f"{REPO}/{FILE}", hub=hub, models_dir=folder)
                ours.append(time.perf_counter() - started)
                shutil.rmtree(target)
                shutil.rmtree(folder)
    c, o = statistics.median(curl), statistics.median(ours)
    print(f"{args.mib} MiB from a local server in the Hub's layout, {args.rounds} rounds alternating")
    print(f"curl -L       : {c:6.3f} s  {args.mib / c:7.0f} MiB/s")
    print(f"pull (+sha256): {o:6.3f} s  {args.mib / o:7.0f} MiB/s")
    print(f"pull / curl throughput: {c / o:.2f} (goal: at least 0.9)")


if __name__ == "__main__":
    main()
