"""What one model is, read from its files' headers: ``ModelInfo``.

GGUF: the metadata and tensor table (``gguf_header``). HF folders: config.json
and the safetensors headers. No weights are read, nothing is loaded. A file
that is not what it claims becomes a ``ModelInfo`` with ``valid=False`` and a
reason, never an exception.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ._model import Model
from .errors import InvalidModelFile
from .ggml import FILE_TYPES, GGML_TYPES
from .gguf_header import ArrayInfo, GGUFHeader, read_gguf_header
from .locations import Candidate, weight_files
from .safetensors_header import DTYPE_BYTES, read_safetensors_header

__all__ = ["ModelInfo", "ModelShape", "TensorSummary", "displayable", "gguf_model_info",
           "inspect_candidate"]

ModelFormat = Literal["gguf", "transformers"]
_LAYER_RE = re.compile(r"(?:^|\.)(?:blk|layers|h|block|blocks)\.(\d+)\.")


class TensorSummary(Model):
    """One weight tensor: what the estimator needs of it."""

    name: str
    dtype: str  # ggml type name (GGUF) or safetensors dtype (HF)
    n_elements: int
    nbytes: int
    layer: int | None = None  # the block it belongs to; None for embeddings, output, norms


class ModelShape(Model):
    """The dimensions that decide memory: per-layer weights, attention geometry, vocabulary."""

    n_embd: int | None = None
    n_ff: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    n_kv_heads_per_layer: list[int] | None = None
    head_dim_k: int | None = None
    head_dim_v: int | None = None
    vocab_size: int | None = None
    dtype: str | None = None  # HF: the dtype the weights are stored in
    quant_bits: int | None = None  # HF: 8 or 4 with bitsandbytes
    tensors: list[TensorSummary] = Field(default_factory=list)

    def kv_heads(self, layer: int) -> int:
        if self.n_kv_heads_per_layer and layer < len(self.n_kv_heads_per_layer):
            return self.n_kv_heads_per_layer[layer]
        return self.n_kv_heads or self.n_heads or 0


class ModelInfo(Model):
    """A discovered model. ``valid=False`` entries carry the reason in ``error``."""

    name: str
    path: str
    format: ModelFormat
    source: str
    size_bytes: int = 0
    architecture: str | None = None
    parameters: int | None = None
    quantization: str | None = None
    context_length: int | None = None
    n_layers: int | None = None
    valid: bool = True
    error: str | None = None
    shape: ModelShape | None = Field(default=None, exclude=True, repr=False)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / (1024 * 1024)

    @property
    def usable(self) -> bool:
        """Whether a local backend can run it: what fallback, ranking and benchmarks consider."""
        return self.valid


def displayable(text: str) -> str:
    """``text`` with each byte that is not UTF-8 written as a ``\\xNN`` escape.

    A Linux file name that is not UTF-8 (one from a cp1252 zip) reaches Python with such
    bytes as lone surrogates, which SQLite, JSON, the log file and the UI cannot encode.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (a Windows name)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def inspect_candidate(candidate: Candidate, *, allow_pickle: bool = False) -> ModelInfo:
    """Read a candidate's headers into a ``ModelInfo`` (never raises for a bad file)."""
    base = ModelInfo(name=displayable(candidate.name), path=str(candidate.path),
                     format=_format(candidate), source=candidate.source,
                     size_bytes=_size(candidate.files))
    if candidate.error:
        return base.model_copy(update={"valid": False, "error": candidate.error})
    shown = displayable(base.path)
    if shown != base.path:  # llama-cpp-python and tokenizers encode the path they open as UTF-8
        return base.model_copy(update={"valid": False, "error": (
            f"its path {shown} is not UTF-8, which llama.cpp and tokenizers cannot open: "
            "rename it without the bytes shown as \\xNN")})
    try:
        if candidate.kind == "gguf":
            return _from_gguf(base, candidate.files)
        return _from_hf_folder(base, candidate.path, allow_pickle=allow_pickle)
    except InvalidModelFile as exc:
        return base.model_copy(update={"valid": False, "error": exc.reason})
    except (OSError, ValueError, RecursionError, MemoryError) as exc:
        return base.model_copy(update={"valid": False, "error": f"unreadable: {exc}"})


def _format(candidate: Candidate) -> ModelFormat:
    return "gguf" if candidate.kind == "gguf" else "transformers"


def _size(files: list[Path]) -> int:
    total = 0
    for path in files:
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


# -- GGUF -------------------------------------------------------------------------


def _from_gguf(base: ModelInfo, files: list[Path]) -> ModelInfo:
    return gguf_model_info(base, [read_gguf_header(path) for path in files])


def gguf_model_info(base: ModelInfo, headers: Sequence[GGUFHeader]) -> ModelInfo:
    """``base`` completed from a GGUF model's headers: its first file's, then any split
    shards' in order (local files, or remote ones that hub.py read by HTTP ranges).

    Raises:
        InvalidModelFile: the headers are not a language model's (named by the first file).
    """
    header = headers[0]
    tensors = [t for h in headers for t in h.tensors]
    meta = header.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile(header.path, "has no general.architecture: not a model file")
    if meta.get("general.type") == "mmproj" or arch == "clip":
        raise InvalidModelFile(header.path, "is a vision projector (mmproj), not a language model")
    if not tensors:
        raise InvalidModelFile(header.path, "holds no tensors (a vocabulary-only file?)")
    expected = meta.get("split.tensors.count")
    if isinstance(expected, int) and expected != len(tensors):
        raise InvalidModelFile(header.path, f"split GGUF declares {expected} tensors, "
                                         f"its shards hold {len(tensors)}")

    def key(name: str) -> Any:
        return meta.get(f"{arch}.{name}")

    n_layers = _int(key("block_count"))
    if n_layers is None:
        raise InvalidModelFile(header.path, f"has no {arch}.block_count")
    n_heads = _first(key("attention.head_count"))
    n_kv_raw = key("attention.head_count_kv")
    n_embd = _int(key("embedding_length"))
    head_k = _int(key("attention.key_length")) or (n_embd // n_heads if n_embd and n_heads else None)
    head_v = _int(key("attention.value_length")) or head_k
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = (tokens.count if isinstance(tokens, ArrayInfo) else len(tokens) if isinstance(tokens, list)
             else _int(key("vocab_size")))
    shape = ModelShape(
        n_embd=n_embd,
        n_ff=_first(key("feed_forward_length")),
        n_heads=n_heads,
        n_kv_heads=_max(n_kv_raw) or n_heads,
        n_kv_heads_per_layer=[int(x) for x in n_kv_raw] if isinstance(n_kv_raw, list) else None,
        head_dim_k=head_k,
        head_dim_v=head_v,
        vocab_size=vocab,
        tensors=[TensorSummary(name=t.name, dtype=GGML_TYPES[t.ggml_type].name,
                               n_elements=t.n_elements, nbytes=t.nbytes, layer=_layer(t.name))
                 for t in tensors],
    )
    return base.model_copy(update={
        "architecture": arch,
        "parameters": sum(t.n_elements for t in tensors),
        "quantization": _gguf_quantization(header, tensors),
        "context_length": _int(key("context_length")),
        "n_layers": n_layers,
        "shape": shape,
    })


def _gguf_quantization(header: GGUFHeader, tensors: list[Any]) -> str:
    file_type = header.metadata.get("general.file_type")
    if isinstance(file_type, int) and file_type in FILE_TYPES:
        return FILE_TYPES[file_type]
    by_bytes: Counter[str] = Counter()
    for t in tensors:
        if len(t.shape) > 1:
            by_bytes[GGML_TYPES[t.ggml_type].name] += t.nbytes
    return by_bytes.most_common(1)[0][0] if by_bytes else "F32"


def _layer(name: str) -> int | None:
    match = _LAYER_RE.search(name)
    return int(match.group(1)) if match else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _first(value: Any) -> int | None:
    """A per-layer list (some architectures) counts by its largest entry."""
    return _max(value) if isinstance(value, list) else _int(value)


def _max(value: Any) -> int | None:
    if isinstance(value, list):
        numbers = [int(x) for x in value if isinstance(x, (int, float))]
        return max(numbers) if numbers else None
    return _int(value)


# -- Hugging Face folders ---------------------------------------------------------------


def _from_hf_folder(base: ModelInfo, folder: Path, *, allow_pickle: bool) -> ModelInfo:
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidModelFile(folder, "has no config.json: not a Hugging Face model folder") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidModelFile(config_path, f"cannot read: {exc}") from None
    except ValueError:
        raise InvalidModelFile(config_path, "is not valid JSON") from None
    if not isinstance(config, dict):
        raise InvalidModelFile(config_path, "is not a JSON object")
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    safe, pickles = weight_files(folder)
    size = _size(safe or pickles)
    index = folder / "model.safetensors.index.json"
    if not safe and not pickles:
        if index.is_file():
            _check_shards(folder, index, safe)  # it names the shards the index expects
        gone = sorted(p.name for p in folder.glob("*.safetensors") if not p.is_file())
        if gone:  # the Hugging Face cache links every file to a blob: one cleaned, or never finished
            raise InvalidModelFile(folder, f"{', '.join(gone[:3])} links to a file that is not there "
                                           "(a cleaned cache, or a download that stopped): download it again")
        raise InvalidModelFile(folder, "has no weight files (*.safetensors)")
    dtype = str(config.get("dtype") or config.get("torch_dtype") or text.get("torch_dtype") or "")
    tensors: list[TensorSummary] = []
    for path in safe:
        for t in read_safetensors_header(path):
            tensors.append(TensorSummary(name=t.name, dtype=t.dtype, n_elements=t.n_elements,
                                         nbytes=t.nbytes, layer=_layer(t.name)))
    if safe and index.is_file():
        _check_shards(folder, index, safe)
    if tensors:
        params = sum(t.n_elements for t in tensors)
        stored: Counter[str] = Counter()
        for summary in tensors:
            stored[summary.dtype] += summary.nbytes
        dtype = dtype or stored.most_common(1)[0][0]
    else:
        params = int(size / DTYPE_BYTES.get(_st_dtype(dtype), 2))
    quant, bits = _hf_quantization(config, dtype)
    n_heads = _int(text.get("num_attention_heads"))
    n_embd = _int(text.get("hidden_size"))
    head_dim = _int(text.get("head_dim")) or (n_embd // n_heads if n_embd and n_heads else None)
    shape = ModelShape(
        n_embd=n_embd,
        n_ff=_int(text.get("intermediate_size")),
        n_heads=n_heads,
        n_kv_heads=_int(text.get("num_key_value_heads")) or n_heads,
        head_dim_k=head_dim,
        head_dim_v=head_dim,
        vocab_size=_int(text.get("vocab_size")),
        dtype=_st_dtype(dtype) if dtype else None,
        quant_bits=bits,
        tensors=tensors,
    )
    update: dict[str, Any] = {
        "size_bytes": size,
        "architecture": str(config.get("model_type") or (config.get("architectures") or ["?"])[0]),
        "parameters": params,
        "quantization": quant,
        "context_length": _int(text.get("max_position_embeddings")),
        "n_layers": _int(text.get("num_hidden_layers")),
        "shape": shape,
    }
    if not safe and not allow_pickle:
        names = ", ".join(p.name for p in pickles[:3])
        update.update(valid=False, error=(
            f"weights are pickle files ({names}), which can run code when loaded; convert them "
            "to safetensors, or set allow_pickle=true if you trust where they came from"))
    return base.model_copy(update=update)


def _check_shards(folder: Path, index: Path, safe: list[Path]) -> None:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
    except (OSError, ValueError, AttributeError):
        raise InvalidModelFile(index, "is not a valid safetensors index") from None
    present = {p.name for p in safe}
    missing = sorted(set(weight_map.values()) - present) if isinstance(weight_map, dict) else []
    if missing:
        raise InvalidModelFile(folder, f"is missing weight shard(s) {', '.join(missing[:3])}: "
                                       "download every part")


def _st_dtype(dtype: str) -> str:
    return {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "half": "F16",
            "float": "F32"}.get(dtype.lower().replace("torch.", ""), dtype.upper())


def _hf_quantization(config: dict[str, Any], dtype: str) -> tuple[str, int | None]:
    quant = config.get("quantization_config")
    if isinstance(quant, dict):
        method = str(quant.get("quant_method", "quantized"))
        if quant.get("load_in_4bit"):
            return f"{method} 4-bit", 4
        if quant.get("load_in_8bit"):
            return f"{method} 8-bit", 8
        bits = _int(quant.get("bits"))
        return (f"{method} {bits}-bit" if bits else method), bits
    return (_st_dtype(dtype) if dtype else "unknown"), None
