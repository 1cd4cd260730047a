"""Tiny real models for tests: GGUF files with a byte-level BPE vocabulary, HF folders.

The GGUF files are complete: llama.cpp can load them (random weights, so the
text is nonsense, but tokenization, templates and memory use are real).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_vocab(n_extra: int = 0) -> tuple[list[str], list[int], list[str]]:
    """GPT-2 style tokens: the 256 byte symbols, a few merges, ChatML specials."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    mapping = {}
    extra = 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    tokens = [mapping[b] for b in range(256)]
    merges = ["Ġ t", "h e", "i n", "Ġ a", "e r"]
    tokens += ["Ġt", "he", "in", "Ġa", "er"]
    tokens += [f"w{i}" for i in range(n_extra)]
    types = [1] * len(tokens)
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        tokens.append(special)
        types.append(3)
    return tokens, types, merges


def write_gguf(
    path: Path,
    *,
    arch: str = "llama",
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_ctx_train: int = 2048,
    tied: bool = False,
    weight_type: str = "F32",
    tokens: Sequence[str] | None = None,
    merges: Sequence[str] | None = None,
    seed: int = 0,
    extra_kv: dict[str, object] | None = None,
) -> Path:
    """Write a complete, loadable GGUF model with random weights."""
    import gguf

    rng = np.random.default_rng(seed)
    tok, types, default_merges = byte_level_vocab()
    if tokens is not None:
        tok, types = list(tokens), [1] * len(tokens)
    merges = default_merges if merges is None else merges
    n_vocab = len(tok)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny-test")
    writer.add_block_count(n_layer)
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_file_type(0 if weight_type == "F32" else 1 if weight_type == "F16" else 7)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tok)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(list(merges))
    eos = tok.index("<|im_end|>") if "<|im_end|>" in tok else n_vocab - 1
    writer.add_bos_token_id(tok.index("<|endoftext|>") if "<|endoftext|>" in tok else 0)
    writer.add_eos_token_id(eos)
    writer.add_chat_template(CHATML)
    for key, value in (extra_kv or {}).items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_string(key, str(value))

    def add(name: str, shape: tuple[int, ...], matrix: bool = True) -> None:
        data = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if not matrix or weight_type == "F32":
            writer.add_tensor(name, data)
        elif weight_type == "F16":
            writer.add_tensor(name, data.astype(np.float16))
        else:
            qtype = gguf.GGMLQuantizationType[weight_type]
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    head_dim = n_embd // n_head
    add("token_embd.weight", (n_vocab, n_embd))
    for i in range(n_layer):
        add(f"blk.{i}.attn_norm.weight", (n_embd,), matrix=False)
        add(f"blk.{i}.attn_q.weight", (n_embd, n_embd))
        add(f"blk.{i}.attn_k.weight", (n_head_kv * head_dim, n_embd))
        add(f"blk.{i}.attn_v.weight", (n_head_kv * head_dim, n_embd))
        add(f"blk.{i}.attn_output.weight", (n_embd, n_embd))
        add(f"blk.{i}.ffn_norm.weight", (n_embd,), matrix=False)
        add(f"blk.{i}.ffn_gate.weight", (n_ff, n_embd))
        add(f"blk.{i}.ffn_up.weight", (n_ff, n_embd))
        add(f"blk.{i}.ffn_down.weight", (n_embd, n_ff))
    add("output_norm.weight", (n_embd,), matrix=False)
    if not tied:
        add("output.weight", (n_vocab, n_embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_sparse_gguf(path: Path, *, n_vocab: int, token_len: int = 6, merges: bool = True,
                      n_embd: int = 64) -> Path:
    """A GGUF with a big vocabulary and zero-filled (sparse) weights: a real header, no data."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(4096)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_embd * 2)
    writer.add_head_count(4)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"{i:0{token_len}d}" for i in range(n_vocab)])
    writer.add_token_types([1] * n_vocab)
    if merges:
        writer.add_token_merges([f"{i} {i + 1}" for i in range(n_vocab)])
    nbytes = n_vocab * n_embd * 2
    writer.add_tensor_info("token_embd.weight", (n_vocab, n_embd), np.dtype(np.float16), nbytes,
                           raw_dtype=gguf.GGMLQuantizationType.F16)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    size = os.path.getsize(path)
    with open(path, "r+b") as handle:
        handle.truncate(size + nbytes + 64)
    return path


def write_hf_folder(
    folder: Path,
    *,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    n_vocab: int = 300,
    dtype: str = "float32",
    pickle_only: bool = False,
    shards: int = 1,
    seed: int = 0,
) -> Path:
    """An HF Llama folder: config.json and safetensors weights written with numpy."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np_dtype = {"float32": np.float32, "float16": np.float16}[dtype]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": n_embd, "intermediate_size": n_ff, "num_hidden_layers": n_layer,
        "num_attention_heads": n_head, "num_key_value_heads": n_head_kv,
        "vocab_size": n_vocab, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
        "torch_dtype": dtype, "tie_word_embeddings": False,
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    head_dim = n_embd // n_head
    shapes = {"model.embed_tokens.weight": (n_vocab, n_embd), "model.norm.weight": (n_embd,),
              "lm_head.weight": (n_vocab, n_embd)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (n_embd, n_embd),
            p + "self_attn.k_proj.weight": (n_head_kv * head_dim, n_embd),
            p + "self_attn.v_proj.weight": (n_head_kv * head_dim, n_embd),
            p + "self_attn.o_proj.weight": (n_embd, n_embd),
            p + "mlp.gate_proj.weight": (n_ff, n_embd),
            p + "mlp.up_proj.weight": (n_ff, n_embd),
            p + "mlp.down_proj.weight": (n_embd, n_ff),
            p + "input_layernorm.weight": (n_embd,),
            p + "post_attention_layernorm.weight": (n_embd,),
        }
    tensors = {k: (rng.standard_normal(s) * 0.02).astype(np_dtype) for k, s in shapes.items()}
    if pickle_only:
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
        return folder
    names = sorted(tensors)
    if shards == 1:
        save_file(tensors, str(folder / "model.safetensors"))
        return folder
    weight_map = {}
    for s in range(shards):
        part = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {k: tensors[k] for k in names[s::shards]}
        save_file(chunk, str(folder / part))
        weight_map |= {k: part for k in chunk}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}), encoding="utf-8")
    return folder


def gguf_bytes(*, n_tensors: int = 0, kv: Sequence[bytes] = (), version: int = 3,
               n_kv: int | None = None) -> bytes:
    """A hand-made GGUF header for broken-file tests."""
    head = b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kv) if n_kv is None else n_kv)
    return head + b"".join(kv)


def kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + struct.pack("<Q", len(v)) + v


def write_hf_chat_model(folder: Path, *, seed: int = 0, adds_bos: bool = False) -> Path:
    """An HF Llama folder transformers can load and chat with: weights, a byte-level BPE
    tokenizer trained here, and a ChatML template; ``adds_bos``: its tokenizer puts the BOS
    before a text, as Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["hello world, the cat sat on the mat; red green blue"] * 20, trainer)
    if adds_bos:
        bos = ("<|endoftext|>", tok.token_to_id("<|endoftext|>"))
        tok.post_processor = processors.TemplateProcessing(single=f"{bos[0]} $A", special_tokens=[bos])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    write_hf_folder(folder, n_vocab=max(300, len(fast)), seed=seed)
    fast.save_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    config.update(bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                  pad_token_id=fast.pad_token_id)
    (folder / "config.json").write_text(json.dumps(config))
    return folder
