"""Memory estimates, before anything is loaded.

Pure functions: a model's metadata and a load configuration in, MiB out. No
clock, no files, no probes.

llama.cpp (GGUF) places memory like this, and the estimate follows it:

* **Weights**, tensor by tensor at ggml's block sizes. llama.cpp counts the
  output layer as layer ``n_layer`` and offloads from the top: ``n_gpu_layers = k``
  puts the output layer and the last ``k - 1`` blocks on the GPU ("offloaded
  k/(n_layer+1) layers"). The input embedding (``token_embd``) always stays on
  the CPU; when the model ties its output to the embedding, llama.cpp loads a
  second copy of it on the output layer's device. On a CPU-only load, llama.cpp
  repacks Q4_0, Q4_K and IQ4_NL weights into an interleaved copy for its AVX2/NEON
  kernels (the ``CPU_REPACK`` buffer) while the mapped file stays resident: those
  weights count twice.
* **KV cache**, per layer on that layer's device: ``(n_embd_k_gqa + n_embd_v_gqa)``
  per cell at the KV type's block size, for ``n_ctx`` rounded up to the cache's
  padding.
* **Compute buffers**, the peak of the graph reserved for one micro-batch: the
  attention scores (``n_ctx x n_ubatch x n_head`` floats, gone with flash
  attention), the logits (``n_vocab x n_ubatch``), the feed-forward activations.
* **Runtime overhead**: what a CUDA process holds besides llama.cpp's buffers at
  the peak of a generation: the context and the kernels loaded on first use,
  ~100 MiB more once cuBLAS runs (float weights, or attention without flash
  attention). On the CPU the library, its threads and the vocabulary cost tens
  of MiB.

The GPU figures were measured on an NVIDIA H100 (driver 580, CUDA 13,
llama-cpp-python 0.3.36): 56 loads of four model shapes, full and partial
offload, flash attention off and on, f16/q8_0/q4_0 KV caches: estimate / NVML's
per-process peak 0.987-1.010 (benchmarks/gpu/run.sh, benchmarks/compare_gpu.py).
Other cards and drivers differ by tens of MiB in the context; calibration
(calibration.py) corrects for what a real load measured.

Hugging Face models: parameters x bytes per dtype (bitsandbytes 8/4-bit
included), the KV cache, activations and torch's own overhead.
"""

from __future__ import annotations

from pydantic import Field

from ._model import Model
from .ggml import kv_type_id, tensor_nbytes
from .model_info import ModelInfo, ModelShape
from .safetensors_header import DTYPE_BYTES

__all__ = ["Estimate", "LoadConfig", "MemoryBreakdown", "estimate", "kv_cells", "offloaded"]

MIB = 1024 * 1024

KV_PAD = 256  # llama.cpp rounds the KV cache's cell count up to a multiple of this
# NVML's per-process peak less llama.cpp's own CUDA buffers, on an H100: 598-602 MiB with
# quantized weights and flash attention (MMQ and FA kernels only), 690-708 MiB once cuBLAS
# runs. Right after loading, before the first kernels, it is ~523 MiB.
CUDA_CONTEXT_MB = 600.0
CUDA_LOAD_CONTEXT_MB = 523.0  # the same, right after a load (521-525 MiB over 56 loads)
CUBLAS_MB = 100.0  # cuBLAS's kernels and workspace, when float matrices are multiplied
TORCH_CUDA_CONTEXT_MB = 612.0  # torch 2.11 (CUDA 13) after its first allocation, same card
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})
# Copied into CPU_REPACK on a CPU-only load (llama-cpp-python 0.3.36, AVX2 and AVX-512 here).
_REPACKED_TYPES = frozenset({"Q4_0", "Q4_K", "IQ4_NL"})
CPU_RUNTIME_MB = 16.0  # llama.cpp's threads, graph metadata and bookkeeping on the host
TORCH_CPU_RUNTIME_MB = 350.0  # torch + transformers resident before a model is built


class LoadConfig(Model):
    """How a model would be loaded."""

    n_ctx: int = Field(4096, ge=1)
    gpu_layers: int = Field(0, description="llama.cpp's n_gpu_layers; -1 = everything")
    flash_attn: bool = False
    kv_type: str = "f16"
    n_batch: int = Field(512, ge=1)
    n_ubatch: int = Field(512, ge=1)


class MemoryBreakdown(Model):
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

    def scaled(self, factor: float, *, overhead: bool = True) -> MemoryBreakdown:
        """Every part times ``factor``; the runtime's overhead too unless ``overhead=False``."""
        return MemoryBreakdown(**{k: v if k == "overhead_mb" and not overhead else v * factor
                                  for k, v in self.model_dump().items()})

    def rounded(self) -> MemoryBreakdown:
        return MemoryBreakdown(**{k: round(v, 1) for k, v in self.model_dump().items()})


class Estimate(Model):
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
    """(blocks on the GPU, output layer on the GPU) for llama.cpp's n_gpu_layers.

    llama.cpp numbers the output layer ``n_layers`` and offloads layers from the top,
    so the output layer goes first: k layers are the output layer and k - 1 blocks.
    """
    if gpu_layers < 0 or gpu_layers > n_layers:
        return n_layers, True
    if gpu_layers == 0:
        return 0, False
    return gpu_layers - 1, True


def kv_cells(n_ctx: int) -> int:
    return -(-n_ctx // KV_PAD) * KV_PAD


def _estimate_gguf(model: ModelInfo, shape: ModelShape, config: LoadConfig, n_gpus: int) -> Estimate:
    n_layers = model.n_layers or 0
    blocks_on_gpu, output_on_gpu = offloaded(n_layers, config.gpu_layers)
    first_gpu_block = n_layers - blocks_on_gpu
    gpu_w = cpu_w = repacked = 0
    gpu_float_matrices = False
    cpu_only = blocks_on_gpu == 0 and not output_on_gpu
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
            gpu_float_matrices |= _is_float_matrix(t.dtype, t.name)
        else:
            cpu_w += t.nbytes
            # token_embd is read by row lookups, not matrix products: llama.cpp keeps it as is
            if cpu_only and t.dtype.upper() in _REPACKED_TYPES and t.name != "token_embd.weight":
                repacked += t.nbytes
        if t.name == "token_embd.weight" and not has_output and output_on_gpu:
            gpu_w += t.nbytes  # tied output: llama.cpp puts a copy on the output device
            gpu_float_matrices |= _is_float_matrix(t.dtype, t.name)

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
    ram = MemoryBreakdown(weights_mb=(cpu_w + repacked) / MIB, kv_mb=cpu_kv / MIB,
                          overhead_mb=CPU_RUNTIME_MB + _vocab_mb(shape) + _output_mb(shape))
    if uses_gpu:
        cublas = gpu_float_matrices or not config.flash_attn
        vram = MemoryBreakdown(weights_mb=gpu_w / MIB, kv_mb=gpu_kv / MIB, compute_mb=compute,
                               overhead_mb=(CUDA_CONTEXT_MB + CUBLAS_MB * cublas) * max(n_gpus, 1))
        # The host keeps a pinned staging buffer for inputs and CPU-side ops.
        ram.compute_mb = _host_compute_mb(shape, config, all_on_gpu=output_on_gpu)
    else:
        ram.compute_mb = compute
    return Estimate(vram=vram, ram=ram, gpu_layers=blocks_on_gpu + int(output_on_gpu),
                    n_layers=n_layers, n_ctx=config.n_ctx)


def _is_float_matrix(dtype: str, name: str) -> bool:
    """A weight matrix that CUDA multiplies with cuBLAS (quantized ones use llama.cpp's MMQ)."""
    return dtype.upper() in _FLOAT_TYPES and name.endswith(".weight") and "norm" not in name


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
    # On the CPU the backend loads float32 (half-precision matmuls are slow or missing there):
    # a bf16 checkpoint takes twice its file size (TinyLlama: 4196 MiB of weights, measured).
    on_cpu_only = blocks_on_gpu == 0 and not output_on_gpu
    float32 = on_cpu_only and shape.quant_bits not in (4, 8)
    if float32:
        weights = (model.parameters or 0) * 4
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
    act_bytes = 4 if float32 or (shape.dtype or "F32") == "F32" else 2
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
                               overhead_mb=TORCH_CUDA_CONTEXT_MB * max(n_gpus, 1))
    else:
        ram.compute_mb = activations / MIB
    return Estimate(vram=vram, ram=ram, gpu_layers=blocks_on_gpu + int(output_on_gpu),
                    n_layers=n_layers, n_ctx=config.n_ctx)
