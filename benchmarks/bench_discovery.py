"""Discovery of a folder of GGUF files with 150k-token vocabularies, against gguf.GGUFReader.

The files are sparse: a real header (vocabulary and merges included), zeros for
the weights. Target: the 50 files in under 1 s in all.

Usage: bench_discovery.py [--files 50] [--vocab 150000] [--baseline-files N]
GGUFReader takes seconds per file; --baseline-files times it on the first N
files only (default: all of them) and the ratio compares the same files.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, table

sys.path.insert(0, str(ROOT / "tests"))
from builders import write_sparse_gguf  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=50)
    parser.add_argument("--vocab", type=int, default=150_000)
    parser.add_argument("--baseline-files", type=int, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    models = work / "models"
    models.mkdir()
    first = write_sparse_gguf(models / "m00.gguf", n_vocab=args.vocab)
    for i in range(1, args.files):
        shutil.copy(first, models / f"m{i:02d}.gguf")  # sparse copies keep the holes
    files = sorted(models.glob("*.gguf"))

    from zwaif_fallback import FallbackSettings
    from zwaif_fallback.catalog import Catalog

    settings = FallbackSettings(models_dir=models, scan_system_stores=False,
                                settings_file=work / "s.json")
    start = time.perf_counter()
    found = Catalog().discover(settings)
    ours = time.perf_counter() - start
    assert sum(m.valid and m.source == "models_dir" for m in found) == args.files, found[:2]

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "zwaif_fallback", "--models-dir", str(models),
                    "models", "--json"], check=True, capture_output=True, cwd=work,
                   env={"FALLBACK_SCAN_SYSTEM_STORES": "false", "PATH": ""})
    cold = time.perf_counter() - start

    import gguf

    n_base = min(args.baseline_files or args.files, args.files)
    start = time.perf_counter()
    for path in files[:n_base]:
        gguf.GGUFReader(str(path))
    base = time.perf_counter() - start
    ours_same = ours * n_base / args.files
    print(table([
        ("reader", "files", "total", "per file"),
        ("gguf.GGUFReader (baseline)", n_base, f"{base:.2f} s", f"{base / n_base * 1000:.0f} ms"),
        ("Catalog.discover (in process)", args.files, f"{ours:.3f} s",
         f"{ours / args.files * 1000:.1f} ms"),
        ("zwaif-fallback models --json (cold process)", args.files, f"{cold:.3f} s", "-"),
    ]))
    print(f"\n{args.files} files, {args.vocab} tokens + {args.vocab} merges each, "
          f"{first.stat().st_size / 2**20:.0f} MiB apparent size each")
    print(f"speed-up over GGUFReader on the same {n_base} files: {base / ours_same:.0f}x; "
          f"discovery of all {args.files}: {ours:.3f} s (target < 1 s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
