"""Which web pages may call serve from a browser (CORS), and the headers that let them.

Some hosts run in a browser and call their LLM from the page itself: Amica and ChatVRM (VRM
avatars), Open WebUI's direct connections, an OBS overlay. The browser sends the page's
``Origin``, asks first with an OPTIONS request (the preflight) whether the real one may
go, and hands the answer to the page only when the server names that origin in
``Access-Control-Allow-Origin``. Without these headers such a host cannot use serve at all.

Like Ollama, serve lets in the pages of this machine itself (a loopback host such as
localhost, 127.0.0.1 or [::1], on any port and scheme, Tauri's apps included) and the
origins a person lists in ``cors_origins`` (``*``: any page). A request from any other page
is refused with a 403 before it runs, preflight or not: a web page that a person merely
visits must not chat through their models or read their main API's answers. A request
without an ``Origin`` (Python, Node and curl clients) is not concerned.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from .completions import error_object
from .errors import InvalidSettings
from .net import is_loopback

__all__ = ["ALLOWED_METHODS", "EXPOSED_HEADERS", "MAX_AGE_S", "allowed", "origin_of", "preflight",
           "refusal", "showing_to"]

log = logging.getLogger(__name__)

ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
#: The response headers a page may read beyond the usual ones: who answered, and with what.
EXPOSED_HEADERS = "X-Fallback-Source, X-Fallback-Model"
#: How long a browser may keep a preflight's answer (Chromium caps it at 2 hours).
MAX_AGE_S = 600
_warned: set[str] = set()  # the origins refused so far, each logged once
_WARN_AT_MOST = 64  # a page that sends ever new origins fills no memory

Send = Callable[[dict[str, Any]], Awaitable[None]]


def origin_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``Origin`` of a request (its ASGI headers), None when it sent none."""
    for key, value in headers:
        if key == b"origin":
            return value.decode("latin-1")
    return None


def allowed(origin: str, listed: Sequence[str]) -> bool:
    """Whether a page from ``origin`` may call serve: one of this machine's own, or ``listed``
    (``cors_origins``, normalised as the setting keeps it), or any when ``listed`` has ``*``."""
    if "*" in listed or origin.lower() in listed:
        return True
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    if not host:
        return False
    return is_loopback(host) or host.endswith(".localhost") or host == "0.0.0.0"


async def preflight(origin: str, headers: Iterable[tuple[bytes, bytes]], send: Send) -> None:
    """Answer a browser's preflight from an allowed ``origin``: any method serve has, and the
    headers the page asked to send (Authorization, Content-Type and the like)."""
    asked = dict(headers)
    answer = [(b"access-control-allow-origin", origin.encode("latin-1")),
              (b"access-control-allow-methods", ALLOWED_METHODS.encode()),
              (b"access-control-max-age", str(MAX_AGE_S).encode()),
              (b"vary", b"Origin, Access-Control-Request-Headers")]
    if b"access-control-request-headers" in asked:
        answer.append((b"access-control-allow-headers", asked[b"access-control-request-headers"]))
    # Chromium's Private Network Access: a public page asks before it may reach this machine
    if asked.get(b"access-control-request-private-network", b"").lower() == b"true":
        answer.append((b"access-control-allow-private-network", b"true"))
    await send({"type": "http.response.start", "status": 204, "headers": answer})
    await send({"type": "http.response.body", "body": b""})


def showing_to(origin: str, send: Send) -> Send:
    """``send`` with the headers that let a page from ``origin`` read the response."""
    added = [(b"access-control-allow-origin", origin.encode("latin-1")),
             (b"access-control-expose-headers", EXPOSED_HEADERS.encode()), (b"vary", b"Origin")]

    async def sending(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *added]}
        await send(message)

    return sending


def refusal(origin: str) -> Any:
    """The 403 response for a page that may not call serve, in OpenAI's error shape; the
    reason is logged too (once an origin), since a browser shows the page no response body."""
    from starlette.responses import JSONResponse

    problem = InvalidSettings(
        f"a web page at {origin} may not call this server: only this machine's own pages and the "
        f"origins in cors_origins may. To allow it, restart serve with FALLBACK_CORS_ORIGINS={origin} "
        f"set, or after zwaif-fallback settings --set cors_origins={origin}; '*' allows any page")
    if origin not in _warned and len(_warned) < _WARN_AT_MOST:
        _warned.add(origin)
        log.warning("refused a request from a browser: %s", problem)
    return JSONResponse(error_object(problem), status_code=403)
