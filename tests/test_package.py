from __future__ import annotations

import subprocess
import sys

import zwaif_fallback

HEAVY = ("torch", "transformers", "gradio", "llama_cpp", "pynvml", "GPUtil")


def test_all_is_sorted_and_complete():
    assert zwaif_fallback.__all__ == sorted(zwaif_fallback.__all__)
    for name in zwaif_fallback.__all__:
        assert hasattr(zwaif_fallback, name), name
    public = {n for n in dir(zwaif_fallback) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(zwaif_fallback.__all__)


def test_the_design_api_is_exported():
    for name in ("FallbackManager", "FallbackSettings", "FallbackError", "ModelNotFound",
                 "IncompatibleModel", "ModelLoadError", "AllTargetsFailed", "InvalidSettings",
                 "InvalidModelFile", "try_fallbacks"):
        assert name in zwaif_fallback.__all__
    for method in ("chat_completion", "stream_chat_completion", "chat", "stream_chat"):
        assert callable(getattr(zwaif_fallback.FallbackManager, method))
    for name in zwaif_fallback.__all__:
        obj = getattr(zwaif_fallback, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, zwaif_fallback.FallbackError)


def test_import_is_cheap_and_configures_nothing():
    code = ("import logging, sys, zwaif_fallback; from zwaif_fallback import FallbackManager, try_fallbacks; "
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules)); "
            "print(len(logging.getLogger().handlers), "
            "[type(h).__name__ for h in logging.getLogger('zwaif_fallback').handlers])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, handlers = out.stdout.splitlines()
    assert heavy == ""
    assert handlers == "0 ['NullHandler']"  # no warning reaches a host's stderr unasked


def test_python_m_runs_the_cli():
    out = subprocess.run([sys.executable, "-m", "zwaif_fallback", "--help"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and "status" in out.stdout and "check" in out.stdout


def test_a_host_that_configures_no_logging_gets_no_warnings_on_its_stderr():
    code = ("import logging, zwaif_fallback; "
            "logging.getLogger('zwaif_fallback.failover').warning('target failed after 0 pieces')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == ""
