from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from builders import write_gguf, write_hf_folder

from zwaif_fallback import FallbackSettings, LoadConfig, estimate, plan
from zwaif_fallback.catalog import Catalog
from zwaif_fallback.fit import CUDA_CONTEXT_MB, HEADROOM_MB, KV_PAD, RAM_MARGIN_MB, offloaded
from zwaif_fallback.memory import CUBLAS_MB

MIB = 2**20


def info(path, **settings):
    return Catalog().inspect_path(path, FallbackSettings(**settings))


@pytest.fixture(scope="module")
def smol(smollm2):
    return info(smollm2)


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    return info(write_gguf(tmp_path_factory.mktemp("m") / "m.gguf", n_layer=4, weight_type="F16"))


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    return info(write_gguf(tmp_path_factory.mktemp("m") / "t.gguf", n_layer=4, tied=True))


def tensor_bytes(model, pick) -> int:
    return sum(t.nbytes for t in model.shape.tensors if pick(t))


def test_gpu_layers_follow_llama_cpp():
    """The output layer is offloaded first: n_gpu_layers=16 of Llama-3-8B put blocks 17-31 and
    the output layer on an H100 (llama.cpp's log, benchmarks/gpu/h100-results.jsonl)."""
    assert offloaded(30, 0) == (0, False)
    assert offloaded(30, 1) == (0, True)
    assert offloaded(30, 12) == (11, True)
    assert offloaded(30, 30) == (29, True)
    assert offloaded(30, 31) == (30, True)
    assert offloaded(30, -1) == (30, True)


def test_cpu_only_weights_are_every_tensor(smol):
    est = estimate(smol, LoadConfig(n_ctx=4096, gpu_layers=0))
    assert est.vram_mb == 0
    assert est.ram.weights_mb * MIB == tensor_bytes(smol, lambda t: True)


def test_the_last_blocks_go_to_the_gpu_and_the_input_layer_never_does(untied):
    est = estimate(untied, LoadConfig(n_ctx=512, gpu_layers=3))
    on_gpu = tensor_bytes(untied, lambda t: t.layer in (2, 3) or t.name.startswith("output"))
    assert est.vram.weights_mb * MIB == on_gpu
    full = estimate(untied, LoadConfig(n_ctx=512, gpu_layers=-1))
    embd = tensor_bytes(untied, lambda t: t.name == "token_embd.weight")
    assert full.ram.weights_mb * MIB == embd
    assert full.vram.weights_mb * MIB == tensor_bytes(untied, lambda t: True) - embd


def test_a_tied_output_is_duplicated_on_the_gpu(tied):
    full = estimate(tied, LoadConfig(n_ctx=512, gpu_layers=-1))
    embd = tensor_bytes(tied, lambda t: t.name == "token_embd.weight")
    assert full.vram.weights_mb * MIB == tensor_bytes(tied, lambda t: True) - embd + embd
    assert full.ram.weights_mb * MIB == embd


def test_kv_cache_is_gqa_aware_padded_and_sized_by_type(smol):
    def kv(n_ctx, kv_type="f16"):
        return estimate(smol, LoadConfig(n_ctx=n_ctx, kv_type=kv_type, flash_attn=True)).ram.kv_mb

    # 30 layers x (3 KV heads x 64) x (K + V) x 2 bytes per cell: llama.cpp logs 90 MiB at 4096.
    assert kv(4096) == 90.0
    assert kv(4096 - KV_PAD + 1) == 90.0
    assert kv(4096, "q8_0") == pytest.approx(90.0 * 34 / 64)
    assert kv(4096, "q4_0") == pytest.approx(90.0 * 18 / 64)


def test_kv_cache_follows_layers_to_the_gpu(smol):
    est = estimate(smol, LoadConfig(n_ctx=4096, gpu_layers=10))  # the output layer and 9 blocks
    assert est.vram.kv_mb == pytest.approx(27.0) and est.ram.kv_mb == pytest.approx(63.0)


def test_compute_grows_with_context_and_shrinks_with_flash_attention(tmp_path):
    # A small vocabulary, so the attention scores (not the logits) set the peak.
    model = info(write_gguf(tmp_path / "m.gguf", n_head=16, n_embd=256, n_head_kv=4))

    def compute(n_ctx, fa=False):
        return estimate(model, LoadConfig(n_ctx=n_ctx, flash_attn=fa)).ram.compute_mb

    assert compute(2048) < compute(4096) < compute(8192)
    assert compute(8192, fa=True) < compute(8192) / 4


def test_cuda_context_is_counted_once_per_gpu(smol):
    one = estimate(smol, LoadConfig(n_ctx=2048, gpu_layers=-1, flash_attn=True))
    two = estimate(smol, LoadConfig(n_ctx=2048, gpu_layers=-1, flash_attn=True), n_gpus=2)
    assert one.vram.overhead_mb == CUDA_CONTEXT_MB  # quantized weights, flash attention: no cuBLAS
    assert two.vram_mb - one.vram_mb == pytest.approx(CUDA_CONTEXT_MB)


def test_cublas_costs_more_context(smol, untied):
    """Attention without flash attention, or float weight matrices, run cuBLAS on CUDA."""
    no_fa = estimate(smol, LoadConfig(n_ctx=2048, gpu_layers=-1))
    assert no_fa.vram.overhead_mb == CUDA_CONTEXT_MB + CUBLAS_MB
    f16 = estimate(untied, LoadConfig(n_ctx=512, gpu_layers=-1, flash_attn=True))
    assert f16.vram.overhead_mb == CUDA_CONTEXT_MB + CUBLAS_MB
    assert estimate(smol, LoadConfig(n_ctx=2048)).vram_mb == 0  # CPU only: no context at all


class TestVerdicts:
    def test_gpu_when_everything_fits(self, smol):
        c = plan(smol, n_ctx=4096, free_vram_mb=[8000], free_ram_mb=16000)
        assert (c.verdict, c.compatible, c.gpu_layers) == ("gpu", True, 31)
        assert c.reason.startswith("fits on the GPU")

    def test_partial_names_the_layers_that_fit(self, smol):
        full = plan(smol, n_ctx=4096, free_vram_mb=[8000], free_ram_mb=16000)
        free = full.vram_mb + HEADROOM_MB - 60  # 60 MiB short of a full offload
        c = plan(smol, n_ctx=4096, free_vram_mb=[free], free_ram_mb=16000)
        assert c.verdict == "partial" and 0 < c.gpu_layers < 30
        assert f"{c.gpu_layers} of 30 layers fit" in c.reason
        assert c.vram_mb <= free - HEADROOM_MB
        more = estimate(smol, LoadConfig(n_ctx=4096, gpu_layers=c.gpu_layers + 1))
        assert more.vram_mb > free - HEADROOM_MB  # it is the largest number that fits

    def test_cpu_without_a_gpu_is_valid(self, smol):
        c = plan(smol, n_ctx=4096, free_vram_mb=[], free_ram_mb=16000)
        assert (c.verdict, c.compatible, c.vram_mb) == ("cpu", True, 0)
        assert "no GPU found" in c.reason

    def test_a_context_over_the_trained_one_is_said_to_be(self, smol):
        assert smol.context_length == 8192
        within = plan(smol, n_ctx=8192, free_vram_mb=[], free_ram_mb=16000)
        over = plan(smol, n_ctx=131072, free_vram_mb=[], free_ram_mb=16000)
        assert "trained on" not in within.reason
        assert over.reason.endswith("n_ctx 131072 is over the 8192 tokens the model was trained on, "
                                    "past which its answers fall apart")

    def test_cpu_when_not_one_layer_fits(self, smol):
        c = plan(smol, n_ctx=4096, free_vram_mb=[300], free_ram_mb=16000)
        assert c.verdict == "cpu" and "not even one layer" in c.reason

    def test_none_when_ram_is_short_too(self, smol):
        c = plan(smol, n_ctx=4096, free_vram_mb=[100], free_ram_mb=100)
        assert (c.verdict, c.compatible) == ("none", False)
        assert "lower n_ctx" in c.reason

    def test_a_cpu_plan_leaves_the_ram_margin_free(self, smol):
        need = plan(smol, n_ctx=4096, free_vram_mb=[], free_ram_mb=16000).ram_mb
        roomy = plan(smol, n_ctx=4096, free_vram_mb=[], free_ram_mb=need + RAM_MARGIN_MB + 1)
        tight = plan(smol, n_ctx=4096, free_vram_mb=[], free_ram_mb=need + RAM_MARGIN_MB - 1)
        assert (roomy.verdict, tight.verdict) == ("cpu", "none")
        assert tight.available_ram_mb == round(need + RAM_MARGIN_MB - 1, 1)  # as the probe said
        assert "less 512 MiB kept for the system" in tight.reason

    def test_forced_layers_that_do_not_fit_say_how_many_would(self, smol):
        c = plan(smol, n_ctx=4096, free_vram_mb=[1450], free_ram_mb=16000, gpu_layers=-1)
        assert c.verdict == "none" and re.search(r"at most \d+ layers fit", c.reason)
        c = plan(smol, n_ctx=4096, free_vram_mb=[1050], free_ram_mb=16000, gpu_layers=-1)
        assert c.verdict == "none" and "not even one layer fits" in c.reason
        c = plan(smol, n_ctx=4096, free_vram_mb=[1450], free_ram_mb=16000, gpu_layers=3)
        assert (c.verdict, c.gpu_layers) == ("partial", 3)

    def test_quantized_kv_needs_flash_attention(self, smol):
        c = plan(smol, n_ctx=4096, free_vram_mb=[8000], free_ram_mb=16000, kv_type="q8_0")
        assert c.verdict == "none" and "flash attention" in c.reason
        c = plan(smol, n_ctx=4096, free_vram_mb=[8000], free_ram_mb=16000, kv_type="q8_0",
                 flash_attn=True)
        assert c.verdict == "gpu"

    def test_two_gpus_pool_their_memory(self, smol):
        full = plan(smol, n_ctx=4096, free_vram_mb=[8000], free_ram_mb=16000)
        half = (full.vram_mb + full.vram_breakdown.overhead_mb) / 2 + HEADROOM_MB + 10  # a context each
        assert plan(smol, n_ctx=4096, free_vram_mb=[half], free_ram_mb=16000).verdict == "partial"
        assert plan(smol, n_ctx=4096, free_vram_mb=[half, half], free_ram_mb=16000).verdict == "gpu"


def test_hf_estimates_scale_with_dtype_and_quantization(tmp_path):
    f32 = info(write_hf_folder(tmp_path / "f32", dtype="float32"))
    f16 = info(write_hf_folder(tmp_path / "f16", dtype="float16"))
    cfg = LoadConfig(n_ctx=1024, gpu_layers=-1)
    w32, w16 = estimate(f32, cfg).vram.weights_mb, estimate(f16, cfg).vram.weights_mb
    assert w32 == pytest.approx(f32.parameters * 4 / MIB)
    assert w16 == pytest.approx(w32 / 2)
    four = f16.model_copy(update={"shape": f16.shape.model_copy(update={"quant_bits": 4})})
    assert estimate(four, cfg).vram.weights_mb < w16 * 0.75


LOG_SIZES = re.compile(r"(CPU_Mapped model|CPU_REPACK model|CPU KV|CPU compute|CPU  output) "
                       r"buffer size =\s+([\d.]+) MiB")
PROBE = """
import sys, psutil
from llama_cpp import Llama
rss = psutil.Process().memory_info().rss
llm = Llama(sys.argv[1], n_ctx=int(sys.argv[2]), n_gpu_layers=0, verbose=True, seed=1)
llm.create_chat_completion([{"role": "user", "content": "Tell me about cats."}], max_tokens=48)
print("RSS_GROWTH", (psutil.Process().memory_info().rss - rss) / 2**20, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def smol_q4_0(tmp_path_factory):
    """SmolLM2's shape in Q4_0, zero-filled: llama.cpp repacks it on the CPU."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks" / "gpu"))
    from shapes import write

    return info(write(tmp_path_factory.mktemp("q4_0"), "smollm2-135m", "Q4_0"))


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", [2048, 4096])
@pytest.mark.parametrize("which", ["smol", "smol_q4_0"])
def test_cpu_estimate_matches_what_llama_cpp_allocates(request, which, n_ctx):
    """Within 15% of llama.cpp's own buffer log, and never below the RSS growth."""
    model = request.getfixturevalue(which)
    out = subprocess.run([sys.executable, "-c", PROBE, model.path, str(n_ctx)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    logged = LOG_SIZES.findall(out.stderr)
    assert any(kind == "CPU_REPACK model" for kind, _ in logged) == (which == "smol_q4_0")
    reported = sum(float(size) for _, size in logged)
    growth = float(re.search(r"RSS_GROWTH ([\d.]+)", out.stderr).group(1))
    est = plan(model, n_ctx=n_ctx, free_vram_mb=[], free_ram_mb=16000).ram_mb
    assert reported > 100
    assert abs(est - reported) / reported <= 0.15, (est, reported)
    assert est >= growth, (est, growth)


# llama.cpp's own "CPU compute buffer size" and KV size (MiB), logged by llama-cpp-python 0.3.36
# on this project's CPU machines for zero-filled GGUFs of real shapes (n_batch 512).
# (shape: n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab), n_ctx, flash_attn, n_ubatch, compute, kv
LLAMA_CPP_LOGS = [
    ((30, 576, 9, 3, 1536, 49152), 2048, False, 512, 99.377, 45.0),
    ((30, 576, 9, 3, 1536, 49152), 2048, True, 512, 102.514, 45.0),
    ((30, 576, 9, 3, 1536, 49152), 8192, False, 512, 166.385, 180.0),
    ((30, 576, 9, 3, 1536, 49152), 8192, True, 512, 98.252, 180.0),
    ((22, 2048, 32, 4, 5632, 32000), 2048, False, 512, 153.010, 44.0),
    ((22, 2048, 32, 4, 5632, 32000), 8192, False, 512, 549.010, 176.0),
    ((22, 2048, 32, 4, 5632, 32000), 8192, True, 512, 70.502, 176.0),
    ((24, 896, 14, 2, 4864, 151936), 2048, False, 512, 300.252, 24.0),
    ((24, 896, 14, 2, 4864, 151936), 8192, False, 512, 302.002, 96.0),
    ((32, 4096, 32, 8, 14336, 128256), 2048, True, 512, 266.502, 256.0),
    ((32, 4096, 32, 8, 14336, 128256), 8192, False, 512, 572.010, 1024.0),
    ((2, 2048, 32, 4, 5632, 1000), 8192, False, 128, 137.252, 16.0),
    ((2, 2048, 32, 4, 5632, 1000), 8192, True, 512, 57.014, 16.0),
    ((2, 4096, 32, 8, 14336, 1000), 2048, True, 512, 118.014, 16.0),
]


@pytest.mark.parametrize("dims, n_ctx, flash_attn, n_ubatch, compute, kv", LLAMA_CPP_LOGS)
def test_compute_and_kv_match_llama_cpp_logs(dims, n_ctx, flash_attn, n_ubatch, compute, kv):
    from zwaif_fallback import ModelInfo, ModelShape

    n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab = dims
    shape = ModelShape(n_embd=n_embd, n_ff=n_ff, n_heads=n_head, n_kv_heads=n_head_kv,
                       head_dim_k=n_embd // n_head, head_dim_v=n_embd // n_head, vocab_size=n_vocab)
    model = ModelInfo(name="shape", path="-", format="gguf", source="test", n_layers=n_layer,
                      shape=shape)
    est = estimate(model, LoadConfig(n_ctx=n_ctx, flash_attn=flash_attn, n_ubatch=n_ubatch))
    assert est.ram.kv_mb == pytest.approx(kv)
    assert est.ram.compute_mb == pytest.approx(compute, rel=0.05)
