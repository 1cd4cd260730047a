"""zwaif-fallback: keep a chatbot answering when its main LLM API fails.

Importing this package is cheap (no torch, transformers, llama_cpp, gradio or
NVML): hosts import it in their LLM call path.
"""

from .catalog import Catalog
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
from .failover import Attempt, ChatResult, Switch
from .fit import Compatibility, Estimate, LoadConfig, MemoryBreakdown, estimate, plan
from .hardware import GPUInfo, HardwareProbe, SystemStatus
from .manager import FallbackManager
from .model_info import ModelInfo, ModelShape
from .settings import FallbackSettings

__version__ = "0.1.0"

# Result types of the measuring side load on first use: their modules are not needed
# in a host's chat path.
_LAZY = {
    "BenchmarkResult": "bench",
    "HealthReport": "health",
    "Optimization": "health",
    "MonitoringReport": "monitor",
    "Job": "jobs",
    "JobStatus": "jobs",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'zwaif_fallback' has no attribute {name!r}")


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
]
