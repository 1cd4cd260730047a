"""``zwaif-fallback serve``: the failover chain behind an OpenAI-compatible HTTP API.

A host that talks HTTP points its OpenAI base URL here and changes nothing else:

    POST /v1/chat/completions   the chain's answer, whole or as server-sent events
    POST /v1/completions        a prompt continued as it is (no chat template), the same way
    GET  /v1/models             the primary's models, then the remotes', then the local ones
    POST /v1/embeddings         passed on to the server that makes them, the primary (``embeddings``)
    POST /api/chat              the same answer in Ollama's shape (``ollama_api``),
    POST /api/generate          one turn of it, and
    GET  /api/tags              the same list, for hosts that speak Ollama's API, beside
    /api/show, /api/ps, /api/version  what Ollama's clients ask of its models (``ollama_info``)
    GET  /health                200 with the chain's state, 503 when nothing could answer
    GET  /metrics               Prometheus metrics
    GET  /startup-events        true, as text-generation-webui's Gradio 4 answers it (``_started``)

"Nothing could answer" means no usable local model and no server (primary or remote) that
answers HTTP at all, a server in its circuit's cooldown counting as down. The servers are
probed (their model list, 2 s) only when no local model exists: a local model answers
whatever they do.

Streamed answers from servers are relayed on the event loop (``relay``); generation never
runs on it: a chat that reaches a local model goes on in a thread of its own (``sse``), so
a slow local model stalls neither other requests nor ``/health``. What a request must
carry and what its body may be is ``admission``'s to check; which web pages may call it
from a browser, ``cors``'s. The app is Starlette's (Gradio brings it); ``webui`` mounts the
tabs at ``/`` beside it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from . import ollama_api
from .admission import (
    API_KEY_ENV,
    MAX_BODY_BYTES,
    check_bind,
    read_body,
    read_raw_body,
    refusal,
)
from .backends.base import Cancel
from .completion_request import parse_request, parse_text_request
from .completions import ChunkMaker, TextChunks, error_object, status_of, who_answered
from .embeddings import OLLAMA_ROUTES, Embeddings
from .errors import InvalidSettings
from .front import front
from .listening import listen, need_web_stack, serving
from .net import start_for_request
from .ollama_info import UNANSWERED, OllamaInfo, in_ollamas_words, render
from .relay import Relay, on_disconnect, shutting_down
from .routing import chain_text
from .upstreams import PROBE_DEADLINE_S, ModelLists, Upstream, all_models, answers, at_once, upstreams

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from .manager import FallbackManager

__all__ = ["API_KEY_ENV", "MAX_BODY_BYTES", "build_api", "check_bind", "front", "listen", "need_web_stack",
           "run", "serving"]

log = logging.getLogger(__name__)

_R = TypeVar("_R")


def build_api(manager: FallbackManager, *, api_key: str | None = None) -> Starlette:
    """The OpenAI-compatible routes, ``/health`` and ``/metrics`` as one ASGI app; serve it
    through ``front``, as ``run`` does, which also refuses a request from this process itself.

    Args:
        manager: answers every request; its settings say where the primary is.
        api_key: required as ``Authorization: Bearer KEY`` on ``/v1`` routes; None reads
            FALLBACK_API_KEY (unset: no key, for loopback use).
    """
    from fastapi import FastAPI  # a FastAPI app, so that gradio can mount the tabs on it
    from starlette.routing import Route

    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    manager.metrics  # noqa: B018 - made now, so that /metrics counts from the first request
    listing = partial(all_models, ModelLists(), lambda: manager.settings, manager.discover_models)
    info = OllamaInfo(settings=lambda: manager.settings, models=listing,
                      find_model=manager.find_model, loaded=manager.loaded_model, api_key=key,
                      clock=time.time)
    api = _Api(manager, key, own_name=info.own_name, listing=listing)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.state.api_routes = [
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/completions", api.text_completions, methods=["POST"]),
        Route("/v1/models", api.models, methods=["GET"]),
        Route("/api/chat", api.ollama_chat, methods=["POST"]),
        Route("/api/generate", api.ollama_generate, methods=["POST"]),
        Route("/api/tags", info.tags, methods=["GET"]),
        Route("/api/show", info.show, methods=["GET", "POST"]),
        Route("/api/ps", info.ps, methods=["GET"]),
        Route("/api/version", info.version, methods=["GET"]),
        *(Route(path, api.embeddings, methods=["POST"]) for path in ("/v1/embeddings", *OLLAMA_ROUTES)),
        Route("/health", api.health, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/startup-events", _started, methods=["GET"]),
        *(Route(path, info.unknown, methods=["GET", "POST", "DELETE", "HEAD"]) for path in UNANSWERED),
    ]
    app.router.routes.extend(app.state.api_routes)
    app.state.stop_chats = api.stop_chats
    app.state.cors_origins = lambda: manager.settings.cors_origins  # read for each page's request
    return app


async def _started(request: Request) -> Response:
    """``true``, as Gradio 4 (text-generation-webui's UI) answers ``/startup-events``.

    Z-WAIF's pre-release checks its ``HOST_PORT`` so at every start: on anything but 200 it
    looks for text-generation-webui on the usual ports, writes the first it finds into its
    ``.env``, and from then on every chat went around serve, with no failover.
    """
    from starlette.responses import JSONResponse

    return JSONResponse(True)


def run(manager: FallbackManager, *, host: str = "127.0.0.1", port: int = 5001,
        api_key: str | None = None, mount: Callable[[Starlette], None] | None = None,
        announce: Callable[[str], None] = print) -> None:
    """Serve the API (and, through ``mount``, the tabs at ``/``) until interrupted.

    Args:
        api_key: as in ``build_api``; without one only loopback addresses are allowed.
        mount: adds more routes to the app before it starts (the CLI mounts the web UI).
        announce: told each line a person needs once the server listens: the URL for the
            host, then where chats go; later, why a web page's request was refused.

    Raises:
        InvalidSettings: a non-loopback host without a key, or a port outside 0-65535.
        HostUnavailable: ``host`` is not an address of this machine.
        PortUnavailable: the address cannot be listened on (the port is taken).
    """
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    check_bind(host, key)
    app = build_api(manager, api_key=key)
    if mount is not None:
        mount(app)
    else:  # Ollama answers its root, and some of its clients check that first (AnythingLLM)
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        app.router.routes.append(Route("/", lambda _: PlainTextResponse("zwaif-fallback serve is running"),
                                       methods=["GET", "HEAD"]))
    listener = listen(host, port)  # first, so that a port in use is one clear line
    # What is loaded by now lives as long as the server: keep the collector from scanning it
    # again and again (a full collection walked it all: tens of ms of a stalled loop).
    gc.collect()
    gc.freeze()
    shown = f"[{host}]" if ":" in host else host
    port = listener.getsockname()[1]  # the one the system picked for port 0
    tabs = f"http://{shown}:{port}/"
    announce(f"point your host's OpenAI-compatible URL at http://{shown}:{port}/v1 "
             + (f"(the tabs: {tabs}, health: /health; " if mount is not None else "(")
             + "Ctrl+C stops it)")
    where = chain_text(manager.settings)
    if not manager.settings.primary_url:
        where += (f"; set the main API under Main API at {tabs} (Management tab) or with FALLBACK_PRIMARY_URL"
                  if mount is not None else "; set the main API with FALLBACK_PRIMARY_URL")
    announce(where)
    served = front(app, host=host, announce=announce)
    serving(served, on_shutdown=app.state.stop_chats).run(sockets=[listener])


def _circuit_open(breaker: dict[str, Any]) -> bool:
    """Whether the chats skip a server now. Past its cooldown an open circuit lets the next
    chat through: ask it then, or a load balancer that heeds /health's 503 would keep that
    chat from ever coming."""
    return breaker.get("state") == "open" and breaker.get("retry_in_s", 0) > 0


class _Api:
    """The route handlers, over one manager. ``own_name``: the model an Ollama request's
    name asks for (``OllamaInfo.own_name``); ``listing``: the models ``/v1/models`` lists
    (``all_models``)."""

    def __init__(self, manager: FallbackManager, api_key: str | None, *,
                 own_name: Callable[[str], str], listing: Callable[[], list[dict[str, Any]]]) -> None:
        self.manager = manager
        self._listing = listing
        self.api_key = api_key
        self._own_name = own_name
        self._streams: weakref.WeakSet[Relay] = weakref.WeakSet()  # each lives as its answer
        self._whole: set[Cancel] = set()  # the non-streamed answers in flight
        self._stopping = False
        self._embeddings = Embeddings()

    def stop_chats(self) -> None:
        """Stop every streamed answer in flight (on the loop): the server is shutting down.
        A local model stops inside its decode, so the process neither waits for it nor
        exits under it."""
        self._stopping = True
        for relay in list(self._streams):
            relay.shut_down()
        for cancel in list(self._whole):
            cancel.set()

    async def chat_completions(self, request: Request) -> Response | Relay:
        body = await self._request_body(request)
        return await self._chat(request, body) if isinstance(body, dict) else body

    async def text_completions(self, request: Request) -> Response | Relay:
        """``POST /v1/completions``: a prompt continued as it is (``parse_text_request``)."""
        body = await self._request_body(request)
        return await self._chat(request, body, text=True) if isinstance(body, dict) else body

    async def ollama_chat(self, request: Request) -> Response | Relay:
        """Ollama's ``POST /api/chat``, answered as ``chat_completions`` answers (``ollama_api``)."""
        return await self._ollama(request, ollama_api.CHAT)

    async def ollama_generate(self, request: Request) -> Response | Relay:
        """Ollama's ``POST /api/generate``: a chat of one turn (``ollama_api``)."""
        return await self._ollama(request, ollama_api.GENERATE)

    async def _ollama(self, request: Request, endpoint: ollama_api.Endpoint) -> Response | Relay:
        from starlette.responses import JSONResponse

        body = await self._request_body(request)
        if not isinstance(body, dict):
            return in_ollamas_words(body)
        preloaded = endpoint.loaded(body)
        if preloaded is not None:  # the local models load when a chat needs them
            return JSONResponse(preloaded)
        try:
            asked = endpoint.request(body)
        except InvalidSettings as exc:
            return JSONResponse(render(error_object(exc)), status_code=400)
        asked["model"] = self._own_name(asked["model"])
        return await self._chat(request, asked, ollama=endpoint, text="prompt" in asked)

    async def _chat(self, request: Request, body: dict[str, Any], *, text: bool = False,
                    ollama: ollama_api.Endpoint | None = None) -> Response | Relay:
        from starlette.responses import JSONResponse

        if not body.get("stream"):
            answer = await self._whole_answer(request, body, text=text)
            shown = ollama.whole(answer) if ollama else answer
            return JSONResponse(shown, status_code=status_of(answer), headers=who_answered(answer))
        try:
            checked = parse_text_request(body) if text else parse_request(body)
            plan = self.manager.chat_plan(checked, cancel=Cancel())
        except InvalidSettings as exc:
            failure = error_object(exc)
            return JSONResponse(render(failure) if ollama else failure, status_code=400)
        chunks = ollama.chunks() if ollama else TextChunks(checked.include_usage) if text else \
            ChunkMaker(checked.include_usage, oobabooga=checked.oobabooga)
        relay = Relay(plan, chunks)
        relay.watch(request)
        self._streams.add(relay)
        return relay  # the response: the task that reads the first chunk starts it

    async def _whole_answer(self, request: Request, body: dict[str, Any], *,
                            text: bool = False) -> dict[str, Any]:
        """A non-streamed answer, on a thread of its own; stopped when the client hangs up or
        serve shuts down (a local model inside its decode, as for a stream)."""
        cancel = Cancel()
        self._whole.add(cancel)
        watcher = on_disconnect(request, cancel.set)
        try:
            complete = self.manager.text_completion if text else self.manager.chat_completion
            answer = await _on_own_thread(partial(complete, cancel=cancel), body)
        finally:
            watcher.cancel()
            self._whole.discard(cancel)
        if cancel.is_set() and self._stopping:
            return error_object(shutting_down())
        return answer

    async def models(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        refused = refusal(request, self.api_key)
        if refused is not None:
            return refused
        data = await asyncio.to_thread(self._listing)
        return JSONResponse({"object": "list", "data": [
            {k: v for k, v in m.items() if k != "x_ollama"} for m in data]})

    async def embeddings(self, request: Request) -> Response:
        """``/v1/embeddings`` (and Ollama's): passed on to the server that makes them
        (``embeddings``), on a thread of its own: a batch may take minutes."""
        from starlette.responses import Response

        ollama = request.url.path in OLLAMA_ROUTES
        body = refusal(request, self.api_key) or await read_raw_body(request)
        if not isinstance(body, bytes):
            return in_ollamas_words(body) if ollama else body
        answer = await _on_own_thread(partial(self._embeddings.embed, settings=self.manager.settings,
                                              route=request.url.path), body)
        self.manager.metrics.record_embeddings(answer.target, answer.status)
        if answer.ours and ollama:
            return in_ollamas_words(Response(answer.body, status_code=answer.status))
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type,
                        headers={"X-Fallback-Source": answer.source} if answer.source else None)

    async def health(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        state = await asyncio.to_thread(self._health)
        return JSONResponse(state, status_code=200 if state["can_answer"] else 503)

    def _health(self) -> dict[str, Any]:
        """The chain's state, probing the servers only when no local model can answer."""
        breakers = self.manager.breaker_states()
        settings = self.manager.settings
        local = [m.name for m in self.manager.discover_models() if m.usable]
        reach: dict[str, str] = {}
        asked: list[Upstream] = []
        for server in upstreams(settings):
            if _circuit_open(breakers.get(server.url, {})):
                reach[server.url] = "circuit open"
            elif local:
                reach[server.url] = "not probed"
            else:
                reach[server.url] = "unreachable"
                asked.append(server)
        up = at_once(answers, asked, deadline_s=PROBE_DEADLINE_S, late=lambda _: False)
        reach.update({s.url: "reachable" if ok else "unreachable" for s, ok in zip(asked, up, strict=True)})
        can_answer = bool(local) or "reachable" in reach.values()
        current = self.manager.current_model
        return {"status": "ok" if can_answer else "unavailable",
                "can_answer": can_answer,
                "primary": settings.primary_url or None,
                "servers": reach,
                "breakers": breakers,
                "current_model": current.name if current is not None else None,
                "local_models": len(local)}

    async def metrics(self, request: Request) -> Response:
        from starlette.responses import Response

        refused = refusal(request, self.api_key)
        if refused is not None:
            return refused
        body, content_type = self.manager.metrics.render()
        return Response(body, media_type=content_type)

    async def _request_body(self, request: Request) -> dict[str, Any] | Response:
        """The request's JSON body, or the response that refuses it (no key, not JSON)."""
        refused = refusal(request, self.api_key)
        return refused if refused is not None else await read_body(request)


async def _on_own_thread(fn: Callable[[Any], _R], arg: Any) -> _R:
    """``fn(arg)`` on a thread of its own: a long generation must not hold one of the loop's
    few default executor threads, which ``/health`` and ``/v1/models`` need."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_R] = loop.create_future()

    def run() -> None:
        try:
            result = fn(arg)
        except BaseException as exc:  # handed to the awaiting request
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, result)

    start_for_request(run, "zwaif-serve-answer")
    return await done
