"""hub.py and recommend.py against a local stand-in for the Hugging Face Hub (hub_server.py):
headers read by HTTP ranges, what each failure says, and the ranking."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from builders import write_gguf, write_sparse_gguf
from conftest import ROOT, run_cli
from hub_server import COMMIT, HubServer, clear_hub_environment
from servers import HangServer, free_port

from zwaif_fallback import FallbackManager, FallbackSettings, InvalidSettings
from zwaif_fallback.fit import plan
from zwaif_fallback.gguf_header import ArrayInfo, GGUFHeader, VocabStart, read_gguf_header
from zwaif_fallback.gguf_lending import VocabRun
from zwaif_fallback.hub import (
    Hub,
    HubAccessDenied,
    HubFileNotFound,
    HubModel,
    HubOffline,
    HubUnavailable,
    curated,
    parse_spec,
)
from zwaif_fallback.hub_headers import VocabSharing
from zwaif_fallback.locations import Candidate
from zwaif_fallback.model_info import ModelInfo, ModelShape, TensorSummary, inspect_candidate
from zwaif_fallback.recommend import Recommendation, effective_params, rank

sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
import shapes  # noqa: E402

T = TypeVar("T")
REPO = "acme/Tiny-Instruct-GGUF"
FIELDS = {"repo", "file", "params", "quantization", "license", "size_bytes", "verdict", "gpu_layers",
          "vram_mb", "ram_mb", "score", "reason", "url", "n_layers"}


@pytest.fixture(autouse=True)
def no_hub_environment(monkeypatch):
    clear_hub_environment(monkeypatch)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("hub-files")
    return {
        "tiny": write_gguf(folder / "tiny.gguf"),
        "wider": write_gguf(folder / "wider.gguf", n_embd=128, n_ff=256, weight_type="Q8_0"),
        "vocab": write_sparse_gguf(folder / "vocab.gguf", n_vocab=150_000),
        "llama3": shapes.write(folder, "llama3-8b", "Q4_0"),
    }


@pytest.fixture
def hub_server(files) -> HubServer:
    server = HubServer()
    server.add(REPO, "tiny-instruct-q4_k_m.gguf", files["tiny"], license="mit")
    server.add(REPO, "tiny-instruct-q8_0.gguf", files["wider"], license="mit")
    server.add(REPO, "tiny-instruct-f16.gguf", files["tiny"], license="mit")
    server.add(REPO, "mmproj-tiny-q8_0.gguf", files["tiny"], license="mit")
    server.add("acme/Vocab-GGUF", "vocab.gguf", files["vocab"])
    server.add("acme/Llama-3-8B-GGUF", "llama-3-8b-Q4_0.gguf", files["llama3"], license="llama3")
    with server:
        yield server


def local_info(path: Path) -> ModelInfo:
    return inspect_candidate(Candidate("gguf", path, "models_dir", path.stem, [path]))


# -- reading headers by ranges ----------------------------------------------------------


@pytest.mark.parametrize("repo, file, local", [
    (REPO, "tiny-instruct-q4_k_m.gguf", "tiny"),
    ("acme/Vocab-GGUF", "vocab.gguf", "vocab"),  # 150k tokens and merges: several ranges
])
def test_a_header_read_by_ranges_is_the_local_readers(hub_server, files, repo, file, local):
    with Hub(endpoint=hub_server.url) as hub:
        model = HubModel(repo=repo, file=file)
        (remote,) = hub.headers(model)
        info = hub.read(model)
    header = read_gguf_header(files[local])
    assert remote.metadata == header.metadata
    assert [(t.name, t.shape, t.ggml_type, t.offset) for t in remote.tensors] == \
        [(t.name, t.shape, t.ggml_type, t.offset) for t in header.tensors]
    assert (remote.data_offset, remote.file_size) == (header.data_offset, header.file_size)
    ours = local_info(files[local])
    differ = {"name", "path", "source"}
    assert info.model_dump(exclude=differ) == ours.model_dump(exclude=differ)
    assert info.shape == ours.shape
    assert (info.source, info.path) == ("hub", f"{hub_server.url}/{repo}/resolve/main/{file}")


def test_a_split_file_is_read_with_all_its_parts(hub_server, files):
    for part in (1, 2):
        hub_server.add("acme/Split-GGUF", f"m-0000{part}-of-00002.gguf", files["tiny"])
    with Hub(endpoint=hub_server.url) as hub:
        info = hub.read(parse_spec("acme/Split-GGUF/m-00001-of-00002.gguf"))
    local = inspect_candidate(Candidate("gguf", files["tiny"], "models_dir", "m",
                                        [files["tiny"], files["tiny"]]))
    assert info.model_dump(exclude={"path", "source"}) == local.model_dump(exclude={"path", "source"})
    assert info.name == "m" and info.size_bytes == 2 * files["tiny"].stat().st_size


def test_a_real_shaped_header_costs_under_a_thousandth_of_the_file(hub_server, files):
    size = files["llama3"].stat().st_size
    with Hub(endpoint=hub_server.url) as hub:
        info = hub.read(HubModel(repo="acme/Llama-3-8B-GGUF", file="llama-3-8b-Q4_0.gguf"))
    assert (info.n_layers, info.quantization, info.size_bytes) == (32, "Q4_0", size)
    assert 8.0e9 < (info.parameters or 0) < 8.1e9
    assert size > 4e9 and hub_server.bytes_served < size / 1000, hub_server.bytes_served


def test_huggingface_hubs_own_client_reads_the_stand_ins_metadata(hub_server, files):
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(REPO, "tiny-instruct-q8_0.gguf", endpoint=hub_server.url)
    meta = get_hf_file_metadata(url)
    assert (meta.size, meta.commit_hash) == (files["wider"].stat().st_size, COMMIT)
    assert meta.etag and "/cdn/" in meta.location


# -- what a person types ------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
     ("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf", "main", None)),
    ("bartowski/gemma-2-2b-it-GGUF", ("bartowski/gemma-2-2b-it-GGUF", "", "main", None)),
    ("https://huggingface.co/a/b-GGUF/blob/v1/sub/m-Q8_0.gguf",
     ("a/b-GGUF", "sub/m-Q8_0.gguf", "v1", "https://huggingface.co/a/b-GGUF/resolve/v1/sub/m-Q8_0.gguf")),
    ("https://example.org/files/m.gguf", ("", "m.gguf", "main", "https://example.org/files/m.gguf")),
])
def test_what_a_person_types_names_a_file_or_a_repo(text, expected):
    model = parse_spec(text)
    assert (model.repo, model.file, model.revision, model.url) == expected


@pytest.mark.parametrize("text", ["just-a-name", "a/b/readme.md", "https://example.org/page.html"])
def test_anything_else_is_refused_with_the_forms_it_takes(text):
    with pytest.raises(InvalidSettings, match="gguf|GGUF"):
        parse_spec(text)


def test_a_repo_id_stands_for_its_common_quantizations(hub_server):
    with Hub(endpoint=hub_server.url) as hub:
        found = hub.resolve([REPO])
    assert [(m.file, m.quantization, m.license) for m in found] == [
        ("tiny-instruct-q4_k_m.gguf", "Q4_K_M", "mit"), ("tiny-instruct-q8_0.gguf", "Q8_0", "mit")]


def test_the_curated_list_is_well_formed():
    models = curated()
    assert 10 <= len(models) <= 15
    assert len({(m.repo, m.file) for m in models}) == len(models)
    for m in models:
        assert m.file.endswith(".gguf") and m.repo.count("/") == 1 and m.license
        assert m.quantization in ("Q4_K_M", "Q5_K_M", "Q8_0")
        assert m.quantization.lower() in m.file.lower()
        assert 4e8 < (m.params or 0) < 1.6e10


# -- failures, one line each ----------------------------------------------------------------


def test_offline_fetches_nothing_and_says_so(hub_server):
    result = run_cli("recommend", env={"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": hub_server.url})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: offline: HF_HUB_OFFLINE is set")
    assert hub_server.requests == []
    with pytest.raises(HubOffline), Hub(endpoint=hub_server.url, offline=True) as hub:
        hub.read_all(curated())
    assert hub_server.requests == []


def test_a_missing_file_is_one_line(hub_server):
    result = run_cli("recommend", f"{REPO}/no-such-file.gguf", env={"HF_ENDPOINT": hub_server.url})
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"error: not found: {REPO}/no-such-file.gguf")
    assert "404" in result.stderr and "Traceback" not in result.stderr


def test_a_hub_that_is_down_is_one_line():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli("recommend", env={"HF_ENDPOINT": endpoint})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: hub down: nothing answers at 127.0.0.1")


def test_a_hub_that_never_answers_times_out():
    hang = HangServer()
    try:
        with pytest.raises(HubUnavailable, match=r"^timed out: .* within 0.3 s"), \
                Hub(endpoint=f"http://127.0.0.1:{hang.port}", timeout_s=0.3) as hub:
            hub.read(HubModel(repo=REPO, file="x.gguf"))
    finally:
        hang.close()


def test_a_gated_repo_wants_the_token_and_gets_it_only_at_the_endpoint(hub_server, monkeypatch):
    hub_server.gated[REPO] = "hf_secret"
    model = HubModel(repo=REPO, file="tiny-instruct-q8_0.gguf")
    with pytest.raises(HubAccessDenied, match="^access denied: .* HF_TOKEN"), \
            Hub(endpoint=hub_server.url) as hub:
        hub.read(model)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with Hub(endpoint=hub_server.url) as hub:
        assert hub.read(model).n_layers == 2
        elsewhere = parse_spec(hub.url(model).replace("127.0.0.1", "localhost"))
        with pytest.raises(HubAccessDenied):
            hub.read(elsewhere)  # another host: the token is not sent there
    resolves = [r for r in hub_server.requests if "/resolve/" in r.path]
    assert [(r.host.split(":")[0], r.authorization) for r in resolves] == [
        ("127.0.0.1", None), ("127.0.0.1", "Bearer hf_secret"), ("localhost", None)]


def test_one_unreadable_candidate_is_a_row_not_an_error(hub_server, isolated, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    settings = FallbackSettings(models_dir=isolated / "none", scan_system_stores=False)
    with FallbackManager(settings, background=False) as manager:
        rows = manager.recommend_models([f"{REPO}/tiny-instruct-q4_k_m.gguf", f"{REPO}/gone.gguf"])
        with pytest.raises(HubFileNotFound):
            manager.recommend_models([f"{REPO}/gone.gguf"])
    assert [r.verdict for r in rows][-1] == "unknown" and rows[0].verdict != "unknown"
    assert rows[-1].reason.startswith(f"not found: {REPO}/gone.gguf")


# -- the command and the ranking ------------------------------------------------------------


def test_recommend_json_has_the_fields(hub_server):
    result = run_cli("recommend", REPO, "--json", "--ctx", "1024", env={"HF_ENDPOINT": hub_server.url})
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [set(r) for r in rows] == [FIELDS, FIELDS]
    assert {r["file"] for r in rows} == {"tiny-instruct-q4_k_m.gguf", "tiny-instruct-q8_0.gguf"}
    assert all(r["verdict"] in ("gpu", "partial", "cpu") and r["size_bytes"] > 0 for r in rows)
    assert rows[0]["score"] >= rows[1]["score"]


def test_recommend_text_names_each_candidate_and_why(hub_server):
    result = run_cli("recommend", REPO, env={"HF_ENDPOINT": hub_server.url})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:6] == ["MODEL", "PARAMS", "QUANT", "SIZE", "FITS", "SCORE"]
    assert len(lines) == 3 and all(REPO in line for line in lines[1:])


def synthetic(name: str, params: float, quant: str, bits: float, n_layers: int = 32) -> ModelInfo:
    """A model of ``params`` weights at ``bits`` a weight, spread over its layers."""
    per_layer = int(params / n_layers)
    tensors = [TensorSummary(name=f"blk.{i}.ffn_up.weight", dtype=quant, n_elements=per_layer,
                             nbytes=int(per_layer * bits / 8), layer=i) for i in range(n_layers)]
    shape = ModelShape(n_embd=4096, n_heads=32, n_kv_heads=8, head_dim_k=128, head_dim_v=128,
                       vocab_size=32000, tensors=tensors)
    return ModelInfo(name=name, path=f"https://hub/{name}.gguf", format="gguf", source="hub",
                     size_bytes=sum(t.nbytes for t in tensors), parameters=int(params),
                     quantization=quant, context_length=4096, n_layers=n_layers, shape=shape)


def ranked(models: list[ModelInfo], *, vram_mb: float, ram_mb: float = 64_000) -> list[Recommendation]:
    rows = [(HubModel(repo="acme/x", file=m.name + ".gguf"), m.path, m,
             plan(m, n_ctx=4096, free_vram_mb=[vram_mb] if vram_mb else [], free_ram_mb=ram_mb))
            for m in models]
    return rank(rows)


def test_more_parameters_rank_first_when_both_fit_the_gpu():
    small, big = synthetic("small", 1.5e9, "Q8_0", 8.5), synthetic("big", 3e9, "Q4_K_M", 4.9)
    order = ranked([small, big], vram_mb=24_000)
    assert [r.file for r in order] == ["big.gguf", "small.gguf"]
    assert order[0].reason.startswith("gpu: 3.0B at Q4_K_M (+0.18 perplexity on Llama-3-8B")


def test_a_costly_quantization_counts_as_a_smaller_model():
    q2, q8 = synthetic("q2", 3e9, "Q2_K", 3.4), synthetic("q8", 1.5e9, "Q8_0", 8.5)
    assert [r.file for r in ranked([q2, q8], vram_mb=24_000)] == ["q8.gguf", "q2.gguf"]
    assert effective_params(3_000_000_000, "Q8_0")[0] == pytest.approx(3e9, rel=0.01)
    assert effective_params(3_000_000_000, "Q2_K")[0] < 1e9
    as_q4 = effective_params(1_000_000_000, "IQ4_NL", size_bytes=int(1e9 * 4.9 / 8))[1] or ""
    assert as_q4.endswith("as Q4_K_M")  # not in the table: the nearest in bits per weight


def test_what_does_not_fit_comes_after_and_what_was_not_read_last():
    huge = synthetic("huge", 70e9, "Q4_K_M", 4.9)
    fits = synthetic("fits", 1e9, "Q8_0", 8.5)
    rows = [(HubModel(repo="acme/x", file="gone.gguf"), "u", HubFileNotFound("not found: gone"), None)]
    rows += [(HubModel(repo="acme/x", file=m.name + ".gguf"), m.path, m,
              plan(m, n_ctx=4096, free_vram_mb=[8000], free_ram_mb=16_000)) for m in (huge, fits)]
    order = rank(rows)
    assert [(r.file, r.verdict) for r in order] == [
        ("fits.gguf", "gpu"), ("huge.gguf", "none"), ("gone.gguf", "unknown")]
    assert order[1].score == 0 and order[2].reason == "not found: gone"


# -- files that share a vocabulary walk it once ---------------------------------------------

FAMILY = "acme/Family-GGUF"
N_VOCAB = 100_000  # 1.5 MB of tokens, 400 KB of token types: well past the first block


def write_family_member(path: Path, *, n_layer: int, quant: str, tokens: list[str],
                        merges: list[str] | None = None, scores: bool = False) -> Path:
    """A sparse GGUF with this vocabulary (token types, then merges or scores after it),
    key-values after those, and ``n_layer`` layers of ``quant`` matrices."""
    file_type = {"Q8_0": 7, "Q4_0": 2, "F16": 1}[quant]
    writer = shapes.model_writer(path, path.stem, "llama", file_type, n_layer, 64, 4, 2, 128)
    writer.add_tokenizer_model("gpt2" if merges else "llama")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    if merges:
        writer.add_token_merges(merges)
    if scores:
        writer.add_token_scores([0.0] * len(tokens))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    layout = shapes.tensors("llama", n_layer, 64, 4, 2, 128, len(tokens), False, False)
    return shapes.write_sparse(writer, path, [(name, shape, quant if matrix else "F32")
                                              for name, shape, matrix in layout])


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> dict[str, Path]:
    """Files named for what they share: a, b, c one vocabulary and merges (other sizes and
    quantizations); the variants differ from a (or from scores.gguf) only after their first
    16 KiB of tokens, so that they join its group."""
    folder = tmp_path_factory.mktemp("family")
    tokens = [f"t{i:06d}" for i in range(N_VOCAB)]
    merges = [f"{i:05x} {i + 1:05x}" for i in range(N_VOCAB)]
    longer = tokens[:-100] + [tokens[-100] + "x"] + tokens[-99:]
    return {
        "a.gguf": write_family_member(folder / "a.gguf", n_layer=2, quant="Q8_0", tokens=tokens,
                                      merges=merges),
        "b.gguf": write_family_member(folder / "b.gguf", n_layer=3, quant="Q4_0", tokens=tokens,
                                      merges=merges),
        "c.gguf": write_family_member(folder / "c.gguf", n_layer=5, quant="F16", tokens=tokens,
                                      merges=merges),
        "longer-token.gguf": write_family_member(folder / "longer-token.gguf", n_layer=3,
                                                 quant="Q4_0", tokens=longer, merges=merges),
        "one-more-merge.gguf": write_family_member(folder / "one-more-merge.gguf", n_layer=3,
                                                   quant="Q4_0", tokens=tokens,
                                                   merges=[*merges, "fffff 00000"]),
        "scores.gguf": write_family_member(folder / "scores.gguf", n_layer=2, quant="Q8_0",
                                           tokens=tokens, scores=True),
        "scores-longer-token.gguf": write_family_member(folder / "scores-longer-token.gguf",
                                                        n_layer=3, quant="Q4_0", tokens=longer,
                                                        scores=True),
    }


@pytest.fixture
def family_server(family) -> HubServer:
    server = HubServer()
    for name, path in family.items():
        server.add(FAMILY, name, path)
    with server:
        yield server


def member(name: str) -> HubModel:
    return HubModel(repo=FAMILY, file=name)


def assert_same_header(remote: GGUFHeader, local: GGUFHeader) -> None:
    assert remote.metadata == local.metadata
    assert remote.tensors == local.tensors
    assert (remote.version, remote.alignment, remote.data_offset, remote.file_size) == \
        (local.version, local.alignment, local.data_offset, local.file_size)


def test_files_that_share_a_vocabulary_walk_it_once(family_server, family):
    names = ["a.gguf", "b.gguf", "c.gguf"]
    sharing = VocabSharing()
    with Hub(endpoint=family_server.url) as hub:
        headers = [hub.headers(member(name), sharing=sharing)[0] for name in names]
    assert sharing.leaders == [f"{FAMILY}/a.gguf"]
    assert sharing.followers == [f"{FAMILY}/b.gguf", f"{FAMILY}/c.gguf"]
    assert sharing.fallbacks == {}
    for name, remote in zip(names, headers, strict=True):
        assert_same_header(remote, read_gguf_header(family[name]))
    fetched = family_server.bytes_by_file
    for name, remote in zip(names[1:], headers[1:], strict=True):  # the followers
        assert fetched[(FAMILY, name)] < remote.data_offset / 5, fetched
    assert fetched[(FAMILY, "a.gguf")] > headers[0].data_offset / 2


def test_read_all_shares_the_walk_between_its_workers(family_server, family):
    names = ["a.gguf", "b.gguf", "c.gguf"]
    sharing = VocabSharing()
    with Hub(endpoint=family_server.url, workers=3) as hub:
        infos = hub.read_all([member(name) for name in names], sharing=sharing)
    differ = {"name", "path", "source"}
    for name, info in zip(names, infos, strict=True):
        assert isinstance(info, ModelInfo), info
        assert info.model_dump(exclude=differ) == local_info(family[name]).model_dump(exclude=differ)
    assert (len(sharing.leaders), len(sharing.followers), sharing.fallbacks) == (1, 2, {})


@pytest.mark.parametrize("leader, variant", [
    ("a.gguf", "longer-token.gguf"),  # the same count, one token a byte longer
    ("a.gguf", "one-more-merge.gguf"),
    ("scores.gguf", "scores-longer-token.gguf"),  # ends in scores: no bytes to compare
])
def test_a_follower_that_does_not_land_exactly_is_walked(family_server, family, leader, variant):
    sharing = VocabSharing()
    with Hub(endpoint=family_server.url) as hub:
        hub.headers(member(leader), sharing=sharing)
        (remote,) = hub.headers(member(variant), sharing=sharing)
    assert list(sharing.fallbacks) == [f"{FAMILY}/{variant}"] and sharing.followers == []
    assert_same_header(remote, read_gguf_header(family[variant]))


def test_an_array_of_fixed_size_is_stepped_over_without_fetching_it(family_server, family):
    with open(family["a.gguf"], "rb") as handle:
        data = handle.read(4 << 20)  # the header
    key = b"tokenizer.ggml.token_type"
    start = data.index(key) + len(key) + 16  # past the value type, element type and count
    stop = start + N_VOCAB * 4
    with Hub(endpoint=family_server.url) as hub:
        (header,) = hub.headers(member("a.gguf"))
    assert header.metadata["tokenizer.ggml.token_type"] == ArrayInfo(5, N_VOCAB)
    ranges = [tuple(int(n) for n in r.range.removeprefix("bytes=").split("-"))
              for r in family_server.requests if r.path.startswith("/cdn/") and r.range]
    inside = sum(max(0, min(last + 1, stop) - max(first, start)) for first, last in ranges)
    assert stop - start == 400_000 and inside < 64 * 1024, ranges  # the estimate's slack at most
    assert any(first >= stop for first, _ in ranges)  # the merges, read from their start


def test_a_leader_that_404s_lets_the_next_file_lead(family_server, family):
    family_server.gone_after[(FAMILY, "a.gguf")] = 1  # its first block, then deleted
    sharing = VocabSharing()
    with Hub(endpoint=family_server.url, workers=1) as hub:
        gone, *infos = finished_within(30, lambda: hub.read_all(
            [member(n) for n in ("a.gguf", "b.gguf", "c.gguf")], sharing=sharing))
    assert isinstance(gone, HubFileNotFound) and str(gone).startswith(f"not found: {FAMILY}/a.gguf")
    differ = {"name", "path", "source"}
    for name, info in zip(("b.gguf", "c.gguf"), infos, strict=True):
        assert isinstance(info, ModelInfo), info
        assert info.model_dump(exclude=differ) == local_info(family[name]).model_dump(exclude=differ)
    assert sharing.leaders == [f"{FAMILY}/a.gguf", f"{FAMILY}/b.gguf"]
    assert sharing.followers == [f"{FAMILY}/c.gguf"]


def finished_within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``, from a thread that a test does not wait for past ``seconds`` (a follower
    left waiting would otherwise hang the run)."""
    done: list[T] = []
    thread = threading.Thread(target=lambda: done.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"still running after {seconds} s"
    return done[0]


def test_files_waiting_for_a_leader_that_fails_walk_their_own():
    start = VocabStart("tokenizer.ggml.tokens", 1000, 500, b"t000000", {})
    sharing = VocabSharing()
    leader = sharing.seat("leader")
    assert leader.lend(start) is None  # the first to come leads
    lent: list[VocabRun | None] = []
    follower = threading.Thread(target=lambda: lent.append(sharing.seat("follower").lend(start)),
                                daemon=True)
    follower.start()
    deadline = time.monotonic() + 10
    while not waiting(follower) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert waiting(follower)
    leader.close()  # its read failed before the vocabulary was walked
    follower.join(timeout=10)
    assert lent == [None] and list(sharing.fallbacks) == ["follower"]


def waiting(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in an Event's wait (for its leader)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "wait" and "threading" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_real_vocabularies_shared_give_a_full_reads_headers(tmp_path):
    """The benchmark's Qwen2.5 files (151,936 tokens, 151,387 merges): the follower's
    header is the one a full read gives."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_recommend

    repo = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
    files = {quant: bench_recommend.write(tmp_path / f"q-{quant}.gguf", repo, quant)
             for quant in ("Q4_K_M", "Q8_0")}
    server = HubServer()
    for path in files.values():
        server.add(repo, path.name, path)
    sharing = VocabSharing()
    with server, Hub(endpoint=server.url) as hub:
        headers = {q: hub.headers(HubModel(repo=repo, file=p.name), sharing=sharing)[0]
                   for q, p in files.items()}
    assert sharing.followers == [f"{repo}/q-Q8_0.gguf"]
    for quant, path in files.items():
        assert_same_header(headers[quant], read_gguf_header(path))
