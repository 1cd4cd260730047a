"""Fuzzing the two header readers with generated files (hypothesis).

Every file must give a header or an InvalidModelFile: no other exception, no
read slower than hypothesis' 1 s deadline, and less than 100 MB allocated
(tracemalloc) whatever sizes the file claims.
"""

from __future__ import annotations

import struct
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from builders import write_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zwaif_fallback import InvalidModelFile
from zwaif_fallback.gguf_header import read_gguf_header
from zwaif_fallback.safetensors_header import read_safetensors_header

MAX_ALLOCATED = 100 * 1024 * 1024
FUZZ = settings(max_examples=5000, deadline=1000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WORK = Path(tempfile.mkdtemp(prefix="zwaif-fuzz-"))
SEED_GGUF = write_gguf(WORK / "seed.gguf", n_layer=1, n_embd=32, n_head=2, n_head_kv=1, n_ff=64)
SEED_BYTES = SEED_GGUF.read_bytes()


def read_safely(reader, data: bytes) -> None:
    path = WORK / "case.bin"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        reader(path)
    except InvalidModelFile:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MAX_ALLOCATED, f"allocated {peak / 2**20:.0f} MiB"


# -- GGUF ---------------------------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
u64 = st.one_of(st.integers(0, 64), st.integers(0, 2**64 - 1))
small_text = st.binary(max_size=24)


@st.composite
def gguf_value(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 13))
    if kind in (8,):
        text = draw(small_text)
        length = draw(st.one_of(st.just(len(text)), u64))
        return struct.pack("<IQ", kind, length) + text
    if kind == 9:
        etype = draw(st.integers(0, 13))
        count = draw(u64)
        body = draw(st.binary(max_size=64))
        return struct.pack("<IIQ", kind, etype, count) + body
    return struct.pack("<I", kind) + draw(st.binary(min_size=0, max_size=8))


@st.composite
def gguf_files(draw: st.DrawFn) -> bytes:
    magic = draw(st.sampled_from([b"GGUF", b"GGUF", b"GGUF", b"GGML", b"\x00\x00\x00\x00"]))
    version = draw(st.sampled_from([3, 3, 2, 1, 4, 2**31]))
    n_tensors, n_kv = draw(u64), draw(u64)
    kvs = b"".join(
        struct.pack("<Q", len(key)) + key + draw(gguf_value())
        for key in draw(st.lists(st.binary(min_size=1, max_size=16), max_size=6)))
    tensors = b"".join(
        struct.pack("<Q", len(name)) + name + struct.pack("<I", dims)
        + b"".join(struct.pack("<Q", draw(u64)) for _ in range(min(dims, 5)))
        + struct.pack("<IQ", draw(st.integers(0, 45)), draw(u64))
        for name, dims in draw(st.lists(st.tuples(st.binary(min_size=1, max_size=12),
                                                  st.integers(0, 6)), max_size=4)))
    tail = draw(st.binary(max_size=256))
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv) + kvs + tensors + tail


@FUZZ
@given(gguf_files())
def test_gguf_reader_survives_generated_headers(data):
    read_safely(read_gguf_header, data)


@FUZZ
@given(st.data())
def test_gguf_reader_survives_mutations_of_a_real_file(data):
    raw = bytearray(SEED_BYTES)
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.just(len(raw)), st.integers(0, len(raw))))
    read_safely(read_gguf_header, bytes(raw[:cut]))


# -- safetensors ----------------------------------------------------------------------------

json_scalar = st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=8), st.none(), st.booleans())
entry = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F16", "BF16", "F32", "I8", "U8", "F8_E4M3"]), st.text(max_size=6)),
    "shape": st.lists(st.one_of(st.integers(-4, 2**40), json_scalar), max_size=5),
    "data_offsets": st.lists(st.one_of(st.integers(-10, 2**62), json_scalar), max_size=3),
})


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    import json

    header = draw(st.dictionaries(st.text(max_size=10), st.one_of(entry, json_scalar), max_size=5))
    text = json.dumps(header).encode()
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]  # broken JSON
    length = draw(st.one_of(st.just(len(text)), u64))
    return struct.pack("<Q", length) + text + draw(st.binary(max_size=256))


@settings(max_examples=10000, deadline=1000, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(safetensors_files())
def test_safetensors_reader_survives_generated_headers(data):
    read_safely(read_safetensors_header, data)


@pytest.mark.parametrize("claimed", [2**63, 100 * 2**20, 2**32])
def test_a_huge_claimed_header_is_not_allocated(claimed):
    read_safely(read_safetensors_header, struct.pack("<Q", claimed) + b"{}")


@pytest.mark.parametrize("reader", ["gguf", "safetensors"])
def test_coverage_guided_fuzzing_with_atheris(reader, tmp_path):
    """5,000 inputs a reader under libFuzzer: no crash, none over 1 s, no allocation of 100 MB."""
    import importlib.util
    import subprocess
    import sys

    from conftest import ROOT

    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed on this platform")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "seed").write_bytes(SEED_BYTES[:4096] if reader == "gguf" else
                                  struct.pack("<Q", 2) + b"{}")
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz_atheris.py"), reader, str(corpus),
         "-runs=5000", "-max_len=4096", "-timeout=1", "-malloc_limit_mb=100", "-seed=1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 5000 runs" in run.stderr
