"""FallbackManager: the one facade the host, the CLI and the web UI use.

It owns state (the settings, the hardware probe, the catalog, the local models,
the router and its breakers) and delegates the work: chats to ``chats``, local
models to ``local``, downloads to ``pull_jobs``, and through ``measuring`` (which makes
them on first use) benchmarks to ``bench_jobs``, ranking and health to ``optimizer``,
history, metrics and sampling to ``telemetry``. Each public method's docstring lives
here, once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from . import completions
from .backends.base import Message
from .catalog import Catalog
from .chats import ChatPlan, Chats, ChatStream
from .completion_request import CompletionRequest
from .errors import InvalidSettings, StorageError
from .fit import Compatibility
from .hardware import HardwareProbe, SystemStatus
from .local import LocalModels
from .measuring import Measuring
from .model_info import ModelInfo
from .pool import HeldModel
from .pull_jobs import Pulls
from .results import ChatResult
from .routing import Primary, Router
from .settings import FallbackSettings

if TYPE_CHECKING:
    from .bench import BenchmarkResult
    from .bench_jobs import BenchmarkJob
    from .health import HealthReport, Optimization, PerformanceStats
    from .jobs import Job
    from .metrics import Metrics
    from .monitor import MonitoringReport, Sample
    from .pull import ProgressCallback
    from .recommend import Recommendation

__all__ = ["FallbackManager"]

log = logging.getLogger(__name__)
#: how long store_problem waits for the history writes queued before it (a locked database:
#: the busy timeout, once)
STORE_WAIT_S = 15.0


class FallbackManager:
    """Discovers models, checks what fits, and answers through the failover chain.

    Args:
        settings: the settings to use; None reads the environment and the settings file.
        probe: the hardware probe; None builds one (tests pass one with a simulated NVML).
        background: start the background work the settings ask for (the VRAM sampler,
            auto-optimization); one-shot tools such as the CLI pass False.
    """

    def __init__(self, settings: FallbackSettings | None = None, *,
                 probe: HardwareProbe | None = None, background: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        # perf_counter, not monotonic: on Windows before Python 3.13, monotonic ticks in
        # 15.6 ms steps, coarser than a local model's time to the first token; elsewhere
        # the two are one clock
        self._settings = settings if settings is not None else FallbackSettings()
        self._settings_lock = threading.Lock()
        self._probe = probe or HardwareProbe()
        self._catalog = Catalog()
        self._local = LocalModels(settings=lambda: self._settings, probe=self._probe,
                                  discover=self.discover_models, find=self.find_model,
                                  store=lambda: self._measuring.telemetry.store, clock=clock)
        self._router = Router(local_stream=self._local.stream, current=lambda: self._local.current,
                              ranked=self._local.ranked, on_primary_down=self._local.preload_async,
                              local_steps=self._local.steps, clock=clock,
                              why_no_local=self._local.why_none)
        self._chats = Chats(settings=self._current_settings, router=self._router,
                            recorder=lambda: self._measuring.telemetry, on_primary_answer=self._warm_up,
                            clock=clock, closed=lambda: self._stop.is_set())
        self._measuring = Measuring(local=self._local, probe=self._probe, settings=lambda: self._settings,
                                    breakers=self._router.breaker_states, switch=self.switch_model,
                                    host_call=lambda: self._router.host_call,
                                    clock=clock)
        self._pulls = Pulls(settings=lambda: self._settings,
                            on_pulled=lambda: self.discover_models(refresh=True))
        self._warming_lock = threading.Lock()
        self._stop = threading.Event()
        for problem in self._settings.problems:
            log.warning("settings: %s", problem)
        self._background = background
        self._warming: threading.Thread | None = None
        self._apply_background()

    # -- settings -------------------------------------------------------------

    @property
    def settings(self) -> FallbackSettings:
        return self._settings

    def update_settings(self, **changes: Any) -> FallbackSettings:
        """Validate, save atomically and apply ``changes``.

        Raises:
            InvalidSettings: a value is out of range or pinned; nothing changes then.
            StorageError: the settings file cannot be written; nothing changes then.
        """
        with self._settings_lock:
            before, self._settings = self._settings, self._settings.saved(**changes)
        self._local.forget_ranking()
        if self._settings.preferred_model != before.preferred_model:
            self._prefer(self._settings.preferred_model)
        self._apply_background()
        return self._settings

    def preferred_problem(self) -> str | None:
        """Why ``settings.preferred_model`` cannot be the fallback ("did you mean ...?" for a
        name no model has; the reason for an unusable model), or None when it can."""
        return self._local.preferred_problem()

    def _prefer(self, name: str) -> None:
        """A new preferred_model answers the next fallback: the model held now is freed (after
        its answers end) so that the next one is chosen by ranking; a name that cannot be
        used is logged, and changes nothing."""
        problem = self._local.preferred_problem()
        if problem is not None:
            log.warning("%s", problem)
        elif name and self._local.current is not None and self._local.current.name != name:
            self._local.pool.release()

    def reset_settings(self, *, fields: Sequence[str] | None = None) -> FallbackSettings:
        """Forget every saved setting, or those in ``fields``; arguments and the environment
        still apply.

        Raises:
            InvalidSettings: a field is unknown; nothing changes then.
            StorageError: the settings file cannot be written; nothing changes then.
        """
        with self._settings_lock:
            before, self._settings = self._settings, self._settings.reset(fields)
        self._local.forget_ranking()
        if self._settings.preferred_model != before.preferred_model:
            self._prefer(self._settings.preferred_model)
        self._apply_background()
        return self._settings

    def _current_settings(self) -> FallbackSettings:
        """The settings for a chat: read again first when another process saved the file since
        (a serve beside the `ui` command or `settings --set`), a stat's cost otherwise."""
        fresh = self._settings.reloaded()
        if fresh is None:
            return self._settings
        with self._settings_lock:
            self._settings = fresh
        self._local.forget_ranking()
        self._apply_background()
        return fresh

    def _apply_background(self) -> None:
        """Start or stop the VRAM sampler and the auto-optimizer as the settings now say."""
        if self._background and not self._stop.is_set():
            self._measuring.run_background()

    def _warm_up(self) -> None:
        """The first time the primary answers, make the first fallback fast in the background
        (``LocalModels.warm_up``): a host that runs has time now, one that fails later won't."""
        with self._warming_lock:
            if not self._background or self._warming is not None or self._stop.is_set():
                return
            self._warming = threading.Thread(target=self._warm_up_now, daemon=True,
                                             name="zwaif-warm-up")
        self._warming.start()

    def _warm_up_now(self) -> None:
        try:
            self._local.warm_up()
        except Exception as exc:  # only an optimisation: the first fallback then loads as usual
            log.debug("warm-up: %s", exc)

    # -- the machine and its models --------------------------------------------

    def system_status(self, *, refresh: bool = False) -> SystemStatus:
        """GPUs, VRAM, RAM and CPU now (cached for about a second)."""
        return self._probe.status(refresh=refresh)

    def discover_models(self, refresh: bool = False) -> list[ModelInfo]:
        """Every model found, valid or not; invalid ones carry the reason."""
        if refresh:
            self._local.forget_ranking()
        return self._catalog.discover(self._settings, refresh=refresh)

    def find_model(self, name_or_path: str) -> ModelInfo:
        """The model a person means by a name (or an existing path).

        Raises:
            ModelNotFound: no such name, with the closest known names.
            InvalidSettings: ``name_or_path`` is not text.
        """
        return self._catalog.resolve(name_or_path, self._settings)

    @property
    def current_model(self) -> ModelInfo | None:
        """The local model this process holds (loaded, or unloaded while idle)."""
        return self._local.current

    def loaded_model(self) -> HeldModel | None:
        """The local model in memory now, and how long it has been idle; None when none is."""
        return self._local.pool.held()

    def check_compatibility(
        self,
        name_or_path: str,
        n_ctx: int | None = None,
        gpu_layers: int | None = None,
        flash_attn: bool = False,
        kv_type: str = "f16",
        free_vram_mb: float | None = None,
        dry_run: bool = False,
    ) -> Compatibility:
        """Estimate the memory a model needs and whether it fits this machine now.

        Args:
            name_or_path: a model name from the catalog, or an existing file path.
            n_ctx: context size; None uses ``settings.n_ctx``, capped at the model's own.
            gpu_layers: llama.cpp's n_gpu_layers; None picks the most that fit.
            free_vram_mb: pretend the GPU has this much free ("what if").
            dry_run: also have llama.cpp dry-run the same plan (``no_alloc``, in a child
                process, ~0.4 s) and put its buffers beside the estimate (``dry_run``).

        Raises:
            ModelNotFound: unknown name. InvalidModelFile: the file is unusable.
            InvalidSettings: n_ctx, gpu_layers, kv_type or free_vram_mb out of range.
        """
        model = self._local.valid(name_or_path)
        self._local.check_args(n_ctx, gpu_layers, kv_type, free_vram_mb)
        fit = self._local.fit(model, n_ctx=n_ctx, gpu_layers=gpu_layers, flash_attn=flash_attn,
                              kv_type=kv_type, free_vram_mb=free_vram_mb)
        return self._local.with_dry_run(model, fit) if dry_run else fit

    def recommend_models(self, models: Sequence[str] | None = None, *,
                         n_ctx: int | None = None) -> list[Recommendation]:
        """Which GGUF files on the Hugging Face Hub would fit this machine now, best first,
        known before downloading: each file's header alone is read (HTTP ranges, a few MiB),
        planned like a local model, and ranked like ``optimize`` (quality from the parameter
        count and the quantization's known perplexity cost, then speed and headroom).

        Args:
            models: ``REPO/FILE.gguf``, a repo id (its Q4_K_M, Q5_K_M and Q8_0 files) or the
                URL of a .gguf file; None: the curated list (zwaif_fallback/data/recommended.json).
            n_ctx: context size to plan for; None uses ``settings.n_ctx``, capped at each model's.

        Returns:
            One ``Recommendation`` a file; ``verdict`` "unknown" with the reason for a file
            that could not be read.

        Raises:
            HubOffline: HF_HUB_OFFLINE is set; nothing was fetched.
            HubUnavailable, HubFileNotFound, HubAccessDenied: no file could be read, and why.
            InvalidSettings: a model is none of the forms above, or n_ctx is out of range.
        """
        from .recommend import recommend

        self._local.check_args(n_ctx, None, "f16", None)
        return recommend(models, fit=lambda model: self._local.fit(model, n_ctx=n_ctx, on_disk=False))

    def pull_model(self, spec: str, *, progress: ProgressCallback | None = None,
                   cancel: threading.Event | None = None) -> ModelInfo:
        """Download one model file from the Hub to ``settings.download_to`` (``models_dir``, or
        the Hugging Face cache), verified against the Hub's sha256 before discovery can see it;
        an interrupted download resumes. Discovery lists it at once.

        Args:
            spec: ``REPO/FILE.gguf`` (or ``.safetensors``), a repo id, a URL, or a curated
                file's name.
            progress: called with a ``PullProgress`` (bytes, rate, time left) as it goes.
            cancel: set it from another thread to stop; the partial file is kept.

        Returns:
            The downloaded model, as ``discover_models`` lists it.

        Raises:
            InvalidSettings: a pickle file or another file type, or a spec naming no file.
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: the Hub said no.
            NotEnoughSpace: the disk is too small; nothing was fetched.
            InvalidModelFile: the sha256 differs from the Hub's; the file was deleted.
            DownloadCancelled: cancelled or interrupted; pull again to resume.
        """
        return self._pulls.pull(spec, progress=progress, cancel=cancel)

    def start_pull(self, spec: str, *, progress: ProgressCallback | None = None) -> Job[ModelInfo]:
        """Run ``pull_model`` as a background job the UI polls; one download at a time.

        The job's progress is the fraction of the current file downloaded; ``progress`` gets
        each ``PullProgress`` (bytes, rate, time left) as in ``pull_model``. ``cancel()``
        stops it at its next chunk and keeps the partial file for the next pull (the job ends
        "cancelled"); a failure ends it "failed" with the error's one line. Its result is the
        downloaded model.

        Raises:
            Busy: a download started here is still running: wait for it or cancel it.
        """
        return self._pulls.start(spec, progress=progress)

    # -- local models ------------------------------------------------------------

    def switch_model(self, name: str, *, persist: bool = True) -> ModelInfo:
        """Load ``name`` as the local fallback model, and remember it as preferred_model.

        The new model is loaded before the old one is freed only when both fit;
        otherwise the old one is freed first (after its running generations end).
        A preferred_model that cannot be saved is logged, not raised.

        Raises:
            ModelNotFound, InvalidModelFile, IncompatibleModel, ModelLoadError.
        """
        model = self._local.valid(name)
        self._local.switch(model)
        if persist and self._settings.preferred_model != model.name:
            try:
                self.update_settings(preferred_model=model.name)
            except (InvalidSettings, StorageError) as exc:
                log.warning("switched to %s but could not save it as preferred: %s", model.name, exc)
        return model

    # -- chat ------------------------------------------------------------------------

    def chat(self, messages: Sequence[Message], primary: Primary = None, **gen: Any) -> ChatResult:
        """One answer through the failover chain.

        Args:
            messages: OpenAI-style ``[{"role": ..., "content": ...}]``.
            primary: None (settings.primary_url), a base URL, or the host's callable
                ``(messages, **gen) -> str | Iterator[str]``.
            gen: max_tokens, temperature, top_p, stop, seed.

        Raises:
            AllTargetsFailed: no target could answer; ``attempts`` says why.
            InvalidSettings: bad messages or generation options.
        """
        results: list[ChatResult] = []
        for _ in self._chats.answer(messages, primary, None, gen, results.append, None):
            pass
        return results[0]

    def stream_chat(self, messages: Sequence[Message], primary: Primary = None, *,
                    cancel: threading.Event | None = None, **gen: Any) -> ChatStream:
        """Like ``chat`` but yields the answer as it comes; once it ends, the stream's
        ``result`` (and this thread's ``last_result``) holds its ChatResult. Setting ``cancel``
        stops it from any thread, as for ``stream_chat_completion``.

        Bad input raises here, before the first piece.
        """
        return ChatStream.of(lambda done: self._chats.answer(messages, primary, None, gen, done, cancel))

    def chat_completion(self, request: dict[str, Any], *,
                        cancel: threading.Event | None = None) -> dict[str, Any]:
        """Answer an OpenAI chat-completions request through the failover chain.

        Args:
            request: ``{"messages": [...], "model"?, "max_tokens"?, "temperature"?, "top_p"?,
                "stop"?, "seed"?, ...}`` as a host sends it to its OpenAI-compatible API;
                ``model`` goes to the primary, and a local model of that name is tried first.

        Returns:
            An OpenAI ``chat.completion`` dict (``usage`` with real token counts when the
            answering target knows them), or, when the request is bad or no target could
            answer, ``{"error": {"message", "type", "param", "code"}, "attempts": [...]}``.
            It never raises. Setting ``cancel`` (the reader went away) stops the answer
            within 0.1 s, as for ``stream_chat_completion``; the result is then an error.
        """
        return completions.chat_completion(self._chats.answer, request, cancel)

    def text_completion(self, request: dict[str, Any], *,
                        cancel: threading.Event | None = None) -> dict[str, Any]:
        """``chat_completion`` for an OpenAI text-completions request (``{"prompt": "...",
        ...}``, as ``/v1/completions`` takes it): the prompt is continued as it is, with no
        chat template. Returns a ``text_completion`` dict, or an error object; never raises."""
        return completions.text_completion(self._chats.answer, request, cancel)

    def stream_text_completion(self, request: dict[str, Any], *,
                               cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """``stream_chat_completion`` for a text completion (as ``text_completion`` takes it):
        ``text_completion`` chunks, each choice's ``text``, as OpenAI streams them; never raises."""
        return completions.stream_text_completion(self._chats.answer, request, cancel)

    def stream_chat_completion(self, request: dict[str, Any], *,
                               cancel: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """Answer as OpenAI ``chat.completion.chunk`` dicts; never raises.

        Each chunk's ``model`` names the model that gave its piece; the last has
        ``finish_reason`` and ``x_fallback`` (who answered, the attempts, any switch);
        ``stream_options.include_usage`` adds a usage chunk. A bad request, or no target
        able to answer, ends the stream with one error object (as ``chat_completion``).
        Setting ``cancel`` (the reader went away) stops it within 0.1 s: the request or
        local generation in flight is closed, and it counts as cancelled, not failed.
        """
        return completions.stream_chat_completion(self._chats.answer, request, cancel)

    def chat_plan(self, request: CompletionRequest, *, cancel: threading.Event) -> ChatPlan:
        """A checked request's chat, not begun: ``serve`` relays its servers on the event loop.

        Raises:
            InvalidSettings: the chat cannot be made (a bad primary URL in the settings).
        """
        return self._chats.plan(request.messages, None, request.model, request.gen, None, cancel,
                                extra=request.extra, raw=request.raw)

    @property
    def last_result(self) -> ChatResult | None:
        """This thread's last finished ChatResult (per thread: concurrent chats never mix; a
        stream read from several threads has its own: ``stream_chat(...).result``)."""
        return self._chats.last_result

    def breaker_states(self) -> dict[str, dict[str, Any]]:
        """Each target's circuit breaker: state, failures, seconds until it is retried."""
        return {name: state.model_dump() for name, state in self._router.breaker_states().items()}

    # -- measure and steer ----------------------------------------------------------

    def benchmark(self, name: str, prompt: str | None = None,
                  progress: Callable[[float, str], None] | None = None) -> BenchmarkResult:
        """Measure one model's speed, memory and quality (it loads its own copy), and save it.

        Raises:
            ModelNotFound, InvalidModelFile, IncompatibleModel: before anything is loaded.
        """
        return self._measuring.benchmarks.benchmark(name, prompt, progress)

    def benchmark_all(self, prompt: str | None = None,
                      progress: Callable[[float, str], None] | None = None) -> list[BenchmarkResult]:
        """Benchmark every compatible model; incompatible and invalid ones come back as skipped."""
        return self._measuring.benchmarks.benchmark_all(prompt, progress)

    def start_benchmark(self, name: str | None = None, prompt: str | None = None) -> BenchmarkJob:
        """Run ``benchmark`` (or ``benchmark_all`` when name is None) as a background job
        with progress and cancel. Raises ModelNotFound at once for an unknown name."""
        return self._measuring.benchmarks.start(name, prompt)

    def job(self, job_id: str) -> BenchmarkJob:
        """A background job by id. Raises JobNotFound for an unknown id."""
        return self._measuring.benchmarks.job(job_id)

    def jobs(self) -> list[BenchmarkJob]:
        """The background jobs still kept (running ones, and the last finished), oldest first."""
        return self._measuring.benchmarks.jobs()

    def benchmark_history(self, model: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """Saved benchmark results, newest first."""
        return self._measuring.telemetry.store.benchmarks(model, limit=limit)

    def failover_history(self, *, since_s: float | None = None) -> list[dict[str, Any]]:
        """Saved attempts of chats that did not go straight through, newest first."""
        return self._measuring.telemetry.store.failovers(since_s=since_s)

    def optimize(self, apply: bool = True) -> Optimization:
        """Rank the local models (quality first, then speed and headroom) and, with ``apply``,
        switch to the best one."""
        return self._measuring.optimizer.optimize(apply)

    def health(self) -> HealthReport:
        """The system's health, 0-100, with its factors and recommendations. Changes nothing."""
        return self._measuring.optimizer.health()

    def performance_stats(self) -> PerformanceStats:
        """The current model's newest benchmark, how many runs are saved, the last hour's
        failover attempts, the background samples' summary, and the health report's advice."""
        return self._measuring.optimizer.performance_stats()

    def start_monitoring(self, duration_s: float, interval_s: float = 1.0) -> None:
        """Sample VRAM, RAM, CPU, GPU use and tokens/s for ``duration_s`` (10-300 s), in the
        background.

        Raises:
            InvalidSettings: a duration or interval out of range.
            Busy: a session is already running.
        """
        self._measuring.telemetry.start_monitoring(duration_s, interval_s)

    def stop_monitoring(self) -> MonitoringReport:
        """End the running session early (or read the finished one): its report.
        Raises NotStarted when no session was started."""
        return self._measuring.telemetry.stop_monitoring()

    def monitoring_report(self) -> MonitoringReport:
        """The live view of the running (or last) session. Raises NotStarted when no
        session was started."""
        return self._measuring.telemetry.monitoring_report()

    def wait_monitoring(self, timeout: float | None = None) -> bool:
        """Block until the monitoring session ends; True when it has."""
        return self._measuring.telemetry.wait_monitoring(timeout)

    def monitor_history(self, *, limit: int = 20) -> list[dict[str, Any]]:
        """Saved monitoring sessions (without their samples), newest first."""
        return self._measuring.telemetry.store.monitor_sessions(limit=limit)

    @property
    def metrics(self) -> Metrics:
        """Prometheus metrics (``metrics.wsgi_app()``, ``metrics.serve(port)``); no prompt text."""
        return self._measuring.telemetry.metrics

    @property
    def background_samples(self) -> list[Sample]:
        """The VRAM sampler's recent samples, oldest first (empty while it is off)."""
        return self._measuring.telemetry.background_samples()

    def background_work(self) -> list[str]:
        """What runs in the background now: "vram_sampler", "auto_optimizer"."""
        return self._measuring.background_work()

    def store_problem(self) -> str | None:
        """Why the history database cannot be used right now (after the queued writes
        have run, or failed), or None."""
        store = self._measuring.telemetry.store
        store.flush(STORE_WAIT_S)
        return store.problem

    def store_notices(self) -> list[str]:
        """What happened to the history database in this process (a file moved aside)."""
        return list(self._measuring.telemetry.store.notices)

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Unload models, stop threads (a local answer running now ends within a token),
        release probes. Safe to call twice; a chat or switch afterwards raises FallbackError."""
        self._stop.set()
        self._pulls.close()  # a running download's partial file stays for the next pull
        self._measuring.close()
        self._local.close()
        self._router.close()
        self._probe.close()

    def __enter__(self) -> FallbackManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
