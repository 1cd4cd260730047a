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

A browser sends no ``Origin`` when a page reads its own site, which a foreign page can fake
by pointing its name at 127.0.0.1 (DNS rebinding): on a loopback address serve therefore
also refuses a request addressed to any name but this machine's (``addressed_here``), as
Ollama does.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from .completions import error_object
from .errors import NotAllowed
from .net import is_loopback

__all__ = ["ALLOWED_METHODS", "EXPOSED_HEADERS", "MAX_AGE_S", "Gate", "HostCheck", "addressed_here",
           "allowed", "origin_of", "preflight", "showing_to"]

log = logging.getLogger(__name__)

ALLOWED_METHODS = "GET, POST, DELETE, OPTIONS"
#: The response headers a page may read beyond the usual ones: who answered, and with what.
EXPOSED_HEADERS = "X-Fallback-Source, X-Fallback-Model"
#: How long a browser may keep a preflight's answer (Chromium caps it at 2 hours).
MAX_AGE_S = 600
#: Names that only ever mean a machine of one's own or of the local network.
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")  # .internal: host.docker.internal
_WARN_AT_MOST = 64  # of each kind: a page that sends ever new names fills no memory

Send = Callable[[dict[str, Any]], Awaitable[None]]


def origin_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``Origin`` of a request (its ASGI headers), None when it sent none."""
    return _header(headers, b"origin")


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
    host = host.rstrip(".")
    return is_loopback(host) or host.endswith(".localhost") or host == "0.0.0.0"


def addressed_here(host_header: str | None) -> bool:
    """Whether a request's ``Host`` names this machine: an address of this or the local
    network, localhost, this machine's own name, or a name under .localhost, .local or
    .internal. Any other name, on a loopback connection, is a web page's DNS rebinding."""
    if not host_header:
        return True  # HTTP/1.0 clients may send none; a browser always does
    try:
        host = (urlsplit(f"//{host_header}").hostname or "").rstrip(".")
    except ValueError:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host in ("localhost", socket.gethostname().lower()) or host.endswith(_LOCAL_SUFFIXES)
    return address.is_loopback or address.is_private or address.is_unspecified or address.is_link_local


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


class Gate:
    """The refusals of one serve: a page whose origin is not let in, a request on loopback
    addressed to a name not this machine's. Each is logged once a name, since a browser
    shows the page no response body, and the log is where a person learns what to change.

    Args:
        listed: the origins let in now (``cors_origins``), read at each browser request, so
            that a change of the setting holds at once.
        on_loopback: the server listens on a loopback address, so that only this machine's
            names are answered; on any other address (with an API key) a name is not checked,
            as a reverse proxy in front of it keeps the public one.
        tell: also told each refusal's reason, once a name: serve's console (the log file is
            where a person looks last).
    """

    def __init__(self, listed: Callable[[], Sequence[str]], *, on_loopback: bool = True,
                 tell: Callable[[str], None] | None = None) -> None:
        self._listed = listed
        self._on_loopback = on_loopback
        self._tell = tell
        self._warned: set[str] = set()

    def refusal(self, scope: dict[str, Any], *, api: bool) -> Any:
        """The 403 response for a request (its ASGI scope) that may not go on, or None.
        ``api``: one of serve's own routes, where an origin must be let in (the web UI's
        routes have Gradio's own checks)."""
        host = _header(scope["headers"], b"host") if self._on_loopback else None
        if self._on_loopback and not addressed_here(host):
            return self._refused(host or "", NotAllowed(
                f"this server listens on loopback and answers requests for this machine only "
                f"(localhost, 127.0.0.1, {socket.gethostname()}), not for {host!r}: a web page may "
                "have pointed that name at this machine. Use localhost or 127.0.0.1 (a name of your "
                "own for this machine is refused too, as Ollama refuses it); a reverse proxy or a "
                "tunnel must send Host: 127.0.0.1 (ngrok: --host-header=localhost:PORT, cloudflared: "
                "--http-host-header=localhost:PORT)"))
        origin = origin_of(scope["headers"]) if api else None
        if origin is not None and not allowed(origin, self._listed()):
            return self._refused(origin, NotAllowed(
                f"a web page at {origin} may not call this server: only this machine's own pages and "
                f"the origins in cors_origins may. To allow it, add {origin} to \"Web pages that may call "
                f"serve\" in the web UI's Main API section (at once), or restart serve with "
                f"FALLBACK_CORS_ORIGINS={origin} set; '*' allows any page"))
        return None

    def _refused(self, name: str, problem: NotAllowed) -> Any:
        from starlette.responses import JSONResponse

        if name not in self._warned and len(self._warned) < _WARN_AT_MOST:
            self._warned.add(name)
            log.warning("refused a request: %s", problem)
            if self._tell is not None:
                self._tell(f"refused a request: {problem}")
        return JSONResponse(error_object(problem), status_code=403)


class HostCheck:
    """ASGI middleware with ``Gate``'s rule for names, for an app that is not served through
    serve's front: the standalone tabs (``zwaif-fallback ui``), served by Gradio's launch. A
    rebinding page could otherwise use their API to point the main API at its own server."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        self._gate = Gate(listed=tuple)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        refused = self._gate.refusal(scope, api=False) if scope["type"] == "http" else None
        await (refused or self.app)(scope, receive, send)


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None
