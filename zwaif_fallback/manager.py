"""FallbackManager: the one facade the host, the CLI and the web UI use.

It owns state (the settings, the hardware probe, the catalog, the local models,
the router and its breakers) and delegates the work: chats to ``chats``, local
models to ``local``, downloads to ``pull_jobs``, and through ``measuring`` (which makes
them on first use) benchmarks to ``bench_jobs``, ranking and health to ``optimizer``,
history, metrics and sampling to ``telemetry``. Each public method's docstring lives
here, once, or where the facade inherits it from: ``manager_hub`` for the models on the
Hugging Face Hub, ``manager_measure`` for benchmarks, ranking, health and monitoring.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from . import completions
from .backends.base import Cancel, Message
from .catalog import Catalog
from .chats import ChatPlan, Chats, ChatStream
from .completion_request import CompletionRequest
from .errors import InvalidSettings, StorageError
from .fit import Compatibility
from .hardware import HardwareProbe, SystemStatus
from .local import LocalModels
from .manager_hub import FromTheHub
from .manager_measure import MeasureAndSteer
from .measuring import Measuring
from .model_info import ModelInfo
from .pool import HeldModel
from .pull_jobs import Pulls
from .results import ChatResult
from .routing import Primary, Router
from .settings import FallbackSettings

__all__ = ["FallbackManager"]

log = logging.getLogger(__name__)


class FallbackManager(FromTheHub, MeasureAndSteer):
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
        before = self._settings
        fresh = before.reloaded()
        if fresh is None:
            return before
        with self._settings_lock:
            if self._settings is not before:  # an update_settings meanwhile: it read the file after
                return self._settings
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
        stops it from any thread, as for ``stream_chat_completion``. An asyncio host reads it
        with ``async for``, each stream on a thread of its own.

        Bad input raises here, before the first piece.
        """
        stop = cancel if cancel is not None else Cancel()
        return ChatStream.of(lambda done: self._chats.answer(messages, primary, None, gen, done, stop),
                             cancel=stop)

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
