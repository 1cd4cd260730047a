"""Which targets a chat goes through, in what order, and the state they keep.

The primary (a URL or the host's callable), then ``remote_urls``, then local
models: the one already loaded first, then the rest ranked by fit verdict
(GPU, partial, CPU), the preferred model ahead of its tier. Local candidates are
ranked lazily, only when the chain gets that far, so a healthy primary costs
nothing here.

A request's fields the chain does not read (``extra``) go to the servers as given;
local models ignore them, except a request for tools, which they refuse.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

from .backends.base import RAW_ROLE, Cancel, GenerationParams, TargetFailed
from .backends.host import HostBackend, identity
from .backends.ollama import OllamaBackend, is_ollamas_v1
from .backends.openai import OpenAIBackend
from .breaker import BreakerState, CircuitBreaker, ProbeOutcome
from .characters import with_persona
from .chat_run import Target
from .errors import InvalidSettings
from .fit import Compatibility
from .model_info import ModelInfo
from .settings import FallbackSettings, validate_field

__all__ = ["HOST_PREFIX", "USUAL_MAIN_APIS", "Router", "chain_text", "primary_breakers", "rank_local",
           "text_breaker_name"]

log = logging.getLogger(__name__)

_VERDICT_RANK = {"gpu": 0, "partial": 1, "cpu": 2}
#: None, a base URL, or the host's own call ``(messages, **gen) -> str | Iterator[str]``
Primary = str | Callable[..., str | Iterable[str]] | None


def rank_local(fits: list[tuple[ModelInfo, Compatibility]], preferred: str) -> list[ModelInfo]:
    """Local models best first: verdict tier, the preferred model first in its tier,
    bigger models first on the GPU (better answers), smaller first elsewhere (faster)."""
    usable = [(m, c) for m, c in fits if c.compatible]

    def key(item: tuple[ModelInfo, Compatibility]) -> tuple[int, int, float]:
        model, fit = item
        size = float(model.parameters or model.size_bytes)
        return (_VERDICT_RANK[fit.verdict], 0 if model.name == preferred else 1,
                -size if fit.verdict == "gpu" else size)

    return [m for m, _ in sorted(usable, key=key)]


class Router:
    """Builds the target list of each chat and keeps each target's breaker."""

    def __init__(self, *, local_stream: Callable[..., Iterator[str]],
                 current: Callable[[], ModelInfo | None],
                 ranked: Callable[[], list[ModelInfo]],
                 on_primary_down: Callable[[], None],
                 local_steps: Callable[[ModelInfo], list[str]] | None = None,
                 clock: Callable[[], float] | None = None,
                 why_no_local: Callable[[], str] | None = None) -> None:
        self._local_stream = local_stream
        self._local_steps = local_steps
        self._current = current
        self._ranked = ranked
        self._on_primary_down = on_primary_down
        self._clock = clock
        self._why_no_local = why_no_local
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self._remotes: dict[tuple[str, str, str, type[OpenAIBackend]], OpenAIBackend] = {}
        self._host_call: str | None = None  # the latest chat's primary, when a host's own call
        self._host_names: dict[Hashable, str] = {}  # host callables' names, oldest first
        self._servers_used: dict[str, None] = {}  # servers' URLs, the least recently used first
        self._probes_said: dict[str, str] = {}  # server URL -> why its last probe failed, as logged

    @property
    def host_call(self) -> str | None:
        """The breaker name of the host's own API call that was the latest chat's primary, or
        None when that chat's primary was a URL, or none."""
        return self._host_call

    def targets(self, settings: FallbackSettings, primary: Primary, *,
                model: str | None = None,
                extra: Mapping[str, Any] | None = None) -> Iterator[Target]:
        """The targets of one chat, in order.

        Args:
            model: a request's model name: it goes to a URL primary in place of
                ``primary_model``, and a local model of that name is tried first.
            extra: a request's fields the chain does not read (``logit_bias``, a vendor's
                ``min_p``, ``tools``...): sent as given to the primary and the remotes,
                ignored by local models. Non-empty ``tools`` (or the older ``functions``)
                make each local attempt fail, saying the request needs a server, since a
                local model cannot call them; with ``tool_choice: "none"`` (the caller
                asked for no tool call) a local model answers with text as usual. Its
                ``messages``, when given, are the host's own: the servers receive them in
                place of the checked text (``OpenAIBackend.stream``).
        """
        extra = dict(extra or {})
        yield from self.server_targets(settings, primary, model=model, extra=extra)
        yield from self.local_targets(model=model, extra=extra)

    def server_targets(self, settings: FallbackSettings, primary: Primary, *,
                       model: str | None = None, extra: dict[str, Any], raw: bool = False,
                       persona: str | None = None) -> list[Target]:
        """The primary and the remotes, as ``targets`` gives them (cheap: no discovery);
        ``raw``: for a text completion; ``persona``: the character the request names, whose
        system text the remotes and an Ollama primary get before the host's messages
        (``characters``)."""
        servers = []
        if primary is None and settings.primary_url:
            primary = settings.primary_url
        # text-generation-webui reads the character the request names; the others know none
        personified = extra
        if persona is not None and isinstance(extra.get("messages"), list):
            personified = {**extra, "messages": with_persona(extra["messages"], persona)}
        self._host_call = None
        if callable(primary):
            host = HostBackend(primary, self._host_name(primary))
            self._host_call = HOST_PREFIX + host.name
            servers.append(Target(name=HOST_PREFIX + host.name, source="primary", stream=host.stream,
                                  breaker=self.breaker(HOST_PREFIX + host.name),
                                  on_breaker_open=self._on_primary_down))
        elif primary:
            servers.append(self._remote_target(
                settings, str(primary), "primary", model=model, raw=raw,
                extra=personified if settings.primary_api == "ollama" else extra))
        servers += [self._remote_target(settings, url, "remote", extra=personified, raw=raw)
                    for url in settings.remote_urls]
        return servers

    def local_targets(self, *, model: str | None = None, extra: dict[str, Any]) -> Iterator[Target]:
        """The local models, as ``targets`` gives them: ranked only when the chain gets here."""
        current = self._current()
        named = next((m for m in self._ranked() if m.name == model), None) if model else None
        tried: set[str] = set()
        for candidate in self._local_order(named, current):
            if candidate is not None and candidate.path not in tried:
                tried.add(candidate.path)
                yield self._local_target(candidate, extra)

    def why_no_local(self) -> str:
        """Why no local model can answer now, "" when one can (for a chat that failed)."""
        return self._why_no_local() if self._why_no_local is not None else ""

    def _local_order(self, *first: ModelInfo | None) -> Iterator[ModelInfo | None]:
        yield from first
        yield from self._ranked()  # only now: a chain that never gets here never ranks

    def _host_name(self, call: Callable[..., Any]) -> str:
        """The host callable's name, which names its breaker: its ``__qualname__``, with
        ``#2``, ``#3``... for another callable of the same name (``host.identity``: another
        closure, another object's method). The last ``HOST_CALLS_KEPT`` are remembered."""
        key = identity(call)
        base = getattr(call, "__qualname__", None) or getattr(getattr(call, "__func__", None),
                                                             "__qualname__", None) or "host"
        with self._lock:
            name = self._host_names.pop(key, None)
            if name is None:
                taken = set(self._host_names.values())
                names = itertools.chain([base], (f"{base}#{i}" for i in itertools.count(2)))
                name = next(n for n in names if n not in taken)
            self._host_names[key] = name  # now the newest
            while len(self._host_names) > HOST_CALLS_KEPT:
                forgotten = self._host_names.pop(next(iter(self._host_names)))
                self._breakers.pop(HOST_PREFIX + forgotten, None)
            return name

    def _forget_unlisted(self, url: str, *, listed: set[str]) -> None:
        """``url`` is used now. A server that is no longer in the settings (the person moved
        the main API) keeps its breakers and its client only while among the last
        ``SERVERS_KEPT`` such servers used: a serve up for weeks reported every URL it had
        ever tried on /metrics, and kept a client for each."""
        with self._lock:
            self._servers_used.pop(url, None)
            self._servers_used[url] = None
            unlisted = [u for u in self._servers_used if u not in listed]
            gone = unlisted[:max(len(unlisted) - SERVERS_KEPT, 0)]
            breakers, backends = [], []
            for old in gone:
                del self._servers_used[old]
                for name in (old, text_breaker_name(old)):
                    self._probes_said.pop(name, None)
                breakers += [b for b in (self._breakers.pop(n, None) for n in (old, text_breaker_name(old)))
                             if b is not None]
                backends += [self._remotes.pop(key) for key in [k for k in self._remotes if k[0] == old]]
        for breaker in breakers:
            breaker.close()
        for backend in backends:
            backend.close()

    def breaker(self, name: str) -> CircuitBreaker:
        with self._lock:
            if name not in self._breakers:
                self._breakers[name] = (CircuitBreaker(clock=self._clock) if self._clock
                                        else CircuitBreaker())
            return self._breakers[name]

    def breaker_states(self) -> dict[str, BreakerState]:
        with self._lock:
            return {name: b.snapshot() for name, b in self._breakers.items()}

    def close(self) -> None:
        with self._lock:
            remotes, self._remotes = list(self._remotes.values()), {}
            breakers = list(self._breakers.values())
        for breaker in breakers:
            breaker.close()
        for backend in remotes:
            backend.close()

    def _remote_target(self, settings: FallbackSettings, url: str, source: str, *,
                       model: str | None = None, extra: dict[str, Any], raw: bool = False) -> Target:
        """A server target; ``model`` (the request's model name) and ``extra`` are for this
        call only.

        A text completion (``raw``) has a breaker of its own: a server may answer chats and
        not ``/completions`` (OpenAI's chat models do not), and its chats must go on. Sent to
        Ollama's ``/v1``, a prompt would be put in the chat template as a user's turn, so it
        goes to Ollama's own ``/api/generate`` with ``raw`` instead."""
        try:
            url = validate_field("primary_url", url)
        except InvalidSettings as exc:
            raise InvalidSettings(f"primary {exc}") from None
        is_primary = source == "primary"
        configured = settings.primary_model if is_primary else ""
        key = settings.primary_api_key.get_secret_value() if is_primary else ""
        ollama = (is_primary and settings.primary_api == "ollama") or (raw and is_ollamas_v1(url))
        speaks = OllamaBackend if ollama else OpenAIBackend
        with self._lock:
            backend = self._remotes.get((url, configured, key, speaks))
            if backend is None:
                backend = speaks(url, model=configured, api_key=key, source=source,
                                 read_timeout_s=settings.timeout + 5.0)
                self._remotes[(url, configured, key, speaks)] = backend
        self._forget_unlisted(url, listed={settings.primary_url, *settings.remote_urls})
        chosen = model if is_primary else None
        name = text_breaker_name(url) if raw else url
        breaker = self.breaker(name)
        # the probe asks as the last chat did: a server such as Ollama refuses unknown models,
        # and reloads a model asked for with another context or keep_alive
        breaker.probe = partial(_answers_a_chat, backend, chosen, settings.timeout, _as_loaded(extra),
                                raw=raw, said=self._probes_said, said_as=name)
        return Target(name=url, source="primary" if is_primary else "remote", model=chosen or configured,
                      stream=partial(backend.stream, model=chosen, extra=extra),
                      astream=partial(backend.astream, model=chosen, extra=extra),
                      breaker=breaker,
                      on_breaker_open=self._on_primary_down if is_primary else None)

    def _local_target(self, model: ModelInfo, extra: dict[str, Any]) -> Target:
        tools = _tools_asked(extra)
        if tools is not None:
            return Target(name=model.name, source="local", guarded=False,
                          stream=partial(_cannot_call_tools, model.name, *tools))
        stream = partial(self._local_stream, model)
        ignored = sorted(set(extra) - {"messages"})
        if ignored:
            stream = partial(_ignoring, stream, model.name, ignored)
        steps = partial(self._local_steps, model) if self._local_steps is not None else None
        return Target(name=model.name, source="local", stream=stream, guarded=False, notes=steps)


#: A host's own API call, passed as the primary, has a breaker named this, then its name.
HOST_PREFIX = "host:"
#: How many host callables (and their breakers) a router tells apart at most.
HOST_CALLS_KEPT = 64
#: servers no longer in the settings whose breakers and clients are kept (a host that passes
#: its own primary URL to each chat may alternate between a few)
SERVERS_KEPT = 4


def primary_breakers(names: Iterable[str], primary_url: str, host_call: str | None = None) -> list[str]:
    """Which of the breakers ``names`` are the primary's: the host's own API call when that
    was the latest chat's primary (``Router.host_call``: a host that embeds us), else the
    URL's, its chats' and its text completions'."""
    if host_call:
        return [n for n in names if n == host_call]
    return [n for n in names if primary_url and n in (primary_url, text_breaker_name(primary_url))]


def text_breaker_name(url: str) -> str:
    """The name of the breaker of a server's text completions (its chats' is its URL)."""
    return f"{url} (text completions)"


#: Where the main APIs hosts use most listen, for messages that ask for one.
USUAL_MAIN_APIS = "Oobabooga: http://127.0.0.1:5000/v1; Ollama: http://127.0.0.1:11434, with Ollama's own API"


def chain_text(settings: FallbackSettings) -> str:
    """Where a chat goes, in words: the main API and what it speaks, the remotes, then the
    local models (a host's own API call, passed as the primary, comes before them all)."""
    remotes = len(settings.remote_urls)
    rest = f"{remotes} more server{'s' if remotes != 1 else ''}, then the local models" if remotes \
        else "the local models"
    if not settings.primary_url:
        return f"no main API is set: chats go to {rest}"
    speaks = "Ollama's own API" if settings.primary_api == "ollama" else "OpenAI-compatible"
    return f"chats go to {settings.primary_url} ({speaks}) first, then {rest}"


def _tools_asked(extra: Mapping[str, Any]) -> tuple[str, str] | None:
    """The field that asks for tool calls (``tools``, or the older ``functions``) and the one
    that could say not to call any, unless it does."""
    for field, choice in (("tools", "tool_choice"), ("functions", "function_call")):
        if extra.get(field) and extra.get(choice) != "none":
            return field, choice
    return None


def _cannot_call_tools(name: str, field: str, choice: str, *args: Any, **kwargs: Any) -> Iterator[str]:
    raise TargetFailed(f"local model {name} cannot call tools; the request's `{field}` need the "
                       f"primary or a remote server (or send {choice}: \"none\" for a text answer)")


def _ignoring(stream: Callable[..., Iterator[str]], name: str, fields: list[str],
              *args: Any, **kwargs: Any) -> Iterator[str]:
    log.debug("local model %s ignores the request's field(s) %s", name, ", ".join(fields))
    return stream(*args, **kwargs)


#: What a circuit breaker's probe asks a server: one token of an answer is enough.
PROBE_MESSAGES = [{"role": "user", "content": "Hi"}]


def _as_loaded(extra: Mapping[str, Any]) -> dict[str, Any]:
    """What of a request's Ollama fields decides how Ollama loads the model (``num_ctx``,
    ``keep_alive``): a probe that asked otherwise would reload it."""
    options = extra.get("options")
    kept: dict[str, Any] = {"keep_alive": extra["keep_alive"]} if "keep_alive" in extra else {}
    if isinstance(options, Mapping) and "num_ctx" in options:
        kept["options"] = {"num_ctx": options["num_ctx"]}
    return kept


def _answers_a_chat(backend: OpenAIBackend, model: str | None, deadline_s: float,
                    extra: Mapping[str, Any] | None = None, *, raw: bool = False,
                    said: dict[str, str] | None = None, said_as: str = "") -> ProbeOutcome:
    """Whether ``backend`` begins an answer within ``deadline_s``: a circuit breaker's
    probe, on a thread of its own (``CircuitBreaker``). It ``hangs`` when the deadline
    passed without a word, and ``fails`` when the server said no or went away before it:
    a hung server that is killed ends the probe at once, and the next one follows soon.

    A server that is down is probed every few seconds, for days if it stays down: ``said``
    (URL -> the failure last logged) keeps the log to one line each time the reason
    changes, not one per probe, which rotated every other message out of the log files;
    ``said_as`` is the breaker's name (a server's chats and text completions have one each)."""
    late = Cancel()
    timer = threading.Timer(deadline_s, late.set)  # setting it closes the response
    timer.daemon = True
    timer.start()
    why, hung = "", False
    try:
        asked = [{"role": RAW_ROLE, "content": "Hi"}] if raw else PROBE_MESSAGES
        for _ in backend.stream(asked, GenerationParams(max_tokens=1), deadline_s=deadline_s,
                                cancel=late, model=model, extra=extra):
            break
    except Exception as exc:  # TargetFailed, or whatever the response closed at the deadline raised
        why, hung = str(exc), getattr(exc, "hung", False)
    finally:
        timer.cancel()
    if late.is_set():
        why, hung = f"no word in {deadline_s:.0f} s", True
    url, key = backend.base_url, said_as or backend.base_url
    if why:
        repeated = said is not None and said.get(key) == why
        log.log(logging.DEBUG if repeated else logging.INFO, "%s still does not answer: %s%s", url, why,
                "" if repeated or said is None else " (said again only when that changes)")
        if said is not None:
            said[key] = why
        return "hangs" if hung else "fails"
    if said is not None:
        said.pop(key, None)
    log.info("%s answers again: its circuit is closed", url)
    return "answers"
