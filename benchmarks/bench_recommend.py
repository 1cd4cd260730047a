"""``recommend`` over the curated list, against a local Hub with added latency.

Every curated entry is served as a zero-filled (sparse) GGUF of its model's real shape
(layers, width, heads, vocabulary, merges; the architectures approximately: phi3's fused
tensors are written apart, gemma2's 256-wide heads as n_embd / heads) by
tests/hub_server.py, in the Hub's URL layout, with a delay before every answer. It
reports the bytes fetched against the files' sizes and their headers' (goal: under 0.1%
of the files), and the time for the whole list (goal: under 10 s).

Files that share a vocabulary walk it once (hub_headers.py): the report counts the
leaders (which walked theirs; which file of a group leads depends on which thread gets
there first) and the followers (which jumped over theirs with their leader's run), and
names the files that walked theirs after all, with why. An untimed pass then reads every
header again the same way and compares each with a full local read of the file
(metadata, tensors, data offset, size).

The vocabularies are synthetic: tokens of 7 bytes and merges of about 11, near the real
byte-level BPE ones, as many as the real models have (Qwen2.5: 151k tokens and merges;
Llama 3: 128k tokens, 280k merges; gemma 2, Mistral v0.3 and Phi-3.5 have no merges).

Usage: bench_recommend.py [--latency-ms 50] [--workers 8] [--dir DIR]
(--dir keeps the files there and reuses them on the next run.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from _common import ROOT, table

sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from hub_server import HubServer  # noqa: E402
from shapes import model_writer, tensors, write_sparse  # noqa: E402

if TYPE_CHECKING:
    from zwaif_fallback.hub import Hub, HubModel

# repo: (arch, n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, tied output, qkv bias, merges)
SHAPES = {
    "Qwen/Qwen2.5-0.5B-Instruct-GGUF": ("qwen2", 24, 896, 14, 2, 4864, 151936, True, True, 151387),
    "Qwen/Qwen2.5-1.5B-Instruct-GGUF": ("qwen2", 28, 1536, 12, 2, 8960, 151936, True, True, 151387),
    "Qwen/Qwen2.5-3B-Instruct-GGUF": ("qwen2", 36, 2048, 16, 2, 11008, 151936, True, True, 151387),
    "bartowski/Qwen2.5-7B-Instruct-GGUF": ("qwen2", 28, 3584, 28, 4, 18944, 152064, False, True,
                                           151387),
    "bartowski/Qwen2.5-14B-Instruct-GGUF": ("qwen2", 48, 5120, 40, 8, 13824, 152064, False, True,
                                            151387),
    "bartowski/Llama-3.2-1B-Instruct-GGUF": ("llama", 16, 2048, 32, 8, 8192, 128256, True, False,
                                             280147),
    "bartowski/Llama-3.2-3B-Instruct-GGUF": ("llama", 28, 3072, 24, 8, 8192, 128256, True, False,
                                             280147),
    "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF": ("llama", 32, 4096, 32, 8, 14336, 128256, False,
                                                  False, 280147),
    "bartowski/Mistral-7B-Instruct-v0.3-GGUF": ("llama", 32, 4096, 32, 8, 14336, 32768, False, False,
                                                0),
    "bartowski/Phi-3.5-mini-instruct-GGUF": ("phi3", 32, 3072, 32, 32, 8192, 32064, False, False, 0),
    "bartowski/gemma-2-2b-it-GGUF": ("gemma2", 26, 2304, 8, 4, 9216, 256000, True, False, 0),
}
# file type -> (llama.cpp's file type, the matrices' ggml type, its fallback when a row is
# not a whole number of 256-element blocks, as llama.cpp's quantizer does)
QUANTS = {"Q4_K_M": (15, "Q4_K", "Q5_0"), "Q5_K_M": (17, "Q5_K", "Q5_1"), "Q8_0": (7, "Q8_0", "Q8_0")}


def write(path: Path, repo: str, quant: str) -> Path:
    arch, n_layer, e, heads, kv_heads, ff, vocab, tied, bias, merges = SHAPES[repo]
    file_type, main, fallback = QUANTS[quant]
    writer = model_writer(path, path.stem, arch, file_type, n_layer, e, heads, kv_heads, ff)
    writer.add_tokenizer_model("gpt2" if merges else "llama")
    writer.add_token_list([f"t{i:06d}" for i in range(vocab)])
    writer.add_token_types([1] * vocab)
    if merges:
        writer.add_token_merges([f"{i:05x} {i + 1:05x}" for i in range(merges)])
    else:
        writer.add_token_scores([0.0] * vocab)
    layout = tensors(arch, n_layer, e, heads, kv_heads, ff, vocab, tied, bias)
    return write_sparse(writer, path, [
        (name, shape, (main if shape[-1] % 256 == 0 else fallback) if matrix else "F32")
        for name, shape, matrix in layout])


def check_exact(hub: Hub, models: list[HubModel], paths: list[Path]) -> tuple[list[str], int]:
    """Read every header again, sharing vocabularies, and compare it with a local read:
    the files whose headers differ, and how many files were read with a lent run."""
    from concurrent.futures import ThreadPoolExecutor

    from zwaif_fallback.gguf_header import read_gguf_header
    from zwaif_fallback.hub_headers import VocabSharing

    sharing = VocabSharing()
    with hub, ThreadPoolExecutor(hub.workers) as pool:
        remote = list(pool.map(lambda m: hub.headers(m, sharing=sharing)[0], models))
    differ = []
    for header, path in zip(remote, paths, strict=True):
        local = read_gguf_header(path)
        if (header.metadata, header.tensors, header.data_offset, header.file_size) != \
                (local.metadata, local.tensors, local.data_offset, local.file_size):
            differ.append(path.name)
    return differ, len(sharing.followers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()

    from zwaif_fallback import FallbackManager, FallbackSettings
    from zwaif_fallback.cli_text import format_recommendations
    from zwaif_fallback.gguf_header import read_gguf_header
    from zwaif_fallback.hub import Hub, curated
    from zwaif_fallback.hub_headers import VocabSharing

    work = args.dir or Path(tempfile.mkdtemp())
    work.mkdir(parents=True, exist_ok=True)
    models = curated()
    start = time.perf_counter()
    paths = {}
    for m in models:
        path = work / m.file
        paths[(m.repo, m.file)] = path if path.exists() else write(path, m.repo, m.quantization or "")
    print(f"wrote {len(paths)} zero-filled GGUFs in {time.perf_counter() - start:.1f} s ({work})")

    server = HubServer(latency_s=args.latency_ms / 1000)
    for (repo, file), path in paths.items():
        server.add(repo, file, path, license="bench")
    with server:
        os.environ["HF_ENDPOINT"] = server.url
        os.environ.pop("HF_HUB_OFFLINE", None)
        sharing = VocabSharing()
        with Hub(endpoint=server.url, workers=args.workers) as hub:
            start = time.perf_counter()
            infos = hub.read_all(models, sharing=sharing)
            headers_s = time.perf_counter() - start
        failed = [str(i) for i in infos if not hasattr(i, "n_layers")]
        assert not failed, failed
        fetched = dict(server.bytes_by_file)
        n_requests = len(server.requests)

        server.reset_counts()
        settings = FallbackSettings(models_dir=work / "no-local-models", scan_system_stores=False,
                                    settings_file=work / "settings.json", data_dir=work / "data")
        with FallbackManager(settings, background=False) as manager:
            manager.system_status()  # the probe's first look is not the recommendation's cost
            start = time.perf_counter()
            ranked = manager.recommend_models()
            total_s = time.perf_counter() - start
        differ, lent = check_exact(Hub(endpoint=server.url, workers=args.workers), models,
                                  [paths[(m.repo, m.file)] for m in models])

    rows = [("file", "size GiB", "header MiB", "fetched MiB", "of the file", "of the header",
             "params / list's")]
    total_header = 0
    for m, info in zip(models, infos, strict=True):
        size = paths[(m.repo, m.file)].stat().st_size
        header = read_gguf_header(paths[(m.repo, m.file)]).data_offset
        total_header += header
        got = fetched.get((m.repo, m.file), 0)
        params = getattr(info, "parameters", 0) or 0
        rows.append((m.file, f"{size / 2**30:.2f}", f"{header / 2**20:.2f}", f"{got / 2**20:.2f}",
                     f"{got / size:.3%}", f"{got / header:.2f}x", f"{params / (m.params or 1):.2f}"))
    total_size = sum(p.stat().st_size for p in paths.values())
    total_fetched = sum(fetched.values())
    print(table(rows))
    print()
    print(f"bytes fetched: {total_fetched / 2**20:.1f} MiB of {total_size / 2**30:.1f} GiB = "
          f"{total_fetched / total_size:.3%} (goal: under 0.1%), in {n_requests} requests; the "
          f"headers alone are {total_header / 2**20:.1f} MiB = {total_header / total_size:.3%}")
    print(f"headers of {len(models)} files, {args.workers} at a time, {args.latency_ms:g} ms a "
          f"request: {headers_s:.2f} s; recommend_models() with fits and ranking: {total_s:.2f} s "
          "(goal: under 10 s)")
    print(f"vocabularies walked by {len(sharing.leaders)} leaders, jumped over by "
          f"{len(sharing.followers)} followers; walked after all: "
          + (", ".join(f"{f} ({why})" for f, why in sharing.fallbacks.items()) or "none"))
    print(f"untimed check, {lent} of {len(models)} read with a lent run: "
          + (f"these differ from a full local read: {', '.join(differ)}" if differ
             else "every header equals a full local read"))
    print()
    print(format_recommendations(ranked))


if __name__ == "__main__":
    main()
