"""What every request to ``serve`` passes before its route (``front``): the web page's origin
and the name it was addressed to (``cors``), a request that came round from this serve itself
(``admission.looped``), and a net for an error a route lets out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import cors
from .admission import loop_refusal, looped
from .completions import internal_error
from .net import instance_ids, is_loopback, passing_through
from .ollama_info import in_ollamas_words

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.responses import Response

__all__ = ["front"]

log = logging.getLogger(__name__)


def front(app: Starlette, *, host: str = "127.0.0.1",
          announce: Callable[[str], None] | None = None) -> Callable[..., Any]:
    """``app`` as ``run`` serves it: the API's paths sent straight to their routes, a request
    from this process itself refused (``admission.looped``), one from other serves answered
    with their ids sent on (``net.passing_through``), one from a web page answered or refused
    as ``cors`` says. FastAPI's middleware (error pages, exception handlers, body limits) cost
    a streamed request about a tenth of its CPU, and the API's handlers need none of it: they
    answer their errors themselves. Everything else (the tabs, lifespan) goes through ``app``
    as before, once ``cors.Gate`` has let it in. ``host``: the address it listens on (on
    loopback only this machine's names are answered); ``announce``: told why a web page's
    request was refused (a browser shows the page no reason)."""
    from starlette.routing import Router

    routes = app.state.api_routes
    router, paths = Router(routes=routes), {route.path for route in routes}
    gate = cors.Gate(listed=app.state.cors_origins, on_loopback=is_loopback(host), tell=announce)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        api = scope["type"] == "http" and scope["path"] in paths
        refused = gate.refusal(scope, api=api) if scope["type"] == "http" else None
        if refused is not None:
            await _worded(scope, refused)(scope, receive, send)
        elif api:
            origin = cors.origin_of(scope["headers"])
            if origin is not None:  # a browser's request, from a page let in
                if scope["method"] == "OPTIONS":
                    await cors.preflight(origin, scope["headers"], send)
                    return
                send = cors.showing_to(origin, send)
            came_through = instance_ids(scope["headers"])
            if looped(came_through):
                await _worded(scope, loop_refusal())(scope, receive, send)
            else:
                with passing_through(came_through):
                    await _answering_escapes(router, scope, receive, send)
        else:
            await app(scope, receive, send)

    return asgi


async def _answering_escapes(app: Any, scope: Any, receive: Any, send: Any) -> None:
    """``app``'s answer; an exception it lets out before answering gets a 500 in the API's
    shape, sent through ``send``, so a web page let in reads it too. uvicorn's own 500 is
    plain text and has no CORS header: the page would see a network error. Once the answer
    has begun, the exception goes on to uvicorn, which closes the connection."""
    started = False

    async def sending(message: Any) -> None:
        nonlocal started
        started = started or message["type"] == "http.response.start"
        await send(message)

    try:
        await app(scope, receive, sending)
    except Exception as exc:
        if started:
            raise
        log.exception("%s %s failed", scope["method"], scope["path"])
        from starlette.responses import JSONResponse

        failed = JSONResponse({"error": internal_error(exc)}, status_code=500)
        await _worded(scope, failed)(scope, receive, send)


def _worded(scope: Any, refused: Response) -> Response:
    """A refusal as the path's API words it: Ollama's ``/api/`` routes have their own shape."""
    return in_ollamas_words(refused) if scope["path"].startswith("/api/") else refused
