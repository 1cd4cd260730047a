"""Benchmarks, history, calibration, the optimal model, health, monitoring and metrics,
on real models and a real SQLite file."""

from __future__ import annotations

import json
import urllib.request

import pytest
from builders import write_gguf, write_hf_chat_model, write_sparse_gguf
from conftest import run_cli
from fake_nvml.fake_ggml import cuda_build
from fake_nvml.pynvml import FakeNvml
from servers import free_port, refused_url, wait_until

from zwaif_fallback import (
    AllTargetsFailed,
    Busy,
    FallbackManager,
    FallbackSettings,
    HardwareProbe,
    JobNotFound,
    ModelNotFound,
    NotStarted,
)

SMOL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture
def models_dir(isolated):
    folder = isolated / "models"
    folder.mkdir()
    write_gguf(folder / "random-tiny.gguf", seed=11)
    return folder


def make(models_dir, probe=None, **settings) -> FallbackManager:
    base = dict(models_dir=models_dir, scan_system_stores=False, keep_alive=0,
                vram_monitoring=False)
    return FallbackManager(FallbackSettings(**(base | settings)), probe=probe)


@pytest.fixture(scope="module")
def smol_benchmark(tmp_path_factory):
    """One real benchmark of SmolLM2, shared by the tests that only read it."""
    data = tmp_path_factory.mktemp("data")
    with make(tmp_path_factory.mktemp("models"), data_dir=data) as manager:
        progress = []
        result = manager.benchmark(SMOL, progress=lambda f, m: progress.append((f, m)))
        return result, progress, data


def test_a_benchmark_measures_speed_memory_and_quality(smol_benchmark):
    result, progress, _ = smol_benchmark
    assert result.ok and result.runs == 3 and result.tokens > 0
    for field in ("load_s", "ttft_s", "prompt_tps", "gen_tps", "chars_per_s", "response_time_s",
                  "peak_ram_mb", "perplexity", "quality_score", "pass_rate"):
        assert getattr(result, field) is not None and getattr(result, field) > 0, field
    assert result.gen_tps_sd is not None and result.prompt_tokens > 10
    assert result.peak_vram_mb is None  # no NVIDIA driver here: not a made-up number
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0


def test_a_random_model_scores_clearly_worse_than_smollm2(smol_benchmark, models_dir):
    smol, _, _ = smol_benchmark
    with make(models_dir) as manager:
        random = manager.benchmark("random-tiny")
    assert random.perplexity > 10 * smol.perplexity
    assert random.quality_score < smol.quality_score - 0.3


def test_an_hf_model_is_benchmarked_through_transformers(isolated, tmp_path):
    folder = write_hf_chat_model(tmp_path / "hf-chat")
    with make(isolated / "models", hf_models=[str(folder)]) as manager:
        result = manager.benchmark("hf-chat")
    assert result.ok and result.gen_tps > 0 and result.perplexity > 1


def test_benchmark_all_skips_what_cannot_run(models_dir):
    (models_dir / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    with make(models_dir) as manager:
        seen = []
        results = {r.model: r for r in manager.benchmark_all(progress=lambda f, m: seen.append(f))}
    assert results["broken"].ok is False and results["broken"].error.startswith("skipped")
    assert results["random-tiny"].ok and results[SMOL].ok
    assert seen[-1] == 1.0


def test_benchmarks_run_as_jobs_with_progress_and_cancel(models_dir):
    with make(models_dir) as manager:
        job = manager.start_benchmark("random-tiny")
        assert job.wait(300) and job.status().state == "done"
        assert job.result().model == "random-tiny" and job.status().progress == 1.0
        job = manager.start_benchmark(None)
        job.cancel()
        assert job.wait(300)
        assert job.status().state == "cancelled"
        with pytest.raises(ModelNotFound):
            manager.start_benchmark("nope")
        assert [j.name for j in manager.jobs()] == ["benchmark random-tiny", "benchmark all models"]
        assert manager.job(job.id) is job


def test_an_unknown_job_id_is_a_lookup_error_naming_the_id(models_dir):
    with make(models_dir) as manager, pytest.raises(JobNotFound, match="no job with id 'nope'") as info:
        manager.job("nope")
    assert isinstance(info.value, LookupError) and info.value.exit_code == 2


def test_history_is_shared_between_processes(isolated, models_dir):
    result = run_cli("--models-dir", str(models_dir), "bench", "random-tiny", "--json", cwd=isolated,
                     env={"FALLBACK_SCAN_SYSTEM_STORES": "false"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["model"] == "random-tiny"
    with make(models_dir) as manager:  # the same data_dir, another process
        history = manager.benchmark_history()
    assert [h["model"] for h in history] == ["random-tiny"]


def test_failovers_are_recorded(models_dir):
    with make(models_dir) as manager:
        manager.chat([{"role": "user", "content": "hi"}], primary=refused_url(), max_tokens=4)
        events = manager.failover_history()
    assert [(e["source"], e["ok"]) for e in events] == [("local", True), ("primary", False)]


def test_calibration_round_trip(models_dir):
    with make(models_dir) as manager:
        before = manager.check_compatibility(SMOL)
        assert not before.calibrated
        manager.switch_model(SMOL, persist=False)
        after = manager.check_compatibility(SMOL)
    assert after.calibrated and "calibrated" in after.reason
    assert after.ram_mb >= before.ram_mb  # on the CPU a measurement can only raise it
    with make(models_dir) as manager:  # remembered across managers (on disk)
        assert manager.check_compatibility(SMOL).calibrated


def test_optimize_picks_the_best_and_switches(smol_benchmark, models_dir):
    with make(models_dir) as manager:
        manager.benchmark("random-tiny")
        dry = manager.optimize(apply=False)
        assert dry.selected == SMOL and not dry.switched and manager.current_model is None
        result = manager.optimize(apply=True)
        assert result.switched and manager.current_model.name == SMOL
        scores = {e.model: e.score for e in result.ranking}
        assert scores[SMOL] > scores["random-tiny"]


def test_optimize_passes_by_a_model_that_fits_but_fails_to_load(models_dir):
    # A header that promises 245M parameters (ranked above SmolLM2 by its size) and a file
    # llama.cpp refuses: optimize failed on it every time, and health kept advising it
    write_sparse_gguf(models_dir / "broken-big.gguf", n_vocab=60000, n_embd=4096)
    (models_dir / "random-tiny.gguf").unlink()
    with make(models_dir) as manager:
        assert manager.optimize(apply=False).selected == "broken-big"
        result = manager.optimize(apply=True)
        assert (result.selected, result.switched) == (SMOL, True)
        assert manager.current_model.name == SMOL and "broken-big failed to load" in result.reason
        # remembered: ranked, checked and chatted as a model that cannot load here
        assert [(e.model, e.compatible) for e in result.ranking] == [(SMOL, True), ("broken-big", False)]
        check = manager.check_compatibility("broken-big")
        assert check.verdict == "none" and check.reason.startswith("it failed to load here: ")
        assert manager.health().optimal_model == SMOL


def test_optimize_says_switched_only_when_the_fallback_model_changes(models_dir):
    # a CLI command's process holds no model: optimize said "(switched)" on every run
    with make(models_dir) as manager:
        assert manager.optimize().switched  # preferred_model was unset
    with make(models_dir) as manager:
        again = manager.optimize()
    assert (again.selected, again.switched) == (SMOL, False)


def test_health_says_when_the_preferred_model_is_a_typo(models_dir):
    # it was ignored in silence: another model answered, and health said nothing
    with make(models_dir, preferred_model="SmolLM2-135M-Instuct.Q4_1") as manager:
        advice = manager.health().recommendations
    said = next(a for a in advice if "preferred_model 'SmolLM2-135M-Instuct.Q4_1' cannot" in a)
    assert f"did you mean '{SMOL}'" in said and "zwaif-fallback models" in said


RTX = [{"name": "NVIDIA GeForce RTX 3060", "total_mb": 12288, "used_mb": 11800, "utilization": 20}]


def test_health_with_a_simulated_gpu(models_dir):
    probe = HardwareProbe(nvml=FakeNvml(RTX), ggml=cuda_build())
    with make(models_dir, probe=probe) as manager:
        manager.switch_model(SMOL, persist=False)
        report = manager.health()
    assert set(report.factors) == {"vram", "model", "system", "gpu", "primary", "errors",
                                   "speed_trend"}
    assert report.factors["gpu"].score == 100 and "RTX 3060" in report.factors["gpu"].detail
    assert report.factors["vram"].score < 20  # 488 MiB free of 12 GiB
    assert 0 <= report.score <= 100
    assert report.status == {8: "Excellent", 9: "Excellent", 10: "Excellent", 6: "Good", 7: "Good",
                             4: "Fair", 5: "Fair"}.get(report.score // 10, "Poor")
    assert report.current_model == SMOL
    assert any("needs" in r and "GiB" in r for r in report.recommendations), report.recommendations


def test_performance_stats_sum_up_benchmarks_attempts_and_samples(models_dir):
    with make(models_dir) as manager:
        manager.benchmark("random-tiny")
        manager.switch_model("random-tiny", persist=False)
        manager.chat([{"role": "user", "content": "hi"}], primary=refused_url(), max_tokens=4)
        stats = manager.performance_stats()
        report = manager.health()
    assert stats.current_model == "random-tiny" and stats.current_benchmark.gen_tps > 0
    assert (stats.benchmarked_models, stats.benchmark_runs) == (1, 1)
    assert (stats.attempts_last_hour, stats.failed_last_hour) == (2, 1)
    assert stats.background_samples == 0 and stats.background_summary == {}
    assert stats.recommendations == report.recommendations


def test_health_changes_nothing(models_dir):
    with make(models_dir) as manager:
        manager.health()
        assert manager.current_model is None and manager.benchmark_history() == []


def test_health_sees_a_failing_primary(models_dir):
    url = refused_url()
    with make(models_dir, primary_url=url) as manager:
        for _ in range(3):
            manager.chat([{"role": "user", "content": "hi"}], max_tokens=2)
        report = manager.health()
    assert report.factors["primary"].score == 10
    assert any("main API" in r for r in report.recommendations)


def test_health_says_a_main_api_that_is_not_there_wants_starting_and_forgets_one_set_before(models_dir):
    with make(models_dir) as manager:
        manager.update_settings(primary_url=refused_url())
        manager.chat([{"role": "user", "content": "hi"}], max_tokens=2)
        refused = manager.health()
        manager.update_settings(primary_url=refused_url())  # another server: no news of it yet
        moved = manager.health().factors["primary"]
    assert refused.factors["primary"].score == 0
    assert any("nothing answered at its address: start it" in r for r in refused.recommendations)
    assert not any("raise the timeout" in r for r in refused.recommendations)  # it was not slow
    assert (moved.score, moved.detail) == (100, "no primary requests in the last hour")


def test_health_weighs_a_host_s_own_api_call_as_the_primary(models_dir):
    # Z-WAIF embeds the tabs and passes its own API call: it is the primary, not "none"
    def zwaif_api(messages, **gen):
        raise ConnectionError("Oobabooga is not running")

    with make(models_dir) as manager:
        healthy = manager.health().factors["primary"]
        for _ in range(3):
            manager.chat([{"role": "user", "content": "hi"}], primary=zwaif_api, max_tokens=2)
        report = manager.health()
    failing = report.factors["primary"]
    assert (healthy.score, healthy.detail) == (60, "no primary API configured: every answer is local")
    assert (failing.score, failing.detail) == (
        10, "the primary API's circuit breaker is open: it failed repeatedly")
    assert any(r.startswith("The host's own API call (host:test_health") for r in report.recommendations)


def test_health_weighs_the_host_call_the_latest_chat_used(models_dir):
    # a host that moved from a failing call to another one is healthy again
    def failing(messages, **gen):
        raise ConnectionError("down")

    def working(messages, **gen):
        return "Hi."

    with make(models_dir, primary_url="http://127.0.0.1:9/v1") as manager:
        for _ in range(3):
            manager.chat([{"role": "user", "content": "hi"}], primary=failing, max_tokens=2)
        assert manager.health().factors["primary"].score == 10
        assert manager.chat([{"role": "user", "content": "hi"}], primary=working).source == "primary"
        assert "circuit breaker is open" not in manager.health().factors["primary"].detail


@pytest.mark.parametrize("url, api, advised", [
    ("http://127.0.0.1:11434/v1", "openai", True),  # Ollama's /v1: Z-WAIF's options are lost
    ("http://127.0.0.1:11434", "ollama", False),
    ("http://127.0.0.1:5000/v1", "openai", False),  # text-generation-webui
])
def test_health_advises_ollamas_own_api_for_an_ollama_primary_asked_through_v1(models_dir, url, api, advised):
    with make(models_dir, primary_url=url, primary_api=api) as manager:
        report = manager.health()
    assert any("FALLBACK_PRIMARY_API=ollama" in r for r in report.recommendations) is advised


def test_monitoring_starts_reports_live_and_stops_early(models_dir):
    with make(models_dir) as manager:
        manager.start_monitoring(10, interval_s=0.2)
        wait_until(lambda: len(manager.monitoring_report().samples) >= 3, timeout_s=10,
                   what="three samples")
        live = manager.monitoring_report()
        assert live.running and live.samples[0].ram_used_mb > 0
        report = manager.stop_monitoring()
        assert report.stopped_early and not report.running
        assert set(report.summary) >= {"ram_used_mb", "cpu_percent"}
        assert manager.monitor_history()[0]["stopped_early"] is True


def test_monitoring_refuses_a_second_session_and_a_stop_before_a_start(models_dir):
    with make(models_dir) as manager:
        with pytest.raises(NotStarted, match="no monitoring session was started") as info:
            manager.stop_monitoring()
        assert info.value.exit_code == 2
        with pytest.raises(NotStarted):
            manager.monitoring_report()
        manager.start_monitoring(10, interval_s=1)
        with pytest.raises(Busy, match="already running; stop it first") as busy:
            manager.start_monitoring(10, interval_s=1)
        assert busy.value.exit_code == 1
        manager.stop_monitoring()


def test_monitoring_refuses_bad_durations(models_dir):
    from zwaif_fallback import InvalidSettings

    with make(models_dir) as manager:
        for duration in (5, 301, float("nan")):
            with pytest.raises(InvalidSettings):
                manager.start_monitoring(duration)


def test_the_metrics_endpoint_is_scraped_over_http(models_dir):
    with make(models_dir) as manager:
        port = free_port()
        stop = manager.metrics.serve(port)
        try:
            manager.chat([{"role": "user", "content": "PRIVATE-WORDS"}], primary=refused_url(),
                         max_tokens=4)
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        finally:
            stop()
    text = body.decode()
    assert "zwaif_requests_total" in text and "zwaif_failovers_total" in text
    assert "zwaif_ram_available_mb" in text and "zwaif_breaker_state" in text
    assert "PRIVATE-WORDS" not in text


def test_cli_health_optimize_and_monitor(isolated, models_dir):
    env = {"FALLBACK_SCAN_SYSTEM_STORES": "false", "FALLBACK_KEEP_ALIVE": "0"}
    health = run_cli("--models-dir", str(models_dir), "health", "--json", cwd=isolated, env=env)
    data = json.loads(health.stdout)
    assert set(data) >= {"score", "status", "factors", "current_model", "optimal_model",
                         "recommendations"}
    optimize = run_cli("--models-dir", str(models_dir), "optimize", "--dry-run", "--json",
                       cwd=isolated, env=env)
    data = json.loads(optimize.stdout)
    assert data["switched"] is False and {"model", "score", "compatible", "reason"} <= set(
        data["ranking"][0])
    bad = run_cli("monitor", "--duration", "3", cwd=isolated, env=env)
    assert bad.returncode == 2 and "--duration must be between 10 and 300" in bad.stderr


def test_a_broken_history_store_never_breaks_the_chat_path(isolated, models_dir):
    blocker = isolated / "not-a-folder"
    blocker.write_text("")
    with make(models_dir, data_dir=blocker / "data") as manager:
        result = manager.chat([{"role": "user", "content": "hi"}], primary=refused_url(),
                              max_tokens=4)
        assert result.source == "local"
        assert manager.store_problem() and manager.failover_history() == []


def test_auto_optimize_picks_a_model_at_start(models_dir):
    with make(models_dir, auto_optimize_vram=True) as manager:
        wait_until(lambda: manager.current_model is not None, timeout_s=120,
                   what="the start-up optimization")
        assert manager.current_model.name == manager.optimize(apply=False).selected


def test_vram_monitoring_keeps_a_light_sampler_running(models_dir):
    with make(models_dir, vram_monitoring=True) as manager:
        samples = wait_until(lambda: manager.background_samples, timeout_s=10,
                             what="a background sample")
        assert samples[0].ram_used_mb > 0


def test_cli_monitor_runs_a_whole_session(isolated):
    result = run_cli("monitor", "--duration", "10", "--interval", "2", "--json", cwd=isolated,
                     timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["duration_s"], data["interval_s"], data["stopped_early"]) == (10, 2, False)
    assert len(data["samples"]) == 6 and data["samples"][-1]["t_s"] >= 9.9
    assert set(data["summary"]["ram_used_mb"]) == {"min", "mean", "max", "p95"}
    # this process generates nothing: its tokens/s is not a measured 0 (serve's is on /metrics)
    assert {s["tokens_per_s"] for s in data["samples"]} == {None}
    assert "tokens_per_s" not in data["summary"] and data["history_problem"] is None


def test_auto_optimize_follows_a_change_of_free_vram(models_dir):
    """When free VRAM changes a verdict, optimization runs again (a simulated GPU)."""
    import threading

    from zwaif_fallback.fit import CUDA_CONTEXT_MB
    from zwaif_fallback.optimizer import watch_fits

    nvml = FakeNvml([{"name": "NVIDIA Test", "total_mb": 16000, "used_mb": 15900}])
    with make(models_dir, probe=HardwareProbe(nvml=nvml, ggml=cuda_build(), ttl_s=0.0)) as manager:
        runs, looks = [], []

        def verdicts() -> tuple[tuple[str, str], ...]:
            looks.append(1)
            return tuple((m.name, manager.check_compatibility(m.name).verdict)
                         for m in manager.discover_models() if m.usable)

        def optimize() -> bool:
            runs.append(True)
            return manager.optimize(apply=True).switched

        stop = threading.Event()
        watcher = threading.Thread(target=watch_fits, args=(verdicts, optimize, stop),
                                   kwargs={"interval_s": 0.05}, daemon=True)
        watcher.start()
        try:
            wait_until(lambda: len(runs) == 1, timeout_s=60, what="the first optimization")
            assert manager.check_compatibility(SMOL).verdict == "cpu"
            seen = len(looks)  # let the watcher take the state after its own switch as baseline
            wait_until(lambda: len(looks) >= seen + 2, timeout_s=60, what="two more looks")
            assert len(runs) == 1  # nothing changed: no new optimization
            nvml.gpus[0]["used_mb"] = 16000 - 2 * CUDA_CONTEXT_MB - 2000  # room for a full offload
            wait_until(lambda: len(runs) == 2, timeout_s=60, what="a new optimization")
        finally:
            stop.set()
            watcher.join(10)


def test_background_work_follows_settings_changes(models_dir):
    with make(models_dir, vram_monitoring=True) as manager:  # an argument pins vram_monitoring
        assert manager.background_work() == ["vram_sampler"]
    settings = FallbackSettings(models_dir=models_dir, scan_system_stores=False, keep_alive=0)
    with FallbackManager(settings) as manager:
        assert manager.background_work() == ["vram_sampler"]  # vram_monitoring defaults to on
        manager.update_settings(vram_monitoring=False)
        assert manager.background_work() == []
        manager.update_settings(auto_optimize_vram=True)
        assert manager.background_work() == ["auto_optimizer"]
        wait_until(lambda: manager.current_model is not None, timeout_s=120,
                   what="the optimizer started by the new setting")
        manager.update_settings(auto_optimize_vram=False)
        assert manager.background_work() == []


def test_health_counts_the_primary_requests_that_went_straight_through(models_dir):
    # 11 of 12 requests answered: only the one that failed was a "failover event", and the
    # rate read "1 of 1 failed", score 0, "start it"
    answers = iter(["Hi."] * 10 + [ConnectionError("down")] + ["Hi."])

    def zwaif_api(messages, **gen):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with make(models_dir) as manager:
        sources = [manager.chat([{"role": "user", "content": "hi"}], primary=zwaif_api,
                                max_tokens=2).source for _ in range(12)]
        primary = manager.health().factors["primary"]
    assert sources.count("primary") == 11
    assert (primary.score, primary.detail) == (92, "1 of 12 primary requests failed in the last hour")


def test_health_says_history_is_not_being_saved_rather_than_no_failures(isolated, models_dir):
    blocker = isolated / "not-a-folder"
    blocker.write_text("")
    with make(models_dir, data_dir=blocker / "data") as manager:
        manager.chat([{"role": "user", "content": "hi"}], primary=refused_url(), max_tokens=2)
        report = manager.health()
    errors = report.factors["errors"]
    assert errors.detail.startswith("unknown: history is not being saved") and errors.score < 100
    assert any(r.startswith("History is not being saved") and "data_dir" in r
               for r in report.recommendations)


def test_health_says_nothing_can_answer_when_no_model_fits_and_no_main_api_is_set(isolated, monkeypatch):
    import psutil

    # a machine with 50 MiB of RAM free: the bundled SmolLM2 needs 300 (psutil's reading, faked)
    low = psutil.virtual_memory()._replace(available=50 * 2**20)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: low)
    (isolated / "empty").mkdir()
    with make(isolated / "empty") as manager:
        report = manager.health()
        with pytest.raises(AllTargetsFailed) as failed:
            manager.chat([{"role": "user", "content": "hi"}], max_tokens=2)
    assert f"no local model fits: {SMOL} " in str(failed.value)  # not "no targets configured"
    assert report.status == "Poor" and report.optimal_model is None
    assert report.factors["primary"].score == 0 and "no local model fits" in report.factors["model"].detail
    assert any(r.startswith("Nothing can answer a chat") for r in report.recommendations)
    assert "every answer is local" not in report.factors["primary"].detail
