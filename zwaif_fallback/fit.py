"""Memory estimates and fit verdicts, before anything is loaded.

Pure functions: a model's metadata and a load configuration in, MiB out. No
clock, no files, no probes; the caller passes the free VRAM and RAM.

llama.cpp (GGUF) places memory like this, and the estimate follows it:

* **Weights**, tensor by tensor at ggml's block sizes. With ``n_gpu_layers = k``
  the *last* k blocks go to the GPU; ``k = n_layer + 1`` also moves the output
  layer. The input embedding (``token_embd``) always stays on the CPU; when the
  model ties its output to the embedding, llama.cpp loads a second copy of it
  on the output layer's device.
* **KV cache**, per layer on that layer's device: ``(n_embd_k_gqa + n_embd_v_gqa)``
  per cell at the KV type's block size, for ``n_ctx`` rounded up to the cache's
  padding.
* **Compute buffers**, the peak of the graph reserved for one micro-batch: the
  attention scores (``n_ctx x n_ubatch x n_head`` floats, gone with flash
  attention), the logits (``n_vocab x n_ubatch``), the feed-forward activations.
* **Runtime overhead**: a CUDA context costs ~0.55 GiB of VRAM before any model;
  on the CPU the library, its threads and the vocabulary cost tens of MiB.

Hugging Face models: parameters x bytes per dtype (bitsandbytes 8/4-bit
included), the KV cache, activations and torch's own overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from .ggml import kv_type_id, tensor_nbytes
from .model_info import ModelInfo, ModelShape
from .safetensors_header import DTYPE_BYTES

__all__ = [
    "Compatibility",
    "Estimate",
    "LoadConfig",
    "MemoryBreakdown",
    "estimate",
    "plan",
]

MIB = 1024 * 1024
Verdict = Literal["gpu", "partial", "cpu", "none"]

KV_TYPES = ("f16", "q8_0", "q4_0")
KV_PAD = 256  # llama.cpp rounds the KV cache's cell count up to a multiple of this
CUDA_CONTEXT_MB = 560.0  # what a CUDA process holds before it allocates anything
CPU_RUNTIME_MB = 16.0  # llama.cpp's threads, graph metadata and bookkeeping on the host
TORCH_CPU_RUNTIME_MB = 350.0  # torch + transformers resident before a model is built
HEADROOM_MB = 256.0  # VRAM left free for the desktop and for fragmentation


class LoadConfig(BaseModel):
    """How a model would be loaded."""

    n_ctx: int = Field(4096, ge=1)
    gpu_layers: int = Field(0, description="llama.cpp's n_gpu_layers; -1 = everything")
    flash_attn: bool = False
    kv_type: str = "f16"
    n_batch: int = Field(512, ge=1)
    n_ubatch: int = Field(512, ge=1)


class MemoryBreakdown(BaseModel):
    """Where the memory goes, in MiB."""

    weights_mb: float = 0.0
    kv_mb: float = 0.0
    compute_mb: float = 0.0
    overhead_mb: float = 0.0

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.kv_mb + self.compute_mb + self.overhead_mb

    def __add__(self, other: MemoryBreakdown) -> MemoryBreakdown:
        return MemoryBreakdown(
            weights_mb=self.weights_mb + other.weights_mb,
            kv_mb=self.kv_mb + other.kv_mb,
            compute_mb=self.compute_mb + other.compute_mb,
            overhead_mb=self.overhead_mb + other.overhead_mb,
        )

    def scaled(self, factor: float) -> MemoryBreakdown:
        return MemoryBreakdown(**{k: v * factor for k, v in self.model_dump().items()})

    def rounded(self) -> MemoryBreakdown:
        return MemoryBreakdown(**{k: round(v, 1) for k, v in self.model_dump().items()})


class Estimate(BaseModel):
    """Memory a configuration needs on the GPU(s) and on the host."""

    vram: MemoryBreakdown
    ram: MemoryBreakdown
    gpu_layers: int
    n_layers: int
    n_ctx: int

    @property
    def vram_mb(self) -> float:
        return self.vram.total_mb

    @property
    def ram_mb(self) -> float:
        return self.ram.total_mb


class Compatibility(BaseModel):
    """Whether and how a model fits this machine now. ``reason`` is for people."""

    model: str
    verdict: Verdict
    compatible: bool
    vram_mb: float
    ram_mb: float
    gpu_layers: int
    n_layers: int
    n_ctx: int
    available_vram_mb: float
    available_ram_mb: float
    breakdown: MemoryBreakdown
    vram_breakdown: MemoryBreakdown
    ram_breakdown: MemoryBreakdown
    flash_attn: bool = False
    kv_type: str = "f16"
    calibrated: bool = False
    reason: str


# -- estimates ---------------------------------------------------------------------------


def estimate(model: ModelInfo, config: LoadConfig, *, n_gpus: int = 1) -> Estimate:
    """Memory needed to load ``model`` with ``config``.

    Args:
        model: a valid ``ModelInfo`` with its shape (from the catalog).
        config: the load configuration; ``gpu_layers`` in llama.cpp's meaning.
        n_gpus: GPUs the layers are spread over (each pays its own CUDA context).

    Raises:
        ValueError: the model has no shape (invalid) or the KV type is unknown.
    """
    if model.shape is None or not model.n_layers:
        raise ValueError(f"{model.name} has no readable shape: {model.error or 'unknown layout'}")
    if model.format == "gguf":
        return _estimate_gguf(model, model.shape, config, n_gpus)
    return _estimate_hf(model, model.shape, config, n_gpus)


def offloaded(n_layers: int, gpu_layers: int) -> tuple[int, bool]:
    """(blocks on the GPU, output layer on the GPU) for llama.cpp's n_gpu_layers."""
    if gpu_layers < 0 or gpu_layers > n_layers:
        return n_layers, True
    return gpu_layers, False


def kv_cells(n_ctx: int) -> int:
    return -(-n_ctx // KV_PAD) * KV_PAD


def _estimate_gguf(model: ModelInfo, shape: ModelShape, config: LoadConfig, n_gpus: int) -> Estimate:
    n_layers = model.n_layers or 0
    blocks_on_gpu, output_on_gpu = offloaded(n_layers, config.gpu_layers)
    first_gpu_block = n_layers - blocks_on_gpu
    gpu_w = cpu_w = 0
    has_output = any(t.name == "output.weight" for t in shape.tensors)
    for t in shape.tensors:
        if t.layer is not None:
            on_gpu = t.layer >= first_gpu_block
        elif t.name.startswith(("output", "cls")):
            on_gpu = output_on_gpu
        else:
            on_gpu = False  # the input layer (token_embd, position embeddings) stays on the CPU
        if on_gpu:
            gpu_w += t.nbytes
        else:
            cpu_w += t.nbytes
        if t.name == "token_embd.weight" and not has_output and output_on_gpu:
            gpu_w += t.nbytes  # tied output: llama.cpp puts a copy on the output device

    cells = kv_cells(config.n_ctx)
    kv_type = kv_type_id(config.kv_type)
    gpu_kv = cpu_kv = 0
    for layer in range(n_layers):
        heads = shape.kv_heads(layer)
        per_cell = (tensor_nbytes(kv_type, (shape.head_dim_k or 0) * heads)
                    + tensor_nbytes(kv_type, (shape.head_dim_v or 0) * heads))
        if layer >= first_gpu_block:
            gpu_kv += per_cell * cells
        else:
            cpu_kv += per_cell * cells

    compute = _gguf_compute_mb(shape, cells, config)
    uses_gpu = blocks_on_gpu > 0 or output_on_gpu
    vram = MemoryBreakdown()
    ram = MemoryBreakdown(weights_mb=cpu_w / MIB, kv_mb=cpu_kv / MIB,
                          overhead_mb=CPU_RUNTIME_MB + _vocab_mb(shape) + _output_mb(shape))
    if uses_gpu:
        vram = MemoryBreakdown(weights_mb=gpu_w / MIB, kv_mb=gpu_kv / MIB, compute_mb=compute,
                               overhead_mb=CUDA_CONTEXT_MB * max(n_gpus, 1))
        # The host keeps a pinned staging buffer for inputs and CPU-side ops.
        ram.compute_mb = _host_compute_mb(shape, config, all_on_gpu=output_on_gpu)
    else:
        ram.compute_mb = compute
    return Estimate(vram=vram, ram=ram, gpu_layers=blocks_on_gpu + int(output_on_gpu),
                    n_layers=n_layers, n_ctx=config.n_ctx)


def _gguf_compute_mb(shape: ModelShape, cells: int, config: LoadConfig) -> float:
    """The compute buffer: the allocator's peak over the graph reserved for one micro-batch.

    llama.cpp reserves the graph for ``ub = min(n_ubatch, n_ctx)`` tokens, all of them
    outputs, with the whole cache visible. Its peak is the largest of three stages
    (fitted to llama.cpp's own logs on SmolLM2, TinyLlama, Qwen2 and Llama-3 shapes;
    within 5% on 559 of 602 loads, see benchmarks/bench_fit.py):

    * logits: ``ub x (n_vocab + 2 n_embd)`` floats;
    * attention scores, without flash attention: ``ub x (n_kv (n_head + 1) + 5 n_embd + 2 n_gqa)``;
    * feed-forward, with the KQ mask alive: ``ub x (3 n_ff + 4 n_embd [+ 2 n_gqa])`` floats plus
      the mask (f32 without flash attention, f16 with it).
    """
    ub = min(config.n_ubatch, config.n_batch, cells)
    e = shape.n_embd or 0
    gqa = (shape.head_dim_k or 0) * (shape.n_kv_heads or shape.n_heads or 0)
    ff = shape.n_ff or 0
    logits = 4 * ub * ((shape.vocab_size or 0) + 2 * e)
    if config.flash_attn:
        attention = 0
        ffn = 2 * ub * cells + 4 * ub * (3 * ff + 4 * e)
    else:
        attention = 4 * ub * (cells * ((shape.n_heads or 1) + 1) + 5 * e + 2 * gqa)
        ffn = 4 * ub * cells + 4 * ub * (3 * ff + 4 * e + 2 * gqa)
    return (max(logits, attention, ffn) + 20 * ub) / MIB


def _output_mb(shape: ModelShape) -> float:
    """The host's output buffer: one row of logits."""
    return (shape.vocab_size or 0) * 4 / MIB


def _host_compute_mb(shape: ModelShape, config: LoadConfig, *, all_on_gpu: bool) -> float:
    ub = min(config.n_ubatch, config.n_batch)
    inputs = (shape.n_embd or 0) * ub * 4 * 2
    if all_on_gpu:
        return inputs / MIB
    return (inputs + (shape.vocab_size or 0) * ub * 4) / MIB


def _vocab_mb(shape: ModelShape) -> float:
    # llama.cpp keeps every token's text, score and attributes in std containers.
    return (shape.vocab_size or 0) * 160 / MIB


def _hf_weight_bytes(shape: ModelShape, parameters: int) -> float:
    if shape.quant_bits in (4, 8):
        # bitsandbytes keeps embeddings and the LM head in 16 bits; the rest packs.
        embed = sum(t.nbytes for t in shape.tensors if t.layer is None)
        return embed + (parameters - embed / 2) * shape.quant_bits / 8 * 1.03
    per = DTYPE_BYTES.get(shape.dtype or "", 2)
    return parameters * per


def _estimate_hf(model: ModelInfo, shape: ModelShape, config: LoadConfig, n_gpus: int) -> Estimate:
    n_layers = model.n_layers or 0
    blocks_on_gpu, output_on_gpu = offloaded(n_layers, config.gpu_layers)
    weights = _hf_weight_bytes(shape, model.parameters or 0)
    per_layer = [0.0] * n_layers
    other = 0.0
    scale = weights / max(sum(t.nbytes for t in shape.tensors), 1) if shape.tensors else 0.0
    for t in shape.tensors:
        if t.layer is not None and t.layer < n_layers:
            per_layer[t.layer] += t.nbytes * scale
        else:
            other += t.nbytes * scale
    if not shape.tensors:  # pickle weights: no headers, spread evenly
        per_layer = [weights / (n_layers + 1)] * n_layers
        other = weights / (n_layers + 1)
    first_gpu = n_layers - blocks_on_gpu
    act_bytes = 4 if (shape.dtype or "F32") == "F32" else 2
    kv_per_layer = (2 * shape.kv_heads(0) * (shape.head_dim_k or 0) * config.n_ctx * act_bytes)
    activations = (config.n_ctx * ((shape.n_embd or 0) * 4 + (shape.n_ff or 0) * 2) * act_bytes
                   + (shape.vocab_size or 0) * 4 * 2)
    gpu_weights = sum(per_layer[first_gpu:]) + (other if output_on_gpu else 0.0)
    cpu_weights = sum(per_layer[:first_gpu]) + (0.0 if output_on_gpu else other)
    uses_gpu = blocks_on_gpu > 0 or output_on_gpu
    vram = MemoryBreakdown()
    ram = MemoryBreakdown(weights_mb=cpu_weights / MIB, kv_mb=kv_per_layer * first_gpu / MIB,
                          overhead_mb=TORCH_CPU_RUNTIME_MB)
    if uses_gpu:
        vram = MemoryBreakdown(weights_mb=gpu_weights / MIB,
                               kv_mb=kv_per_layer * blocks_on_gpu / MIB,
                               compute_mb=activations / MIB,
                               overhead_mb=CUDA_CONTEXT_MB * max(n_gpus, 1))
    else:
        ram.compute_mb = activations / MIB
    return Estimate(vram=vram, ram=ram, gpu_layers=blocks_on_gpu + int(output_on_gpu),
                    n_layers=n_layers, n_ctx=config.n_ctx)


# -- verdicts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Budget:
    vram_mb: float  # usable: free VRAM less the headroom
    ram_mb: float
    n_gpus: int
    free_vram_mb: float  # as the probe reported it
    calibrated: bool = False

    def fits(self, est: Estimate) -> bool:
        return est.vram_mb <= self.vram_mb and est.ram_mb <= self.ram_mb


def plan(
    model: ModelInfo,
    *,
    n_ctx: int,
    free_vram_mb: Sequence[float],
    free_ram_mb: float,
    gpu_layers: int | None = None,
    flash_attn: bool = False,
    kv_type: str = "f16",
    n_batch: int = 512,
    headroom_mb: float = HEADROOM_MB,
    vram_scale: float = 1.0,
    ram_scale: float = 1.0,
    calibrated: bool = False,
) -> Compatibility:
    """Decide whether and how ``model`` runs here.

    Args:
        free_vram_mb: free VRAM of each usable GPU (empty: no GPU).
        free_ram_mb: RAM available to a new model.
        gpu_layers: force llama.cpp's n_gpu_layers; None picks the most that fits.
        vram_scale, ram_scale: corrections measured on earlier real loads (calibration).
        calibrated: a real load of this model and configuration was measured.

    Returns:
        A ``Compatibility`` whose verdict is ``gpu``, ``partial`` (with the
        number of layers that fit), ``cpu`` or ``none``, with a reason.
    """
    if kv_type not in KV_TYPES:
        raise ValueError(f"unknown KV cache type {kv_type!r}; use one of {', '.join(KV_TYPES)}")
    n_layers = model.n_layers or 0
    gpus = [v for v in free_vram_mb if v > 0]
    budget = _Budget(vram_mb=max(sum(gpus) - headroom_mb * len(gpus), 0.0),
                     ram_mb=max(free_ram_mb, 0.0), n_gpus=max(len(gpus), 1),
                     free_vram_mb=float(sum(gpus)),
                     calibrated=calibrated)

    def at(layers: int) -> Estimate:
        config = LoadConfig(n_ctx=n_ctx, gpu_layers=layers, flash_attn=flash_attn,
                            kv_type=kv_type, n_batch=n_batch, n_ubatch=min(n_batch, 512))
        est = estimate(model, config, n_gpus=budget.n_gpus)
        if vram_scale == 1.0 and ram_scale == 1.0:
            return est
        return est.model_copy(update={"vram": est.vram.scaled(vram_scale),
                                      "ram": est.ram.scaled(ram_scale)})

    full = n_layers + 1
    if kv_type != "f16" and not flash_attn:
        est = at(0 if not gpus else full)
        return _result(model, "none", est, budget, kv_type, flash_attn,
                       f"a {kv_type} KV cache needs flash attention in llama.cpp: "
                       "turn flash attention on, or use kv_type f16")
    if gpu_layers is not None:
        return _forced(model, at, gpu_layers, budget, bool(gpus), kv_type, flash_attn)
    if gpus:
        est = at(full)
        if budget.fits(est):
            return _result(model, "gpu", est, budget, kv_type, flash_attn,
                           f"fits on the GPU: needs {_gib(est.vram_mb)} of "
                           f"{_gib(budget.vram_mb)} usable VRAM")
        best = _most_layers(at, budget, n_layers)
        if best is not None and best.gpu_layers > 0:
            return _result(model, "partial", best, budget, kv_type, flash_attn,
                           f"needs {_gib(est.vram_mb)}, {_gib(budget.vram_mb)} usable VRAM: "
                           f"{best.gpu_layers} of {n_layers} layers fit on the GPU, the rest run "
                           f"on the CPU ({_gib(best.ram_mb)} of RAM)")
    cpu = at(0)
    if budget.fits(cpu):
        why = ("no GPU found" if not gpus else
               f"not even one layer fits in {_gib(budget.vram_mb)} of usable VRAM")
        return _result(model, "cpu", cpu, budget, kv_type, flash_attn,
                       f"{why}: runs on the CPU, needs {_gib(cpu.ram_mb)} of "
                       f"{_gib(budget.ram_mb)} free RAM")
    return _result(model, "none", cpu, budget, kv_type, flash_attn,
                   f"needs {_gib(cpu.ram_mb)} of RAM with {_gib(budget.ram_mb)} free"
                   + (f" and does not fit {_gib(budget.vram_mb)} of usable VRAM" if gpus else "")
                   + ": choose a smaller quantization or lower n_ctx")


def _most_layers(at: object, budget: _Budget, n_layers: int) -> Estimate | None:
    """The estimate with the most GPU layers that fits (VRAM grows with layers)."""
    low, high, best = 1, n_layers, None
    while low <= high:
        mid = (low + high) // 2
        est = at(mid)  # type: ignore[operator]
        if est.vram_mb <= budget.vram_mb:
            best, low = est, mid + 1
        else:
            high = mid - 1
    if best is not None and best.ram_mb > budget.ram_mb:
        return None
    return best


def _forced(model: ModelInfo, at: object, layers: int, budget: _Budget, has_gpu: bool,
            kv_type: str, flash_attn: bool) -> Compatibility:
    n_layers = model.n_layers or 0
    if not has_gpu:
        layers = 0
    est: Estimate = at(layers)  # type: ignore[operator]
    verdict: Verdict = ("cpu" if est.gpu_layers == 0 else
                        "gpu" if est.gpu_layers > n_layers else "partial")
    if budget.fits(est):
        where = {"cpu": "on the CPU", "gpu": "entirely on the GPU",
                 "partial": f"with {est.gpu_layers} of {n_layers} layers on the GPU"}[verdict]
        return _result(model, verdict, est, budget, kv_type, flash_attn,
                       f"runs {where}: needs {_gib(est.vram_mb)} of {_gib(budget.vram_mb)} usable "
                       f"VRAM and {_gib(est.ram_mb)} of {_gib(budget.ram_mb)} free RAM")
    best = _most_layers(at, budget, n_layers) if has_gpu else None
    if best is not None:
        hint = f"at most {best.gpu_layers} layers fit"
    elif has_gpu and layers != 0:
        hint = "not even one layer fits: use 0 GPU layers (CPU), or free some VRAM"
    else:
        hint = "lower n_ctx or choose a smaller quantization"
    return _result(model, "none", est, budget, kv_type, flash_attn,
                   f"{est.gpu_layers} GPU layers need {_gib(est.vram_mb)} of VRAM "
                   f"({_gib(budget.vram_mb)} usable) and {_gib(est.ram_mb)} of RAM "
                   f"({_gib(budget.ram_mb)} free): {hint}")


def _result(model: ModelInfo, verdict: Verdict, est: Estimate, budget: _Budget, kv_type: str,
            flash_attn: bool, reason: str) -> Compatibility:
    if budget.calibrated:
        reason += " (calibrated against a measured load of this model)"
    return Compatibility(
        model=model.name,
        verdict=verdict,
        compatible=verdict != "none",
        vram_mb=round(est.vram_mb, 1),
        ram_mb=round(est.ram_mb, 1),
        gpu_layers=est.gpu_layers,
        n_layers=est.n_layers,
        n_ctx=est.n_ctx,
        available_vram_mb=round(budget.free_vram_mb, 1),
        available_ram_mb=round(budget.ram_mb, 1),
        breakdown=(est.vram + est.ram).rounded(),
        vram_breakdown=est.vram.rounded(),
        ram_breakdown=est.ram.rounded(),
        flash_attn=flash_attn,
        kv_type=kv_type,
        calibrated=budget.calibrated,
        reason=reason,
    )


def _gib(mb: float) -> str:
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:.0f} MiB"

