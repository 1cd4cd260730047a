"""The package type-checks and lints clean (STYLE.md: ship py.typed, run mypy)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT)


def test_mypy_passes():
    result = run("mypy", "zwaif_fallback", "webui")
    assert result.returncode == 0, result.stdout


def test_ruff_passes():
    result = run("ruff", "check", "zwaif_fallback", "webui", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout
