"""`zwaif-fallback status --json` in a cold process, against a bare psutil probe.

Target on a GPU-less machine: under 1 s. Where nvidia-smi exists it is timed too
(it is what GPUtil runs on every call).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from _common import python, summary, table, time_process


def main(runs: int = 10) -> None:
    work = Path(tempfile.mkdtemp())
    bare = time_process(python("-c", "import psutil; psutil.virtual_memory(); "
                                     "psutil.cpu_percent(0.1)"), runs=runs, cwd=work)
    ours = time_process(python("-m", "zwaif_fallback", "status", "--json"), runs=runs, cwd=work)
    rows = [("process", "time"),
            ("python: psutil memory + 0.1 s cpu sample (baseline)", summary(bare)),
            ("zwaif-fallback status --json", summary(ours))]
    smi = shutil.which("nvidia-smi")
    if smi:
        rows.append(("nvidia-smi --query-gpu", summary(time_process(
            [smi, "--query-gpu=memory.total,memory.used", "--format=csv"], runs=runs))))
    print(table(rows))
    print(f"\nratio to the baseline: {statistics.median(ours) / statistics.median(bare):.2f}x; "
          f"median {statistics.median(ours):.3f} s (target < 1 s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
