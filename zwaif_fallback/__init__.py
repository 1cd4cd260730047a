"""zwaif-fallback: keep a chatbot answering when its main LLM API fails.

Importing this package is cheap: names load on first use (PEP 562), and nothing
imports torch, transformers, llama_cpp, gradio or NVML until a feature needs it.
Hosts import it in their LLM call path: ``try_fallbacks(request)`` answers an OpenAI
chat-completions dict on a default manager, ``FallbackManager.chat_completion`` and
``stream_chat_completion`` on one the host owns.
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing

from .errors import (
    AllTargetsFailed,
    BackendUnavailable,
    FallbackError,
    IncompatibleModel,
    InvalidModelFile,
    InvalidSettings,
    ModelLoadError,
    ModelNotFound,
)

if _typing.TYPE_CHECKING:
    from .bench import BenchmarkResult
    from .catalog import Catalog
    from .default import try_fallbacks
    from .failover import Attempt, ChatResult, Switch
    from .fit import Compatibility, Estimate, LoadConfig, MemoryBreakdown, estimate, plan
    from .hardware import GPUInfo, HardwareProbe, SystemStatus
    from .health import HealthReport, Optimization
    from .jobs import Job, JobStatus
    from .manager import FallbackManager
    from .model_info import ModelInfo, ModelShape
    from .monitor import MonitoringReport
    from .settings import FallbackSettings

__version__ = "0.1.0"

_WHERE = {
    "Attempt": "failover", "BenchmarkResult": "bench", "Catalog": "catalog",
    "ChatResult": "failover", "Compatibility": "fit", "Estimate": "fit",
    "FallbackManager": "manager", "FallbackSettings": "settings", "GPUInfo": "hardware",
    "HardwareProbe": "hardware", "HealthReport": "health", "Job": "jobs", "JobStatus": "jobs",
    "LoadConfig": "fit", "MemoryBreakdown": "fit", "ModelInfo": "model_info",
    "ModelShape": "model_info", "MonitoringReport": "monitor", "Optimization": "health",
    "Switch": "failover", "SystemStatus": "hardware", "estimate": "fit", "plan": "fit",
    "try_fallbacks": "default",
}


def __getattr__(name: str) -> object:
    if name in _WHERE:
        value = getattr(_importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'zwaif_fallback' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AllTargetsFailed",
    "Attempt",
    "BackendUnavailable",
    "BenchmarkResult",
    "Catalog",
    "ChatResult",
    "Compatibility",
    "Estimate",
    "FallbackError",
    "FallbackManager",
    "FallbackSettings",
    "GPUInfo",
    "HardwareProbe",
    "HealthReport",
    "IncompatibleModel",
    "InvalidModelFile",
    "InvalidSettings",
    "Job",
    "JobStatus",
    "LoadConfig",
    "MemoryBreakdown",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFound",
    "ModelShape",
    "MonitoringReport",
    "Optimization",
    "Switch",
    "SystemStatus",
    "estimate",
    "plan",
    "try_fallbacks",
]
