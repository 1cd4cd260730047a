"""Real local models in one process: concurrency, switching, memory, keep_alive, transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading

import psutil
import pytest
from builders import write_gguf, write_hf_chat_model, write_sparse_gguf
from conftest import local_models
from servers import wait_until

from zwaif_fallback import (
    AllTargetsFailed,
    FallbackError,
    FallbackManager,
    FallbackSettings,
    IncompatibleModel,
    InvalidSettings,
)
from zwaif_fallback.backends.base import GenerationParams, Usage

SMOL = "SmolLM2-135M-Instruct.Q4_1"
PROMPTS = ["Name a fruit.", "Name a colour.", "Name an animal.", "Name a city."]
GEN = {"max_tokens": 12, "temperature": 0.0, "seed": 3}


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def models_dir(isolated):
    folder = isolated / "models"
    folder.mkdir()
    write_gguf(folder / "tiny.gguf", seed=5)
    return folder


def make(models_dir, **settings) -> FallbackManager:
    base = dict(models_dir=models_dir, scan_system_stores=False, keep_alive=0,
                preferred_model=SMOL)
    return FallbackManager(FallbackSettings(**(base | settings)))


def references(manager: FallbackManager, name: str) -> dict[str, str]:
    manager.switch_model(name, persist=False)
    return {p: manager.chat(ask(p), **GEN).text for p in PROMPTS}


def test_concurrent_chats_are_all_served_and_never_mixed(models_dir):
    with make(models_dir) as manager:
        expected = references(manager, SMOL)
        results: dict[int, object] = {}

        def chat(i: int) -> None:
            results[i] = manager.chat(ask(PROMPTS[i % 4]), **GEN)

        threads = [threading.Thread(target=chat, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 8
        for i, result in results.items():
            assert result.text == expected[PROMPTS[i % 4]], i


def test_chats_go_on_while_another_thread_switches_models(models_dir):
    with make(models_dir) as manager:
        expected = {"tiny": references(manager, "tiny"), SMOL: references(manager, SMOL)}
        results, errors = [], []
        stop = threading.Event()

        def chat(i: int) -> None:
            try:
                for n in range(3):
                    prompt = PROMPTS[(i + n) % 4]
                    results.append((prompt, manager.chat(ask(prompt), **GEN)))
            except Exception as exc:  # any failure is a test failure below
                errors.append(exc)

        def switch() -> None:
            names = ["tiny", SMOL]
            n = 0
            while not stop.is_set() and n < 8:
                manager.switch_model(names[n % 2], persist=False)
                n += 1

        switcher = threading.Thread(target=switch)
        chatters = [threading.Thread(target=chat, args=(i,)) for i in range(4)]
        switcher.start()
        for t in chatters:
            t.start()
        for t in chatters:
            t.join(300)
        stop.set()
        switcher.join(300)
        assert not errors
        assert len(results) == 12
        for prompt, result in results:
            assert result.text == expected[result.model][prompt], (result.model, prompt)


@pytest.mark.slow
def test_twenty_switches_do_not_leak_memory(models_dir):
    with make(models_dir) as manager:
        rss = psutil.Process().memory_info
        for name in ("tiny", SMOL):
            manager.switch_model(name, persist=False)
            manager.chat(ask("hi"), **GEN)
        baseline = rss().rss
        for n in range(20):
            manager.switch_model(("tiny", SMOL)[n % 2], persist=False)
            manager.chat(ask("hi"), **GEN)
        growth = (rss().rss - baseline) / baseline
        assert growth < 0.10, f"RSS grew {growth:.1%} over 20 switches"


def test_an_idle_model_is_unloaded_and_reloaded_on_demand(models_dir):
    settings = FallbackSettings(models_dir=models_dir, scan_system_stores=False, keep_alive=1)
    with local_models(settings) as local:
        smol = local.valid(SMOL)
        params = GenerationParams(**GEN)
        assert "".join(local.stream(smol, ask("hi"), params))
        assert local.loaded
        wait_until(lambda: not local.loaded, timeout_s=15, what="keep_alive unload")
        assert local.current.name == SMOL  # still the current model, just unloaded
        assert "".join(local.stream(smol, ask("hi"), params))
        assert local.loaded


def test_switch_model_persists_the_preferred_model(models_dir):
    settings = FallbackSettings(models_dir=models_dir, scan_system_stores=False, keep_alive=0)
    with FallbackManager(settings) as manager:
        assert manager.switch_model("tiny").name == "tiny"
        assert manager.settings.preferred_model == "tiny"
        assert manager.current_model.name == "tiny"
    assert FallbackSettings().preferred_model == "tiny"  # saved in the settings file


def test_a_model_too_big_for_this_machine_is_refused(models_dir):
    write_sparse_gguf(models_dir / "giant.gguf", n_vocab=160_000, n_embd=400_000, merges=False)
    with make(models_dir) as manager:
        with pytest.raises(IncompatibleModel, match="does not fit"):
            manager.switch_model("giant")
        assert manager.check_compatibility("giant").verdict == "none"


@pytest.mark.parametrize("n_ctx", [256, 262144])
def test_a_context_outside_the_settings_range_is_refused_as_the_cli_refuses_it(models_dir, n_ctx):
    with make(models_dir) as manager:
        for ask in (lambda: manager.check_compatibility("tiny", n_ctx=n_ctx),
                    lambda: manager.recommend_models(["tiny"], n_ctx=n_ctx)):
            with pytest.raises(InvalidSettings) as refused:
                ask()
            assert f"n_ctx={n_ctx} is out of range; allowed: 512 to 131072" in str(refused.value)


@pytest.mark.parametrize("given, named", [
    ({"n_ctx": "big"}, "n_ctx='big' is not a whole number"),
    ({"n_ctx": 4096.5}, "n_ctx=4096.5 is not a whole number"),
    ({"gpu_layers": "x"}, "gpu_layers='x' is not a whole number"),
    ({"free_vram_mb": "x"}, "free_vram_mb='x' is out of range"),
    ({"kv_type": 8}, "kv_type=8 is not valid"),
])
def test_an_argument_of_the_wrong_type_is_refused_by_name(models_dir, given, named):
    with make(models_dir) as manager:
        with pytest.raises(InvalidSettings, match=named):
            manager.check_compatibility("tiny", **given)
        assert manager.check_compatibility("tiny", n_ctx=4096.0).n_ctx == 4096  # a UI's number box


def test_a_preferred_model_set_at_runtime_answers_the_next_fallback(models_dir, caplog):
    with FallbackManager(FallbackSettings(models_dir=models_dir, scan_system_stores=False,
                                          keep_alive=0)) as manager:
        manager.switch_model(SMOL)  # saved as preferred_model
        assert manager.chat(ask("Hi"), **GEN).model == SMOL
        manager.update_settings(preferred_model="tiny")
        assert manager.chat(ask("Hi"), **GEN).model == "tiny"
        manager.update_settings(preferred_model="tinny")  # a typo: said, and nothing changes
        assert "preferred_model 'tinny' cannot be used" in caplog.text
        assert "did you mean 'tiny'" in caplog.text
        assert manager.preferred_problem() is not None
        assert manager.chat(ask("Hi"), **GEN).model == "tiny"


def test_close_stops_the_answer_being_given_and_a_closed_manager_refuses_more(models_dir):
    manager = make(models_dir, preferred_model="tiny")
    stream = manager.stream_chat(ask("Tell a long story."), max_tokens=400, temperature=1.0, seed=1)
    assert next(stream)
    manager.close()
    rest: list[str] = []
    with pytest.raises(AllTargetsFailed, match="this manager is closed"):
        rest.extend(stream)
    assert len(rest) <= 1  # the answer stopped at its next token, not at max_tokens
    assert manager.loaded_model() is None
    loads = manager._local.pool.loads
    with pytest.raises(FallbackError, match="this manager is closed; make a new FallbackManager"):
        manager.chat(ask("Hi"), **GEN)
    with pytest.raises(FallbackError, match="this manager is closed"):
        manager.switch_model("tiny")
    assert "this manager is closed" in manager.chat_completion({"messages": ask("Hi")})["error"]["message"]
    assert manager._local.pool.loads == loads and manager.loaded_model() is None  # nothing loaded again


@pytest.fixture(scope="module")
def hf_chat_model(tmp_path_factory):
    return write_hf_chat_model(tmp_path_factory.mktemp("hf") / "tiny-chat-hf")


def test_an_hf_folder_answers_through_transformers(isolated, hf_chat_model):
    settings = FallbackSettings(hf_models=[str(hf_chat_model)], preferred_model="tiny-chat-hf",
                                models_dir=isolated / "models", scan_system_stores=False,
                                keep_alive=0)
    with FallbackManager(settings) as manager:
        manager.switch_model("tiny-chat-hf", persist=False)
        pieces = list(manager.stream_chat(ask("hello world"), **GEN))
        result = manager.last_result
    assert result.model == "tiny-chat-hf" and result.source == "local"
    assert "".join(pieces) == result.text and len(pieces) > 0
    assert result.tokens == result.completion_tokens >= len(pieces)  # as transformers counted them
    assert "<|im_start|>" not in result.text and "hello world" not in result.text  # no echo


def test_a_broken_tokenizer_is_named_with_what_to_do(tmp_path, hf_chat_model):
    from zwaif_fallback.backends.transformers import TransformersBackend
    from zwaif_fallback.errors import ModelLoadError

    folder = tmp_path / "badtok"
    shutil.copytree(hf_chat_model, folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "truncation": ')  # a download cut short
    with pytest.raises(ModelLoadError, match=r"badtok's tokenizer \(tokenizer.json .*download them again"):
        TransformersBackend("badtok", str(folder)).load()


def test_an_hf_models_prompt_is_counted_as_many_tokens_as_it_is_given(hf_chat_model):
    # bench divides by this count: transformers 5 gives a BatchEncoding, whose len() is its
    # two keys, and a prompt of 88 tokens read as 2 (prompt tokens/s ~40 times too low)
    from zwaif_fallback.backends.transformers import TransformersBackend

    backend, usage = TransformersBackend("tiny-chat-hf", str(hf_chat_model)), Usage()
    try:
        counted = backend.count_tokens(ask("hello world"))
        list(backend.stream(ask("hello world"), GenerationParams(max_tokens=2), usage=usage))
    finally:
        backend.unload()
    assert counted == usage.prompt_tokens > 2


def test_the_first_hf_model_in_a_process_is_not_charged_for_importing_torch(hf_chat_model, tmp_path):
    # torch and transformers hold ~320 MiB once imported: a 0.4 MB model's first benchmark
    # said 318 MiB, a second one 2, and calibration took the import for the model's load
    tmp = tmp_path / "data"
    script = f"""
import json
from zwaif_fallback.backends.transformers import TransformersBackend
from zwaif_fallback.bench import benchmark_model
from zwaif_fallback import FallbackManager, FallbackSettings
with FallbackManager(FallbackSettings(hf_models=[{str(hf_chat_model)!r}], scan_system_stores=False,
                                      models_dir={str(hf_chat_model)!r}, data_dir={str(tmp)!r})) as m:
    info = m.find_model("tiny-chat-hf")
loaded = TransformersBackend(info.name, info.path)
loaded.load()
benched = benchmark_model(info, TransformersBackend(info.name, info.path), runs=1, quality=False)
print(json.dumps([loaded.measured_mb[0], benched.peak_ram_mb]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    load_mb, bench_mb = json.loads(done.stdout.splitlines()[-1])
    assert load_mb < 64 and bench_mb < 64, (load_mb, bench_mb)


@pytest.mark.parametrize("local", ["tiny-chat-hf", SMOL])
def test_a_text_completion_is_the_prompt_continued_without_the_chat_template(isolated, hf_chat_model, local):
    settings = FallbackSettings(hf_models=[str(hf_chat_model)], preferred_model=local,
                                models_dir=isolated / "models", scan_system_stores=False, keep_alive=0)
    with FallbackManager(settings) as manager:
        manager.switch_model(local, persist=False)
        text = manager.text_completion({"prompt": "hello world", **GEN})
        streamed = list(manager.stream_text_completion({"prompt": "hello world", **GEN}))
        refused = list(manager.stream_text_completion({"prompt": ["two", "prompts"]}))
        chat = manager.chat_completion({"messages": ask("hello world"), **GEN})
    assert (text["object"], text["model"]) == ("text_completion", local)
    # streamed, the same continuation, in text_completion chunks
    assert {c["object"] for c in streamed} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in streamed) == text["choices"][0]["text"]
    assert streamed[-1]["choices"][0]["finish_reason"] == text["choices"][0]["finish_reason"]
    assert [r["error"]["param"] for r in refused] == ["prompt"]  # one error object, never a raise
    assert text["choices"][0]["text"] and text["choices"][0]["finish_reason"] in ("stop", "length")
    # "hello world" and a BOS, where the chat template wraps it in its turn markers
    assert 1 < text["usage"]["prompt_tokens"] < chat["usage"]["prompt_tokens"]


@pytest.mark.parametrize("runtime", ["llama.cpp", "transformers"])
def test_a_prompt_that_begins_with_the_bos_is_given_no_second_one(isolated, tmp_path, runtime):
    # A prompt written for the model may carry its BOS text; a second BOS before it, added
    # by the tokenizer, confuses a model (text-generation-webui drops it too).
    if runtime == "llama.cpp":
        models = isolated / "models"
        models.mkdir()
        write_gguf(models / "bos.gguf", extra_kv={"tokenizer.ggml.add_bos_token": True})
        settings = FallbackSettings(models_dir=models, scan_system_stores=False, keep_alive=0)
    else:
        folder = write_hf_chat_model(tmp_path / "bos", adds_bos=True)
        settings = FallbackSettings(hf_models=[str(folder)], models_dir=isolated / "models",
                                    scan_system_stores=False, keep_alive=0)
    with FallbackManager(settings) as manager:
        manager.switch_model("bos", persist=False)
        counts = [manager.text_completion({"prompt": prompt, **GEN})["usage"]["prompt_tokens"]
                  for prompt in ("hello world", "<|endoftext|>hello world", "hello world<|endoftext|>")]
    assert counts[0] == counts[1] < counts[2], counts  # the BOS added once, and kept elsewhere


@pytest.mark.slow
def test_transformers_loads_a_gguf_file(smollm2):
    from zwaif_fallback.backends.transformers import TransformersBackend

    backend = TransformersBackend("smol-hf", str(smollm2))
    try:
        text = "".join(backend.stream(ask("What is the capital of France?"),
                                      GenerationParams(max_tokens=12, temperature=0.0)))
    finally:
        backend.unload()
    assert "Paris" in text
