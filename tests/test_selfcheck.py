"""The user's self-check script, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_the_self_check_passes_and_changes_nothing(isolated):
    before = sorted(os.listdir(isolated))
    result = subprocess.run([sys.executable, str(ROOT / "test_advanced_fallback_features.py"),
                             "--json"], capture_output=True, text=True, cwd=isolated, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] and [r["feature"] for r in report["results"]] == [
        "probes", "discovery", "compatibility", "switching", "failover chat", "serve", "benchmark",
        "optimization", "health", "monitoring", "settings"]
    assert sorted(os.listdir(isolated)) == before  # no settings, history or logs left behind


def test_the_self_check_fails_loudly(isolated):
    empty = isolated / "no-models"
    empty.mkdir()
    env = dict(os.environ, FALLBACK_N_CTX="100000000")  # refused: every feature needs settings
    result = subprocess.run([sys.executable, str(ROOT / "test_advanced_fallback_features.py")],
                            capture_output=True, text=True, cwd=isolated, env=env, timeout=120)
    assert result.returncode != 0
    assert "n_ctx" in result.stdout + result.stderr and "Traceback" not in result.stderr
