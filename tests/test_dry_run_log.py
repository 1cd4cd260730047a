"""The figures a dry run's llama.cpp log gives, read without running llama.cpp."""

from __future__ import annotations

from zwaif_fallback.dry_run_log import parse_log
from zwaif_fallback.memory import MIB


def test_a_gpu_log_splits_vram_from_ram_layer_by_layer():
    """The texts llama.cpp logs on a CUDA build with 2 of 3 layers offloaded (no GPU here)."""
    log = [
        "load_tensors: layer   0 assigned to device CPU, is_swa = 0",
        "load_tensors: layer   1 assigned to device CUDA0, is_swa = 0",
        "load_tensors: layer   2 assigned to device CUDA0, is_swa = 0",
        "load_tensors: offloaded 2/3 layers to GPU",
        "load_tensors:    CUDA_Host model buffer size =     0.00 MiB",
        "load_tensors:        CUDA0 model buffer size =     0.00 MiB",
        "llama_context: n_ctx                 = 1024",
        "llama_context:  CUDA_Host  output buffer size =     0.50 MiB",
        "llama_kv_cache: layer   0: dev = CPU",
        "llama_kv_cache: layer   1: dev = CUDA0",
        "llama_kv_cache:      CUDA0 KV buffer size =     0.00 MiB",
        "llama_kv_cache: size =    8.00 MiB (  1024 cells,   2 layers,  1/1 seqs), "
        "K (f16):    4.00 MiB, V (f16):    4.00 MiB",
        "sched_reserve:      CUDA0 compute buffer size =   100.00 MiB",
        "sched_reserve:  CUDA_Host compute buffer size =    10.00 MiB",
    ]
    tensors = {"token_embd.weight": 64 * MIB, "blk.0.attn_q.weight": 16 * MIB,
               "blk.1.attn_q.weight": 16 * MIB, "output_norm.weight": MIB}  # tied output
    dry = parse_log(log, tensors, model_bytes=97 * MIB, seconds=0.5, version="test")
    assert dry.weights_by == "layer"
    assert dry.devices["CPU"].weights_mb == 80 and dry.devices["CPU"].kv_mb == 4
    assert dry.devices["CUDA0"].weights_mb == 16 + 1 + 64  # a tied output's copy on the GPU
    assert dry.vram_mb == 81 + 4 + 100
    assert dry.ram_mb == 80 + 4 + 10 + 0.5
    assert (dry.gpu_layers, dry.n_layers, dry.n_ctx) == (2, 2, 1024)
