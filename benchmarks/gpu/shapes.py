"""Zero-filled GGUF files of real model shapes, for memory measurements.

A model's memory does not depend on its weight values, so a GGUF with a real
header and sparse zeros for data measures like the real file. Needs only numpy
and the ``gguf`` package (it runs on the GPU machine too).

Usage: python shapes.py OUTDIR [NAME-TYPE ...]    (default: every shape below)
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np

# name: (arch, n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, tied output, qkv bias)
SHAPES = {
    "smollm2-135m": ("llama", 30, 576, 9, 3, 1536, 49152, True, False),
    "tinyllama-1.1b": ("llama", 22, 2048, 32, 4, 5632, 32000, False, False),
    "qwen2-0.5b": ("qwen2", 24, 896, 14, 2, 4864, 151936, False, True),
    "llama3-8b": ("llama", 32, 4096, 32, 8, 14336, 128256, False, False),
}
TYPES = ("F16", "Q4_0", "Q8_0")


def vocabulary(n: int) -> list[str]:
    """Unique token strings (a duplicate makes llama.cpp abort): 256 byte symbols, then words."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    symbols = [chr(b) if b in printable else chr(next(extra)) for b in range(256)]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    words = [f"w{i}" for i in range(n - len(symbols) - len(specials))]
    return symbols + words + specials


def tensors(arch: str, n_layer: int, e: int, heads: int, kv_heads: int, ff: int, vocab: int,
            tied: bool, bias: bool) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, numpy-order shape, is a weight matrix) in llama.cpp's naming."""
    kv = e // heads * kv_heads
    out = [("token_embd.weight", (vocab, e), True)]
    for i in range(n_layer):
        p = f"blk.{i}."
        out += [(p + "attn_norm.weight", (e,), False), (p + "attn_q.weight", (e, e), True),
                (p + "attn_k.weight", (kv, e), True), (p + "attn_v.weight", (kv, e), True)]
        if bias:
            out += [(p + "attn_q.bias", (e,), False), (p + "attn_k.bias", (kv,), False),
                    (p + "attn_v.bias", (kv,), False)]
        out += [(p + "attn_output.weight", (e, e), True), (p + "ffn_norm.weight", (e,), False),
                (p + "ffn_gate.weight", (ff, e), True), (p + "ffn_up.weight", (ff, e), True),
                (p + "ffn_down.weight", (e, ff), True)]
    out.append(("output_norm.weight", (e,), False))
    if not tied:
        out.append(("output.weight", (vocab, e), True))
    return out


def write(folder: Path, name: str, weight_type: str) -> Path:
    arch, n_layer, e, heads, kv_heads, ff, vocab, tied, bias = SHAPES[name]
    path = folder / f"{name}-{weight_type}.gguf"
    writer = model_writer(path, name, arch, getattr(gguf.LlamaFileType, f"MOSTLY_{weight_type}"),
                          n_layer, e, heads, kv_heads, ff)
    tokens = vocabulary(vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (vocab - 3) + [3] * 3)
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(vocab - 3)
    writer.add_eos_token_id(vocab - 1)
    layout = tensors(arch, n_layer, e, heads, kv_heads, ff, vocab, tied, bias)
    return write_sparse(writer, path, [(t, shape, weight_type if matrix else "F32")
                                       for t, shape, matrix in layout])


def model_writer(path: Path, name: str, arch: str, file_type: int, n_layer: int, e: int,
                 heads: int, kv_heads: int, ff: int) -> gguf.GGUFWriter:
    """A writer holding a model's hyperparameters; the vocabulary and tensors come next."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"{name} zeros")
    writer.add_file_type(file_type)
    writer.add_context_length(32768)
    writer.add_embedding_length(e)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(e // heads)
    writer.add_layer_norm_rms_eps(1e-6)
    return writer


def write_sparse(writer: gguf.GGUFWriter, path: Path,
                 layout: list[tuple[str, tuple[int, ...], str]]) -> Path:
    """Declare each (name, numpy-order shape, ggml type name) tensor, write the header the
    writer holds, and give the file its full size in sparse zeros (no disk used)."""
    size = 0
    for tensor, shape, type_name in layout:
        kind = getattr(gguf.GGMLQuantizationType, type_name)
        block, type_size = gguf.GGML_QUANT_SIZES[kind]
        nbytes = int(np.prod(shape)) // block * type_size
        writer.add_tensor_info(tensor, shape, np.dtype(np.float32), nbytes, raw_dtype=kind)
        size += -(-nbytes // writer.data_alignment) * writer.data_alignment
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.flush()
    header = writer.fout[0].tell()
    writer.close()
    with open(path, "r+b") as handle:
        handle.truncate(-(-header // writer.data_alignment) * writer.data_alignment + size)
    return path


def main(argv: list[str]) -> None:
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    wanted = argv[1:] or [f"{n}-{t}" for n in SHAPES for t in ("F16", "Q4_0")]
    for item in wanted:
        name, weight_type = item.rsplit("-", 1)
        print(write(folder, name, weight_type))


if __name__ == "__main__":
    main(sys.argv[1:])
