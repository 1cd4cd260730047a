"""Any OpenAI-compatible server (Oobabooga, Ollama, llama.cpp's server, vLLM, TGI) over HTTP.

Answers stream by server-sent events. Errors are classified here, at the edge:
a refused connection means the server is down (fail fast, no retry); 429, 5xx,
read timeouts and dropped connections are retryable; other 4xx are not. A stream that
ends with no finish reason (the connection closing, or ``[DONE]`` alone, as llama.cpp's
server ends an answer it interrupts for a newer request) is an unfinished answer.
"""

from __future__ import annotations

import errno
import json
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import BackendUnavailable
from .base import Backend, GenerationParams, TargetFailed, ToolCalls, Usage

if TYPE_CHECKING:
    from .http_stream import StreamPool

__all__ = ["OpenAIBackend"]

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
#: What ``stream`` sets itself; a caller's ``extra`` fields never replace these.
OWN_FIELDS = frozenset({"model", "messages", "stream", "stream_options", "max_tokens",
                        "max_completion_tokens", "temperature", "top_p", "stop", "seed", "n"})


class OpenAIBackend(Backend):
    """Streams chat completions from ``base_url`` (e.g. ``http://127.0.0.1:5000/v1``).

    Args:
        source: "primary" or "remote", as ChatResult reports it.
        read_timeout_s: longest silence on the socket before the request is abandoned;
            the failover chain enforces tighter deadlines on top of this.
    """

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
        return f"OpenAIBackend({self.base_url!r}, model={self.model!r})"

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

        body, headers, timeout = self._request(messages, params, prefix, deadline_s, model, extra)
        usage = usage if usage is not None else Usage()
        try:
            for ask_usage in self._usage_asks():
                _ask_usage(body, ask_usage)
                with self._http().stream("POST", f"{self.base_url}/chat/completions", json=body,
                                         headers=headers, timeout=timeout) as response:
                    if cancel is not None:
                        _close_on(cancel, response)
                    if response.status_code >= 400:
                        failure = _status_error(response.status_code, response.read())
                        if self._older_server(failure, ask_usage):
                            continue
                        raise failure
                    if "text/event-stream" not in response.headers.get("content-type", ""):
                        yield from _whole_answer(response.read(), usage)  # a server ignoring stream
                        return
                    events = _Events(usage)
                    for data in response.iter_bytes():
                        yield from events.feed(data)
                        events.check()
                        if events.done:
                            break
                    yield from events.end()
                    return
        except httpx.HTTPError as exc:
            raise _transport_error(exc, self.base_url) from None

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
        body, headers, timeout = self._request(messages, params, prefix, deadline_s, model, extra)
        usage = usage if usage is not None else Usage()
        pool = self._stream_pool()
        url = f"{self.base_url}/chat/completions"
        read_s = stall_s if stall_s is not None else self._read_timeout_s
        for ask_usage in self._usage_asks():
            _ask_usage(body, ask_usage)
            try:
                response = await pool.post(url, _compact(body), headers, connect_s=timeout.connect,
                                           read_s=read_s)
            except Exception as exc:
                raise _connect_failure(exc, self.base_url) from None
            try:
                if response.status >= 400:
                    failure = _status_error(response.status, await response.read())
                    if self._older_server(failure, ask_usage):
                        continue
                    raise failure
                if "text/event-stream" not in response.headers.get("content-type", ""):
                    yield list(_whole_answer(await response.read(), usage))
                    return
                events = _Events(usage)
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
                 extra: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, str], Any]:
        """The request's body, headers and httpx timeout."""
        import httpx

        extra = extra or {}
        sent = extra.get("messages")
        body: dict[str, Any] = {k: v for k, v in extra.items() if k not in OWN_FIELDS}
        body |= {
            "model": model or self.model or "default",
            "messages": [*(sent if isinstance(sent, list) else messages),
                         *([{"role": "assistant", "content": prefix}] if prefix else [])],
            "stream": True,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        headers = {"Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        connect = min(deadline_s or 10.0, 10.0)
        timeout = httpx.Timeout(connect=connect, read=self._read_timeout_s, write=connect, pool=connect)
        return body, headers, timeout

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


def _close_on(cancel: threading.Event, response: Any) -> None:
    """Close the response from a watchdog when the chain gives up on it."""

    def watch() -> None:
        cancel.wait()
        try:
            response.close()
        except Exception:  # closing a dead socket may fail; nothing is left to free
            pass

    threading.Thread(target=watch, daemon=True, name="zwaif-http-cancel").start()


class _Events:
    """Reads a server-sent event stream, as the network gives it, into answer pieces.

    ``end`` raises when the stream stopped before a finish reason: a server that finished
    gives one, so the connection closed mid-answer.
    """

    def __init__(self, usage: Usage) -> None:
        self._usage = usage
        self._finished = False
        self._rest = b""  # a line not yet ended
        self.done = False  # [DONE] came: nothing more to read
        self._failure: TargetFailed | None = None

    def feed(self, data: bytes) -> list[str | ToolCalls]:
        """The pieces of the lines that ``data`` completes. A line that fails the answer
        stops the reading there; ``check`` then raises its failure, once the pieces
        before it have been passed on."""
        *lines, self._rest = (self._rest + data).split(b"\n")
        pieces: list[str | ToolCalls] = []
        for line in lines:
            try:
                pieces += self._line(line)
            except TargetFailed as exc:
                self._failure = exc
                break
        return pieces

    def check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def end(self) -> list[str | ToolCalls]:
        """The pieces of an unended last line; raises if the answer did not finish."""
        pieces = self._line(self._rest)
        self._rest = b""
        if not self._finished:
            raise TargetFailed("the stream ended before the answer was finished", retryable=True)
        return pieces

    def _line(self, line: bytes) -> list[str | ToolCalls]:
        if not line.startswith(b"data:"):
            return []
        payload = line[5:].strip()
        if payload == b"[DONE]":
            if not self._finished:  # llama.cpp's server ends an answer this way when a newer
                # request interrupts it (unless started with --interrupt_requests false)
                raise TargetFailed("the server ended the stream before the answer was finished "
                                   "(it may stop an answer for a newer request)")
            self.done = True
            return []
        try:
            event = json.loads(payload)
        except ValueError:
            raise TargetFailed(f"the server sent malformed JSON: {payload[:80]!r}") from None
        if not isinstance(event, dict):
            return []
        if event.get("error"):
            raise TargetFailed(f"the server reported: {_error_text(event)}", retryable=True)
        if "usage" in event:
            _read_usage(event, self._usage)
        choice = _choice(event)
        if choice is None:
            return []
        pieces: list[str | ToolCalls] = []
        text = _text(choice)
        if text:
            pieces.append(text)
        calls = _tool_calls(choice)
        if calls:
            pieces.append(calls)
        self._finished = self._finished or choice.get("finish_reason") is not None
        return pieces


def _choice(event: dict[str, Any]) -> dict[str, Any] | None:
    """The first choice of a chunk or an answer, None when it has none."""
    choices = event.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    return choice if isinstance(choice, dict) else None


def _delta_of(choice: dict[str, Any]) -> dict[str, Any]:
    delta = choice.get("delta") or choice.get("message")
    return delta if isinstance(delta, dict) else {}


def _text(choice: dict[str, Any]) -> str:
    text = _delta_of(choice).get("content") or choice.get("text") or ""
    return text if isinstance(text, str) else ""


def _tool_calls(choice: dict[str, Any]) -> ToolCalls | None:
    """The tool-call deltas of a chunk's choice (or the calls of a whole message, indexed as
    a stream would give them), None when it has none."""
    calls = _delta_of(choice).get("tool_calls")
    if not isinstance(calls, list):
        return None
    deltas = tuple({"index": i, **call} for i, call in enumerate(calls) if isinstance(call, dict))
    return ToolCalls(deltas) if deltas else None


def _whole_answer(content: bytes, usage: Usage) -> Iterator[str | ToolCalls]:
    try:
        answer = json.loads(content)
    except ValueError:
        raise TargetFailed("the server answered with something that is not JSON") from None
    if not isinstance(answer, dict):
        raise TargetFailed("the server answered with JSON that is not an object")
    _read_usage(answer, usage)
    choice = _choice(answer) or {}
    text, calls = _text(choice), _tool_calls(choice)
    if text or calls is None:
        yield text
    if calls is not None:
        yield calls


def _read_usage(event: Any, usage: Usage) -> None:
    """Copy the server's token counts (its last chunk, with ``include_usage``) into ``usage``."""
    counts = event.get("usage") if isinstance(event, dict) else None
    if not isinstance(counts, dict):
        return
    for field in ("prompt_tokens", "completion_tokens"):
        value = counts.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            setattr(usage, field, value)


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error)


def _status_error(status: int, content: bytes) -> TargetFailed:
    """The failure an error status means, its body saying why."""
    try:
        detail = _error_text(json.loads(content))
    except (ValueError, AttributeError):
        detail = content[:200].decode("utf-8", errors="replace")
    hint = " (check primary_api_key)" if status in (401, 403) else ""
    return TargetFailed(f"HTTP {status}: {detail}{hint}", retryable=status in RETRYABLE_STATUS)


def _connect_failure(exc: Exception, url: str) -> TargetFailed:
    """``http_stream``'s failure to send a request, as the chain reads it."""
    import asyncio

    if _refused(exc):
        return TargetFailed(f"connection refused by {url} (is the server running?)", fast=True)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return TargetFailed(f"timed out talking to {url} (no connection or no answer)", retryable=True)
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


def _transport_error(exc: Exception, url: str) -> TargetFailed:
    import httpx

    if isinstance(exc, httpx.ConnectError) and _refused(exc):
        return TargetFailed(f"connection refused by {url} (is the server running?)", fast=True)
    if isinstance(exc, httpx.TimeoutException):
        return TargetFailed(f"timed out talking to {url} ({type(exc).__name__})", retryable=True)
    if isinstance(exc, (httpx.TransportError, httpx.StreamError)):
        return TargetFailed(f"connection to {url} failed: {exc or type(exc).__name__}", retryable=True)
    return TargetFailed(f"request to {url} failed: {exc}")


def _refused(exc: BaseException) -> bool:
    """Whether the OS refused the connection: httpx keeps the socket's error in the chain
    (httpx.ConnectError from httpcore.ConnectError from ConnectionRefusedError)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError) or (
                isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED):
            return True
        cause = cause.__cause__ or cause.__context__
    return False
