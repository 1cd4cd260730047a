"""Any OpenAI-compatible server (Oobabooga, Ollama, llama.cpp's server, vLLM, TGI) over HTTP.

Answers stream by server-sent events, read by ``openai_answers`` whichever transport
brought them: httpx for ``stream`` (a thread's blocking call), ``http_stream`` for
``astream`` (serve's event loop). Errors are classified here, at the edge:
a refused connection means the server is down, and a host name that does not resolve
means the URL is wrong (fail fast, no retry); 429, 5xx,
read timeouts and dropped connections are retryable; other 4xx are not. A stream that
ends with no finish reason (the connection closing, or ``[DONE]`` alone, as llama.cpp's
server ends an answer it interrupts for a newer request) is an unfinished answer.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable
from ..net import server_headers
from .base import Backend, Cancel, GenerationParams, TargetFailed, ToolCalls, Usage, raw_prompt
from .openai_answers import UNNAMED_MODEL, Events, Lines, status_error, whole_answer

if TYPE_CHECKING:
    from .http_stream import StreamPool

__all__ = ["OpenAIBackend"]

#: What ``stream`` sets itself; a caller's ``extra`` fields never replace these.
OWN_FIELDS = frozenset({"model", "messages", "prompt", "stream", "stream_options", "max_tokens",
                        "max_completion_tokens", "temperature", "top_p", "stop", "seed", "n"})
#: Fields of Ollama's own API that a request through ``/api/chat`` keeps for an Ollama
#: server (``OllamaBackend``); an OpenAI-compatible server is not sent them.
OLLAMA_FIELDS = frozenset({"options", "keep_alive", "format", "think"})

#: Sent only when the caller set them (``GenerationParams``' defaults are for local models).
SAMPLER_FIELDS = frozenset({"max_tokens", "temperature", "top_p"})


class OpenAIBackend(Backend):
    """Streams chat completions from ``base_url`` (e.g. ``http://127.0.0.1:5000/v1``).

    Args:
        source: "primary" or "remote", as ChatResult reports it.
        read_timeout_s: longest silence on the socket before the request is abandoned;
            the failover chain enforces tighter deadlines on top of this.
    """

    #: where answers are asked for, under ``base_url``: a chat's, and a text completion's
    chat_path = "/chat/completions"
    text_path = "/completions"
    #: the content type of a streamed answer (anything else is a whole one)
    stream_type = "text/event-stream"
    #: What the server's URL should look like, for a 404's advice.
    url_hint = "it should end in /v1, e.g. http://127.0.0.1:5000/v1"

    def __init__(self, base_url: str, *, model: str = "", api_key: str = "",
                 source: str = "remote", read_timeout_s: float = 300.0) -> None:
        super().__init__(base_url)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.source = source
        self._api_key = api_key
        self._read_timeout_s = read_timeout_s
        self._client: Any = None
        self._stream_pools: weakref.WeakKeyDictionary[Any, StreamPool] = weakref.WeakKeyDictionary()
        self._client_lock = threading.Lock()
        # Servers that predate ``stream_options`` may refuse it; once one has, it is not sent again.
        self._usage_option = True

    def __repr__(self) -> str:  # never show the key
        return f"{type(self).__name__}({self.base_url!r}, model={self.model!r})"

    def stream(self, messages: list[dict[str, str]], params: GenerationParams, *,
               prefix: str = "", deadline_s: float | None = None,
               cancel: threading.Event | None = None, usage: Usage | None = None,
               model: str | None = None,
               extra: Mapping[str, Any] | None = None) -> Iterator[str | ToolCalls]:
        """Stream one answer: text pieces, and ``ToolCalls`` when the server calls tools.

        ``model`` replaces the configured model name for this call. ``extra`` adds fields to
        the request body as given (a vendor's samplers such as ``min_p``, ``logit_bias``,
        ``tools``), except those in ``OWN_FIELDS``; its ``messages``, when present, are the
        host's own (tool calls, tool results and images kept) and are sent instead of the
        text-only ``messages``.
        """
        import httpx

        body, headers, connect = self._request(messages, params, prefix, deadline_s, model, extra)
        timeout = httpx.Timeout(connect=connect, read=self._read_timeout_s, write=connect, pool=connect)
        usage = usage if usage is not None else Usage()
        try:
            for ask_usage in self._usage_asks():
                _ask_usage(body, ask_usage)
                with self._http().stream("POST", self._url(body), json=body, headers=headers,
                                         timeout=timeout) as response, _closed_on(cancel, response):
                    if response.status_code >= 400:
                        failure = self._status_error(response.status_code, response.read())
                        if self._older_server(failure, ask_usage):
                            continue
                        raise failure
                    if self.stream_type not in response.headers.get("content-type", ""):
                        yield from self._whole(response.read(), usage)  # a server ignoring stream
                        return
                    events = self._events(usage)
                    for data in response.iter_bytes():
                        yield from events.feed(data)
                        events.check()
                        if events.done:
                            break
                    yield from events.end()
                    return
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.base_url, self._setting) from None

    async def astream(self, messages: list[dict[str, str]], params: GenerationParams, *,
                      prefix: str = "", deadline_s: float | None = None,
                      stall_s: float | None = None, usage: Usage | None = None,
                      model: str | None = None,
                      extra: Mapping[str, Any] | None = None) -> AsyncIterator[list[str | ToolCalls]]:
        """``stream`` for an event loop: the pieces of each network read, as a list.

        Nothing here blocks: serve relays servers' answers on its loop, with no thread per
        stream, through ``http_stream`` (httpx costs more than the rest of serve a chunk).
        ``stall_s`` bounds each silence once the request is sent (the caller bounds the wait
        for the first piece). Closing the generator closes the request.
        """
        body, headers, connect = self._request(messages, params, prefix, deadline_s, model, extra)
        usage = usage if usage is not None else Usage()
        pool = self._stream_pool()
        url = self._url(body)
        read_s = stall_s if stall_s is not None else self._read_timeout_s
        for ask_usage in self._usage_asks():
            _ask_usage(body, ask_usage)
            try:
                response = await pool.post(url, _compact(body), headers, connect_s=connect,
                                           read_s=read_s)
            except Exception as exc:
                raise _connect_failure(exc, self.base_url, self._setting) from None
            try:
                if response.status >= 400:
                    failure = self._status_error(response.status, await response.read())
                    if self._older_server(failure, ask_usage):
                        continue
                    raise failure
                if self.stream_type not in response.headers.get("content-type", ""):
                    yield list(self._whole(await response.read(), usage))
                    return
                events = self._events(usage)
                async for data in response.chunks():
                    pieces = events.feed(data)
                    if pieces:
                        yield pieces
                    events.check()
                    if events.done:  # what follows [DONE] is the body's end, if anything
                        break
                pieces = events.end()
                if pieces:
                    yield pieces
                return
            except TargetFailed:
                raise
            except Exception as exc:
                raise _read_failure(exc, self.base_url) from None
            finally:
                response.close()

    def _request(self, messages: list[dict[str, str]], params: GenerationParams, prefix: str,
                 deadline_s: float | None, model: str | None,
                 extra: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str], float]:
        """The request's body, its headers, and how long to wait for a connection."""
        extra = extra or {}
        sent = extra.get("messages")
        body: dict[str, Any] = {k: v for k, v in extra.items()
                                if k not in OWN_FIELDS and k not in OLLAMA_FIELDS}
        raw = raw_prompt(messages)
        asked: dict[str, Any] = {"prompt": raw + prefix} if raw is not None else {  # a text completion
            "messages": [*(sent if isinstance(sent, list) else messages),
                         *([{"role": "assistant", "content": prefix}] if prefix else [])]}
        body |= {
            "model": model or self.model or UNNAMED_MODEL,
            **asked,
            "stream": True,
            # only what the caller chose: a server's own defaults (a preset, a Modelfile's
            # temperature, its length limit) stay in force for the rest
            **params.model_dump(include=set(SAMPLER_FIELDS & params.model_fields_set)),
        }
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        return body, server_headers(self._api_key, Accept=self.stream_type), min(deadline_s or 10.0, 10.0)

    def _status_error(self, status: int, content: bytes) -> TargetFailed:
        return status_error(status, content, primary=self.source == "primary", url_hint=self.url_hint)

    @property
    def _setting(self) -> str:
        """The setting that names this server, for a message that says to check it."""
        return "primary_url" if self.source == "primary" else "remote_urls"

    def _url(self, body: Mapping[str, Any]) -> str:
        return f"{self.base_url}{self.text_path if 'prompt' in body else self.chat_path}"

    def _events(self, usage: Usage) -> Lines:
        """The reader of a streamed answer."""
        return Events(usage)

    def _whole(self, content: bytes, usage: Usage) -> Iterator[str | ToolCalls]:
        """The pieces of a whole (not streamed) answer."""
        return whole_answer(content, usage)

    def _usage_asks(self) -> tuple[bool, ...]:
        """Whether to ask for usage, in the order to try: once more without it when a server
        that predates ``stream_options`` refuses it."""
        return (True, False) if self._usage_option else (False,)

    def _older_server(self, failure: TargetFailed, asked_usage: bool) -> bool:
        """Whether this error answer refused ``stream_options``: then it is not sent to this
        server again."""
        if asked_usage and "stream_options" in str(failure) and not failure.retryable:
            self._usage_option = False
            return True
        return False

    def _http(self) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    import httpx
                except ImportError:  # pragma: no cover - httpx is a core dependency
                    raise BackendUnavailable("httpx is not installed: pip install httpx") from None
                self._client = httpx.Client(follow_redirects=False, trust_env=False)
            return self._client

    def _stream_pool(self) -> StreamPool:
        """This event loop's connections: a connection belongs to the loop it was made on."""
        import asyncio

        from .http_stream import StreamPool

        loop = asyncio.get_running_loop()
        with self._client_lock:
            pool = self._stream_pools.get(loop)
            if pool is None:
                pool = self._stream_pools[loop] = StreamPool()
            return pool

    def unload(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            pools, self._stream_pools = list(self._stream_pools.items()), weakref.WeakKeyDictionary()
        for loop, pool in pools:  # closed on its own loop, if that still runs
            if not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(pool.close)
                except RuntimeError:  # the loop stopped meanwhile: its sockets went with it
                    pass


def _ask_usage(body: dict[str, Any], ask: bool) -> None:
    if ask:
        body["stream_options"] = {"include_usage": True}
    else:
        body.pop("stream_options", None)


#: How often a plain ``threading.Event`` given as ``cancel`` is looked at while a response is read.
CANCEL_POLL_S = 0.25


@contextmanager
def _closed_on(cancel: threading.Event | None, response: Any) -> Iterator[None]:
    """While the block reads ``response``, close it as soon as ``cancel`` is set (the chain
    gave up on it, or a probe's deadline passed), from the thread that sets it.

    A ``Cancel`` runs the close itself. A plain event is watched by a thread of its own that
    ends with the block: it waited for the event alone once, and an event never set (a
    breaker's probe that got an answer) kept one thread a request, for good.
    """
    if cancel is None:
        yield
        return

    def close() -> None:
        try:
            response.close()
        except Exception:  # closing a dead socket may fail; nothing is left to free
            pass

    if isinstance(cancel, Cancel):
        unhook = cancel.on_set(close)
        try:
            yield
        finally:
            unhook()
        return
    read = threading.Event()

    def watch() -> None:
        while not read.is_set():
            if cancel.wait(CANCEL_POLL_S):
                close()
                return

    threading.Thread(target=watch, daemon=True, name="zwaif-http-cancel").start()
    try:
        yield
    finally:
        read.set()


def _connect_failure(exc: Exception, url: str, setting: str) -> TargetFailed:
    """``http_stream``'s failure to send a request, as the chain reads it."""
    import asyncio

    if _refused(exc):
        return TargetFailed(f"connection refused by {url} (is the server running?)", fast=True)
    if (unresolved := _unresolved(exc)) is not None:
        return _no_such_host(unresolved, url, setting)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return TargetFailed(f"timed out talking to {url} (no connection or no answer)", retryable=True,
                            hung=True)
    if isinstance(exc, ValueError):
        return TargetFailed(f"cannot send the request to {url}: {exc}")
    return TargetFailed(f"connection to {url} failed: {exc or type(exc).__name__}", retryable=True)


def _read_failure(exc: Exception, url: str) -> TargetFailed:
    """``http_stream``'s failure while the answer streams."""
    import asyncio

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return TargetFailed(f"timed out talking to {url} (the answer stalled)", retryable=True)
    return TargetFailed(f"connection to {url} failed: {exc or type(exc).__name__}", retryable=True)


def _compact(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def _transport_error(exc: Exception, url: str, setting: str) -> TargetFailed:
    import httpx

    if isinstance(exc, httpx.ConnectError) and _refused(exc):
        return TargetFailed(f"connection refused by {url} (is the server running?)", fast=True)
    if isinstance(exc, httpx.ConnectError) and (unresolved := _unresolved(exc)) is not None:
        return _no_such_host(unresolved, url, setting)
    if isinstance(exc, httpx.TimeoutException):  # no word in the time allowed: hung, as at a deadline
        return TargetFailed(f"timed out talking to {url} ({type(exc).__name__})", retryable=True, hung=True)
    if isinstance(exc, (httpx.TransportError, httpx.StreamError)):
        return TargetFailed(f"connection to {url} failed: {exc or type(exc).__name__}", retryable=True)
    return TargetFailed(f"request to {url} failed: {exc}")


def _no_such_host(exc: socket.gaierror, url: str, setting: str) -> TargetFailed:
    """A name that does not resolve now will not within the deadline either: no retries."""
    return TargetFailed(f"the host name in {url} does not resolve ({exc.strerror or exc}): "
                        f"check {setting}", fast=True)


def _refused(exc: BaseException) -> bool:
    """Whether the OS refused the connection."""
    return any(isinstance(cause, ConnectionRefusedError) or (
        isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED) for cause in _causes(exc))


def _unresolved(exc: BaseException) -> socket.gaierror | None:
    """The resolver's error when the host name did not resolve."""
    return next((cause for cause in _causes(exc) if isinstance(cause, socket.gaierror)), None)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it: httpx keeps the socket's error in the chain
    (httpx.ConnectError from httpcore.ConnectError from ConnectionRefusedError)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__
