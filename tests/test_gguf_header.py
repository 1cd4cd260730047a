from __future__ import annotations

import struct
from pathlib import Path

import gguf
import pytest
from builders import gguf_bytes, kv_string, write_gguf, write_sparse_gguf

from zwaif_fallback import InvalidModelFile
from zwaif_fallback.ggml import GGML_TYPES
from zwaif_fallback.gguf_header import ArrayInfo, read_gguf_header


def assert_same_as_gguf_reader(path: Path) -> None:
    ours = read_gguf_header(path)
    theirs = gguf.GGUFReader(str(path))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for mine, ref in zip(ours.tensors, theirs.tensors, strict=False):
        assert mine.shape == tuple(int(d) for d in ref.shape)
        assert mine.ggml_type == int(ref.tensor_type)
        assert mine.nbytes == int(ref.n_bytes)
        assert ours.data_offset + mine.offset == ref.data_offset


def test_ggml_block_sizes_match_the_gguf_package():
    for type_id, t in GGML_TYPES.items():
        if t.name == "Q8_1":
            continue  # gguf-py still says 40 bytes; ggml's block_q8_1 is two halves + 32 int8 = 36
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(type_id)] == (
            t.block_size, t.type_size), t.name


def test_reads_metadata_and_tensor_table(tiny_gguf):
    header = read_gguf_header(tiny_gguf)
    meta = header.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["llama.block_count"] == 2 and meta["llama.attention.head_count_kv"] == 2
    assert isinstance(meta["tokenizer.ggml.tokens"], ArrayInfo)
    assert meta["tokenizer.chat_template"].startswith("{% for message")
    assert_same_as_gguf_reader(tiny_gguf)


def test_steps_over_a_big_vocabulary_exactly(tmp_path):
    path = write_sparse_gguf(tmp_path / "big.gguf", n_vocab=150_000)
    header = read_gguf_header(path)
    assert header.metadata["tokenizer.ggml.tokens"] == ArrayInfo(8, 150_000)
    assert header.metadata["tokenizer.ggml.merges"] == ArrayInfo(8, 150_000)
    assert_same_as_gguf_reader(path)


@pytest.mark.parametrize("odd", ["long", "nul", "empty", "mixed"])
def test_unusual_token_strings_do_not_derail_the_walk(tmp_path, odd):
    tokens = [f"t{i}" for i in range(3000)]
    for i in range(0, 3000, 97):
        if odd in ("long", "mixed"):
            tokens[i] = f"L{i}" + "x" * (300 + i % 700)  # past the 256-byte fast path
        if odd in ("nul", "mixed"):
            tokens[i + 1] = f"n{i}\x00\x00\x00\x00\x00\x00\x00\x00z"  # looks like a length field
        if odd in ("empty", "mixed"):
            tokens[i + 2] = ""
    if odd == "empty":
        tokens = [t if t else "" for t in tokens]
    path = write_gguf(tmp_path / "odd.gguf", tokens=tokens, merges=[])
    assert read_gguf_header(path).metadata["tokenizer.ggml.tokens"].count == 3000
    assert_same_as_gguf_reader(path)


def corrupt(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "broken.gguf"
    path.write_bytes(data)
    with pytest.raises(InvalidModelFile) as err:
        read_gguf_header(path)
    return err.value.reason


def test_wrong_magic(tmp_path):
    assert "not a GGUF file" in corrupt(tmp_path, b"PK\x03\x04" + b"\0" * 60)
    assert "not a GGUF file" in corrupt(tmp_path, b"hello")


def test_empty_file(tmp_path):
    assert "truncated" in corrupt(tmp_path, b"")


def test_unsupported_version(tmp_path):
    assert "version 1" in corrupt(tmp_path, gguf_bytes(version=1) + b"\0" * 16)


def test_absurd_counts(tmp_path):
    assert "absurd tensor count" in corrupt(tmp_path, gguf_bytes(n_tensors=2**62) + b"\0" * 64)
    assert "absurd metadata count" in corrupt(tmp_path, gguf_bytes(n_kv=2**40) + b"\0" * 64)


def test_absurd_string_length(tmp_path):
    key = struct.pack("<Q", 2**60) + b"x" * 40
    assert "truncated" in corrupt(tmp_path, gguf_bytes(kv=[key], n_kv=1))


def test_absurd_array_length(tmp_path):
    kv = struct.pack("<Q", 3) + b"arr" + struct.pack("<IIQ", 9, 8, 2**50) + b"\0" * 64
    assert "more than the file can hold" in corrupt(tmp_path, gguf_bytes(kv=[kv], n_kv=1))


def test_unknown_value_type(tmp_path):
    kv = struct.pack("<Q", 3) + b"key" + struct.pack("<I", 99) + b"\0" * 64
    assert "unknown value type 99" in corrupt(tmp_path, gguf_bytes(kv=[kv], n_kv=1))


def tensor_entry(name: str, dims: list[int], type_id: int, offset: int = 0) -> bytes:
    raw = name.encode()
    return (struct.pack("<Q", len(raw)) + raw + struct.pack("<I", len(dims))
            + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", type_id, offset))


def test_bad_tensor_entries(tmp_path):
    arch = kv_string("general.architecture", "llama")
    dims = gguf_bytes(n_tensors=1, kv=[arch]) + tensor_entry("w", [2] * 7, 0) + b"\0" * 64
    assert "7 dimensions" in corrupt(tmp_path, dims)
    kind = gguf_bytes(n_tensors=1, kv=[arch]) + tensor_entry("w", [4], 77) + b"\0" * 64
    assert "unknown ggml type 77" in corrupt(tmp_path, kind)
    past = gguf_bytes(n_tensors=1, kv=[arch]) + tensor_entry("w", [64, 64], 0) + b"\0" * 64
    assert "incomplete" in corrupt(tmp_path, past)


def test_every_truncation_of_a_real_file_is_reported(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    header_end = read_gguf_header(tiny_gguf).data_offset
    cuts = sorted(set(range(0, header_end, max(1, header_end // 300))) | {header_end, len(data) - 1})
    for cut in cuts:
        path = tmp_path / "cut.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(InvalidModelFile):
            read_gguf_header(path)


def test_a_directory_is_not_read(tmp_path):
    folder = tmp_path / "dir.gguf"
    folder.mkdir()
    with pytest.raises(InvalidModelFile, match="cannot read"):
        read_gguf_header(folder)
