"""llama.cpp's no_alloc dry run against real loads of the same plan, on this machine's library.

A real load runs in a child with llama-cpp-python's ``Llama(verbose=True)``; its log's
buffer lines are parsed here, independently of ``dry_run_log``'s parser.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from builders import write_gguf

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from bench_dry_run import REAL_LOAD  # noqa: E402

from zwaif_fallback.dry_run import _reason, dry_run
from zwaif_fallback.dry_run_log import DryRun
from zwaif_fallback.errors import BackendUnavailable, ModelLoadError
from zwaif_fallback.memory import LoadConfig

BUFFER = re.compile(r"(\S+)\s+(model|KV|output|compute) buffer size =\s*([\d.]+) MiB")
FIELD = {"model": "weights_mb", "KV": "kv_mb", "output": "output_mb", "compute": "compute_mb"}
# llama.cpp logs sizes to 0.01 MiB and pads each tensor to the buffer's alignment.
TOLERANCE_MB = 0.05


def real_buffers(path: Path, config: LoadConfig, *, use_mmap: bool) -> dict[tuple[str, str], float]:
    """(buffer, field) -> MiB, from the log of a real load in a child."""
    plan = json.dumps({**config.model_dump(), "use_mmap": use_mmap})
    child = subprocess.run([sys.executable, "-c", REAL_LOAD, str(path), plan], capture_output=True,
                           text=True, timeout=120, check=True)
    found: dict[tuple[str, str], float] = {}
    for name, kind, mb in BUFFER.findall(child.stderr):
        found[name, FIELD[kind]] = found.get((name, FIELD[kind]), 0.0) + float(mb)
    return found


def dry_buffers(dry: DryRun) -> dict[tuple[str, str], float]:
    return {(name, field): mb for name, device in dry.devices.items()
            for field, mb in device.model_dump().items() if mb}


@pytest.fixture(scope="module")
def q4_0_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Q4_0 weights, which llama.cpp repacks (CPU_REPACK) on CPUs with AVX2 or NEON."""
    return write_gguf(tmp_path_factory.mktemp("q4") / "q4_0.gguf", weight_type="Q4_0", n_layer=4,
                      n_embd=256, n_head=4, n_head_kv=2, n_ff=1024)


@pytest.mark.parametrize("model", ["smollm2", "q4_0_gguf"])
def test_the_dry_run_matches_a_real_unmapped_load_buffer_for_buffer(model, request):
    path = request.getfixturevalue(model)
    config = LoadConfig(n_ctx=1024)
    dry = dry_run(path, config)
    real = real_buffers(path, config, use_mmap=False)
    real = {key: mb for key, mb in real.items() if mb}
    assert dry_buffers(dry).keys() == real.keys()
    for key, mb in real.items():
        assert dry_buffers(dry)[key] == pytest.approx(mb, abs=TOLERANCE_MB), key


def test_repacked_weights_are_counted_in_their_own_buffer(q4_0_gguf):
    dry = dry_run(q4_0_gguf, LoadConfig(n_ctx=512))
    real = real_buffers(q4_0_gguf, LoadConfig(n_ctx=512), use_mmap=False)
    if ("CPU_REPACK", "weights_mb") not in real:
        pytest.skip("this CPU has no repacked kernels for Q4_0")
    assert dry.weights_by == "tensor"
    assert dry.devices["CPU_REPACK"].weights_mb == pytest.approx(real["CPU_REPACK", "weights_mb"],
                                                                 abs=TOLERANCE_MB)
    # Unmapped, each weight is in one buffer: together they are the file's weights.
    total = sum(d.weights_mb for d in dry.devices.values())
    assert total == pytest.approx(dry.model_mb, abs=TOLERANCE_MB)


def test_kv_and_compute_match_a_mapped_load_with_flash_attention_and_q8_0_cache(smollm2):
    config = LoadConfig(n_ctx=2048, flash_attn=True, kv_type="q8_0", n_batch=256, n_ubatch=256)
    dry = dry_run(smollm2, config)
    real = real_buffers(smollm2, config, use_mmap=True)
    cpu = dry.devices["CPU"]
    assert cpu.kv_mb == pytest.approx(real["CPU", "kv_mb"], abs=TOLERANCE_MB)
    assert cpu.compute_mb == pytest.approx(real["CPU", "compute_mb"], abs=TOLERANCE_MB)
    assert cpu.output_mb == pytest.approx(real["CPU", "output_mb"], abs=TOLERANCE_MB)
    assert dry.model_mb == pytest.approx(real["CPU_Mapped", "weights_mb"], abs=TOLERANCE_MB)
    assert (dry.n_ctx, dry.n_layers, dry.gpu_layers, dry.vram_mb) == (2048, 30, 0, 0.0)


def test_cpu_only_reports_no_vram_whatever_the_gpu_layers(smollm2):
    dry = dry_run(smollm2, LoadConfig(n_ctx=512, gpu_layers=-1), cpu_only=True)
    assert dry.vram_mb == 0.0 and dry.gpu_layers == 0
    assert dry.ram_mb == pytest.approx(sum(d.total_mb for d in dry.devices.values()), abs=0.01)


@pytest.mark.parametrize("damage", ["bad K/V shape", "truncated", "not a model"])
def test_a_damaged_file_raises_model_load_error_and_stays_refused(damage, tmp_path, tiny_gguf,
                                                                  monkeypatch):
    path = tmp_path / "damaged.gguf"
    if damage == "bad K/V shape":
        write_gguf(path, n_embd=64, n_head=4, n_head_kv=3)  # llama.cpp aborts on 64 % 3
    elif damage == "truncated":
        data = tiny_gguf.read_bytes()
        path.write_bytes(data[: len(data) * 3 // 4])
    else:
        path.write_bytes(b"GGUF" + b"\xff" * 4096)
    with pytest.raises(ModelLoadError, match="damaged.gguf .*damaged or unsupported"):
        dry_run(path, LoadConfig(n_ctx=256))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(ModelLoadError):  # from the cache: no child could start now
        dry_run(path, LoadConfig(n_ctx=256))


# A process whose locale encoding is not UTF-8, as Windows' ANSI code page (cp1252, cp1251) is
# not, with stdio in UTF-8 as many Windows users set it; -X utf8=0 is for this process only.
NOT_UTF8_LOCALE = {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "utf-8"}
DRY_RUN_IN_THAT_LOCALE = """
import sys
from zwaif_fallback.dry_run import dry_run
from zwaif_fallback.memory import LoadConfig
try:
    dry_run(sys.argv[1], LoadConfig(n_ctx=256))
except Exception as exc:
    from zwaif_fallback.errors import ModelLoadError
    print("ModelLoadError" if isinstance(exc, ModelLoadError) else type(exc).__name__, ascii(str(exc)))
"""


def test_a_refusal_naming_a_path_outside_the_locale_encoding_is_model_load_error(tmp_path, tiny_gguf):
    folder = tmp_path / "Иван"  # llama.cpp's messages name the file, in UTF-8
    folder.mkdir()
    data = tiny_gguf.read_bytes()
    (folder / "damaged.gguf").write_bytes(data[:64])  # cut in its header: llama.cpp names the file
    run = subprocess.run([sys.executable, "-X", "utf8=0", "-c", DRY_RUN_IN_THAT_LOCALE,
                          str(folder / "damaged.gguf")], capture_output=True, text=True,
                         env=dict(os.environ, **NOT_UTF8_LOCALE), timeout=120)
    assert run.stdout.startswith("ModelLoadError"), run.stdout + run.stderr[-2000:]
    assert ascii("Иван")[1:-1] in run.stdout


def test_a_plan_llama_cpp_refuses_names_the_reason(tiny_gguf):
    with pytest.raises(ModelLoadError, match="quantized V cache requires flash_attn"):
        dry_run(tiny_gguf, LoadConfig(n_ctx=256, kv_type="q8_0", flash_attn=False))


@pytest.mark.parametrize("built_in", ["/home/runner/work/llama.cpp/ggml/src/",
                                      "D:\\a\\llama-cpp-python\\vendor\\"])
def test_an_assert_is_named_without_the_build_machines_folders(built_in):
    stderr = f"load: done\n{built_in}ggml.c:3354: GGML_ASSERT(a/b <= c) failed\n"
    assert _reason(stderr) == "ggml.c:3354: GGML_ASSERT(a/b <= c) failed"


def test_the_cache_answers_the_same_file_and_plan_without_a_child(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "cached.gguf")
    first = dry_run(path, LoadConfig(n_ctx=256))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python"))  # no child can start
    assert dry_run(path, LoadConfig(n_ctx=256)) is first
    with pytest.raises(BackendUnavailable, match="cannot start"):
        dry_run(path, LoadConfig(n_ctx=512))
    with pytest.raises(BackendUnavailable):
        dry_run(path, LoadConfig(n_ctx=256), cpu_only=True)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(BackendUnavailable):  # a changed file is dry-run again
        dry_run(path, LoadConfig(n_ctx=256))


def test_a_timeout_raises_and_is_not_cached(tiny_gguf):
    config = LoadConfig(n_ctx=768)
    with pytest.raises(ModelLoadError, match="did not finish"):
        dry_run(tiny_gguf, config, timeout_s=0.001)
    assert dry_run(tiny_gguf, config).n_ctx == 768


def test_a_child_without_llama_cpp_raises_backend_unavailable(tiny_gguf, tmp_path, monkeypatch):
    fake = tmp_path / "site" / "llama_cpp"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libllama.so: cannot open shared object')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    with pytest.raises(BackendUnavailable, match="pip install"):
        dry_run(tiny_gguf, LoadConfig(n_ctx=320))
