"""What a ``no_alloc`` dry run's llama.cpp log says: where a load's memory would go.

``parse_log`` is pure: the log lines the dry run's child captured (``dry_run``) and the
GGUF's tensor sizes in, a ``DryRun`` (per device and buffer type) out.

What the figures are, and where they come from (llama.cpp's log, captured in the child):

* **KV cache**: ``llama_kv_cache: size = X MiB`` is the cache's total, and the debug lines
  ``llama_kv_cache: layer i: dev = D`` say where each layer's cells live; the total is
  split evenly over its layers, which is exact when every layer has the same KV width.
* **Compute buffers**: ``sched_reserve: B compute buffer size = X MiB``, per buffer type
  (``CUDA0``, ``CUDA_Host``, ``CPU``), as llama.cpp reserves them.
* **Output buffer**: ``llama_context: B output buffer size``, the logits of one batch.
* **Weights**: llama.cpp's dummy weight buffers log 0.00 MiB in a dry run, so the sizes
  come from the GGUF's tensor table (exactly ``ggml_nbytes``, what llama.cpp allocates)
  and the placement from llama.cpp. When every layer stays on the host, the child passes
  a catch-all override to the CPU buffer type, which changes nothing (it is the list
  llama.cpp picks from anyway) but makes llama.cpp log the buffer type it chose for each
  tensor: that is how the weights it would repack for its AVX2/NEON kernels show up under
  ``CPU_REPACK`` (``weights_by="tensor"``). With layers on a GPU, each block goes where
  ``load_tensors: layer i assigned to device D`` says, the output layer is layer
  ``n_layers``, and the input embedding stays on the CPU (``weights_by="layer"``). A tied
  output layer is a second copy of ``token_embd`` only on a device other than the CPU's.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Literal

from ._model import Model
from .memory import MIB

__all__ = ["DeviceMemory", "DryRun", "parse_log"]

_LAYER = re.compile(r"load_tensors: layer\s+(\d+) assigned to device (\S+?),")
_OVERRIDE = re.compile(r"tensor (\S+) \(\d+ MiB \S+\) buffer type overridden to (\S+)$")
_KV_LAYER = re.compile(r"llama_kv_cache: layer\s+\d+: dev = (\S+)")
_KV_SIZE = re.compile(r"llama_kv_cache: size =\s*([\d.]+) MiB")
_COMPUTE = re.compile(r"sched_reserve:\s+(\S+) compute buffer size =\s*([\d.]+) MiB")
_OUTPUT = re.compile(r"llama_context:\s+(\S+)\s+output buffer size =\s*([\d.]+) MiB")
_N_CTX = re.compile(r"llama_context: n_ctx\s+=\s*(\d+)")
_BLOCK = re.compile(r"^blk\.(\d+)\.")


class DeviceMemory(Model):
    """What one device or buffer type would hold, in MiB."""

    weights_mb: float = 0.0
    kv_mb: float = 0.0
    compute_mb: float = 0.0
    output_mb: float = 0.0  # the logits buffer

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.kv_mb + self.compute_mb + self.output_mb


class DryRun(Model):
    """Where llama.cpp would put a load's memory, from a ``no_alloc`` dry run.

    ``devices`` is keyed by the names llama.cpp logs: devices (``CPU``, ``CUDA0``) and the
    buffer types it sizes separately (``CUDA_Host``, ``CPU_REPACK``). ``vram_mb`` sums the
    GPUs' own memory, ``ram_mb`` everything host-side (``CPU*`` and ``*_Host``).
    ``gpu_layers`` counts like llama.cpp's "offloaded k/n layers" (the output layer is
    one), ``n_layers`` the model's blocks, like ``Estimate``.
    """

    devices: dict[str, DeviceMemory]
    vram_mb: float
    ram_mb: float
    gpu_layers: int
    n_layers: int
    n_ctx: int
    model_mb: float  # the weights in the file (llama_model_size), what a mapped load maps
    weights_by: Literal["tensor", "layer"]  # placement logged per tensor, or per layer
    seconds: float  # the child process, start to end
    llama_cpp_version: str


def parse_log(lines: Iterable[str], tensor_bytes: Mapping[str, int], *, model_bytes: int,
              seconds: float, version: str) -> DryRun:
    """Turn a dry run's llama.cpp log into a ``DryRun``; pure, see the module docstring.

    Args:
        lines: llama.cpp's log lines, debug ones included.
        tensor_bytes: each weight tensor's size in bytes, by name (from the GGUF).
        model_bytes, seconds, version: reported as they are.
    """
    parts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    layer_dev: dict[int, str] = {}
    placed: set[tuple[str, str]] = set()  # (tensor, buffer type) as llama.cpp logged them
    kv_devs: list[str] = []
    n_ctx = 0
    for line in lines:
        if m := _LAYER.match(line):
            layer_dev[int(m[1])] = m[2]
        elif m := _OVERRIDE.match(line):
            placed.add((m[1], m[2]))  # a tied output on the same buffer type is not copied
        elif m := _KV_LAYER.match(line):
            kv_devs.append(m[1])
        elif m := _KV_SIZE.match(line):
            for dev in kv_devs:
                parts[dev]["kv_mb"] += float(m[1]) / len(kv_devs)
            kv_devs = []  # a model with sliding-window layers has a second cache
        elif m := _COMPUTE.match(line):
            parts[m[1]]["compute_mb"] = float(m[2])
        elif m := _OUTPUT.match(line):
            parts[m[1]]["output_mb"] += float(m[2])
        elif m := _N_CTX.match(line):
            n_ctx = int(m[1])
    for buft, nbytes in _weights(layer_dev, placed, tensor_bytes).items():
        parts[buft]["weights_mb"] += nbytes / MIB
    devices = {name: DeviceMemory(**{k: round(v, 2) for k, v in part.items()})
               for name, part in sorted(parts.items())}
    on_host = {name: _is_host(name) for name in devices}
    n_layers = max(layer_dev) if layer_dev else 0  # layer n_layers is the output layer
    return DryRun(
        devices=devices,
        vram_mb=round(sum(d.total_mb for n, d in devices.items() if not on_host[n]), 2),
        ram_mb=round(sum(d.total_mb for n, d in devices.items() if on_host[n]), 2),
        gpu_layers=sum(1 for dev in layer_dev.values() if not _is_host(dev)),
        n_layers=n_layers,
        n_ctx=n_ctx,
        model_mb=round(model_bytes / MIB, 2),
        weights_by="tensor" if placed else "layer",
        seconds=round(seconds, 3),
        llama_cpp_version=version,
    )


def _weights(layer_dev: Mapping[int, str], placed: set[tuple[str, str]],
             tensor_bytes: Mapping[str, int]) -> dict[str, int]:
    """Bytes of weights per device or buffer type."""
    out: dict[str, int] = defaultdict(int)
    if placed:
        for tensor, buft in placed:
            out[buft] += tensor_bytes.get(tensor, 0)
        return out
    output_dev = layer_dev.get(max(layer_dev), "CPU") if layer_dev else "CPU"
    for tensor, nbytes in tensor_bytes.items():
        if m := _BLOCK.match(tensor):
            out[layer_dev.get(int(m[1]), "CPU")] += nbytes
        elif tensor.startswith(("output", "cls")):
            out[output_dev] += nbytes
        else:
            out["CPU"] += nbytes  # the input layer: llama.cpp always keeps it on the CPU
    if "output.weight" not in tensor_bytes and output_dev != "CPU":
        out[output_dev] += tensor_bytes.get("token_embd.weight", 0)  # a tied output's copy
    return out


def _is_host(name: str) -> bool:
    return name.startswith("CPU") or name.endswith("_Host")
