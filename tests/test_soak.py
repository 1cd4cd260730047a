"""Soak: about two minutes of chats while the primary server dies and comes back and
another thread switches local models. Stops by itself."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest
from builders import write_gguf
from servers import LlamaServer

from zwaif_fallback import AllTargetsFailed, FallbackManager, FallbackSettings

SMOL = "SmolLM2-135M-Instruct.Q4_1"
PROMPTS = ["Name a fruit.", "Name a colour.", "Name an animal.", "Name a city."]
GEN = {"max_tokens": 12, "temperature": 0.0, "seed": 3}
DURATION_S = 110.0
ARTIFACTS = Path(__file__).parent / "artifacts"
CHATTERS = 8


def sources_of(answers: list[tuple[str, object, str]]) -> set[str]:
    return {result.source for _, result, _ in answers}


@pytest.mark.slow
def test_soak_chats_survive_a_flapping_primary_and_model_switches(isolated, smollm2):
    models = isolated / "models"
    models.mkdir()
    write_gguf(models / "tiny.gguf", seed=5)
    settings = FallbackSettings(models_dir=models, scan_system_stores=False, keep_alive=0,
                                timeout=5, max_retries=2, vram_monitoring=False)
    # It queues requests as Oobabooga does (its default would stop an answer for each newer one).
    server = LlamaServer(smollm2, n_ctx=512, interrupt_requests=False).start()
    with FallbackManager(settings) as manager:
        expected = {}
        for name in ("tiny", SMOL):  # what each local model answers to each prompt
            manager.switch_model(name, persist=False)
            expected[name] = {p: manager.chat([{"role": "user", "content": p}], **GEN).text
                              for p in PROMPTS}
        rss = psutil.Process().memory_info
        trace: list[float] = []  # RSS every 2 s: memory must level off, not keep growing
        deadline = time.monotonic() + DURATION_S
        stop = threading.Event()
        answers: list[tuple[str, object, str]] = []
        refused: list[AllTargetsFailed] = []
        crashes: list[BaseException] = []
        lock = threading.Lock()

        def chat(i: int) -> None:
            n = 0
            while time.monotonic() < deadline:
                prompt = PROMPTS[(i + n) % 4]
                n += 1
                try:
                    pieces = list(manager.stream_chat([{"role": "user", "content": prompt}],
                                                      primary=server.url, **GEN))
                    with lock:
                        answers.append((prompt, manager.last_result, "".join(pieces)))
                except AllTargetsFailed as exc:
                    with lock:
                        refused.append(exc)
                except BaseException as exc:  # anything else is a crash of the chat path
                    with lock:
                        crashes.append(exc)

        def flap() -> None:
            while not stop.wait(4.0):
                server.stop()
                if stop.wait(3.0):
                    break
                try:
                    server.start()
                except AssertionError as exc:  # a slow start is retried on the next round
                    with lock:
                        crashes.append(exc)

        def switch() -> None:
            n = 0
            while not stop.wait(2.0):
                manager.switch_model(("tiny", SMOL)[n % 2], persist=False)
                trace.append(rss().rss)
                n += 1

        workers = [threading.Thread(target=chat, args=(i,)) for i in range(CHATTERS)]
        helpers = [threading.Thread(target=flap), threading.Thread(target=switch)]
        for t in workers + helpers:
            t.start()
        for t in workers:
            t.join(DURATION_S + 120)  # a deadlock shows up as a thread still alive
        stop.set()
        for t in helpers:
            t.join(60)
        alive = [t for t in workers + helpers if t.is_alive()]
        third = len(trace) // 3
        middle, last = trace[third:2 * third], trace[2 * third:]
        growth = (sum(last) / len(last)) / (sum(middle) / len(middle)) - 1
    server.stop()
    summary = {"answers": len(answers), "all_targets_failed": len(refused),
               "by_source": {src: sum(r.source == src for _, r, _ in answers) for src in sources_of(answers)},
               "mid_stream_switches": sum(len(r.switches) for _, r, _ in answers),
               "rss_mb_first_last": [round(trace[0] / 2**20), round(trace[-1] / 2**20)],
               "rss_growth_last_vs_middle_third": round(growth, 4)}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "soak.json").write_text(json.dumps(summary, indent=2))

    assert not alive, "a thread is stuck: deadlock"
    assert not crashes, crashes[:3]
    assert len(answers) > 40
    sources = {result.source for _, result, _ in answers}
    assert {"primary", "local"} <= sources  # the primary really came and went
    for prompt, result, streamed in answers:
        assert streamed == result.text  # the stream the host read is the answer, whole
        if result.source == "local" and not result.switches:
            assert result.text == expected[result.model][prompt], (result.model, prompt)
    for exc in refused:
        assert exc.attempts and all(not a.ok for a in exc.attempts)
    assert growth < 0.10, f"RSS kept growing: the last third averaged {growth:+.0%} over the middle"
