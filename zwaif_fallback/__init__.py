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
from .fit import Compatibility, Estimate, LoadConfig, MemoryBreakdown, estimate, plan
from .hardware import GPUInfo, HardwareProbe, SystemStatus
from .manager import FallbackManager
from .model_info import ModelInfo, ModelShape
from .settings import FallbackSettings

__version__ = "0.1.0"

__all__ = [
    "AllTargetsFailed",
    "BackendUnavailable",
    "Catalog",
    "Compatibility",
    "Estimate",
    "FallbackError",
    "FallbackManager",
    "FallbackSettings",
    "GPUInfo",
    "HardwareProbe",
    "IncompatibleModel",
    "InvalidModelFile",
    "InvalidSettings",
    "LoadConfig",
    "MemoryBreakdown",
    "ModelInfo",
    "ModelLoadError",
    "ModelNotFound",
    "ModelShape",
    "SystemStatus",
    "estimate",
    "plan",
]
