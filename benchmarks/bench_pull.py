"""Download throughput of ``zwaif-fallback pull`` against curl, on the same file and server.

A local server in the Hub's URL layout (tests/hub_server.py, in a process of its own, as
it would be for curl) serves one file of random bytes with its real sha256. Each round
downloads it with ``curl -L`` and with ``zwaif_fallback.pull``, in alternating order, both
to a fresh folder on the same file system, after one unmeasured round of each (pull's
first call in a process imports http.client and loads the CA bundle once, ~50 ms; curl's
process pays its own start in every round). pull does more than curl: a HEAD for the size
and sha256 first, the sha256 of every byte, and the rename after the check; curl only
writes. pull also waits until the bytes are on the disk (fsync) before the file gets its
name, so curl's time, like for like, includes an fsync of its file once it exits; curl
alone is printed too. Every round's rates and the medians are printed. Goal: pull /
(curl + fsync) at least 0.9.

``--with-hf`` adds a third contender in the same rounds: huggingface_hub's own transfer
(``file_download.http_get``, what ``hf_hub_download`` runs) from the address
``get_hf_file_metadata`` gives, into a file whose writes are hashed with sha256, as pull
hashes. It shows why pull asks huggingface_hub what a file is but reads the bytes itself.

Usage: python benchmarks/bench_pull.py [--mib 200] [--rounds 7] [--with-hf]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from zwaif_fallback.download import sync_file
from zwaif_fallback.hub import Hub
from zwaif_fallback.pull import pull

ROOT = Path(__file__).resolve().parents[1]
REPO, FILE = "bench/random-GGUF", "model.gguf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--with-hf", action="store_true",
                        help="also time huggingface_hub's http_get (+ sha256) in the same rounds")
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
            _round(endpoint, Path(work), -1, args.with_hf)  # the warm-up
            rounds = [_round(endpoint, Path(work), i, args.with_hf) for i in range(args.rounds)]
        finally:
            assert server.stdin is not None
            server.stdin.close()
            server.wait(timeout=10)
    print(f"{args.mib} MiB from a local server in the Hub's layout (its own process), "
          f"{args.rounds} rounds in alternating order; files written under {tempfile.gettempdir()}")
    for i, (curl_s, sync_s, pull_s, hf_s) in enumerate(rounds):
        hf = f"   hf http_get {args.mib / hf_s:6.0f} MiB/s" if hf_s else ""
        print(f"round {i + 1}: curl + fsync {args.mib / (curl_s + sync_s):6.0f} MiB/s   "
              f"pull {args.mib / pull_s:6.0f} MiB/s   ratio {(curl_s + sync_s) / pull_s:.2f}{hf}")
    c = statistics.median(r[0] for r in rounds)
    cs = statistics.median(r[0] + r[1] for r in rounds)
    o = statistics.median(r[2] for r in rounds)
    print(f"curl -L          : median {c:6.3f} s  {args.mib / c:7.0f} MiB/s")
    print(f"curl -L + fsync  : median {cs:6.3f} s  {args.mib / cs:7.0f} MiB/s")
    print(f"pull (+sha256, fsync): median {o:6.3f} s  {args.mib / o:7.0f} MiB/s   "
          f"pull / curl alone {c / o:.2f}")
    if args.with_hf:
        h = statistics.median(r[3] for r in rounds)
        print(f"hf http_get (+sha256, fsync): median {h:6.3f} s  {args.mib / h:7.0f} MiB/s   "
              f"hf / (curl + fsync) {cs / h:.2f}")
    print(f"pull / (curl + fsync) throughput: {cs / o:.2f} (median of rounds' ratios "
          f"{statistics.median((r[0] + r[1]) / r[2] for r in rounds):.2f}; goal: at least 0.9)")


def _round(endpoint: str, work: Path, i: int, with_hf: bool) -> tuple[float, float, float, float]:
    """One download with each, in an order that alternates with ``i``: (curl_s, curl's
    fsync_s, pull_s, hf_s); hf_s is 0 without ``with_hf``."""
    dirs = {name: work / f"{name}{i}" for name in ("curl", "pull", "hf")}
    dirs["curl"].mkdir()
    dirs["hf"].mkdir()
    url = f"{endpoint}/{REPO}/resolve/main/{FILE}"

    def run_curl() -> None:
        subprocess.run(["curl", "-sSfL", "-o", str(dirs["curl"] / FILE), url], check=True)
        synced = time.perf_counter()
        sync_file(dirs["curl"] / FILE)
        seconds["fsync"] = time.perf_counter() - synced

    def run_pull() -> None:
        with Hub(endpoint=endpoint, offline=False, token="") as hub:
            pull(f"{REPO}/{FILE}", hub=hub, models_dir=dirs["pull"])

    def run_hf() -> None:
        from huggingface_hub import file_download, get_hf_file_metadata

        meta = get_hf_file_metadata(url, token=False)
        with open(dirs["hf"] / FILE, "wb") as out:
            sink = _Hashed(out)
            file_download.http_get(meta.location, sink, expected_size=meta.size)  # type: ignore[arg-type]
            out.flush()
            os.fsync(out.fileno())
        assert sink.hasher.hexdigest() == meta.etag, "huggingface_hub's download has the wrong sha256"

    runs = [("curl", run_curl), ("pull", run_pull)] + ([("hf", run_hf)] if with_hf else [])
    seconds = dict.fromkeys([*dirs, "fsync"], 0.0)
    for name, run in runs if i % 2 else runs[::-1]:
        started = time.perf_counter()
        run()
        seconds[name] = time.perf_counter() - started
    sizes = {os.path.getsize(d / FILE) for name, d in dirs.items() if seconds[name]}
    devices = {os.stat(d / FILE).st_dev for name, d in dirs.items() if seconds[name]}
    assert len(devices) == 1, "the downloads are on different file systems"
    assert len(sizes) == 1, f"the downloads differ in size: {sizes}"
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)
    return seconds["curl"] - seconds["fsync"], seconds["fsync"], seconds["pull"], seconds["hf"]


class _Hashed:
    """A file whose writes are hashed, for huggingface_hub's ``http_get``."""

    def __init__(self, out: BinaryIO) -> None:
        self.out, self.hasher = out, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.out.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.out.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        self.hasher = hashlib.sha256()  # http_get truncates only to start over
        return self.out.truncate(size)


if __name__ == "__main__":
    main()
