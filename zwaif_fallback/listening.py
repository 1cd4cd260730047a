"""How ``serve`` listens: whether FastAPI and uvicorn are installed at all, the socket,
bound before anything else so that a port in use is one clear error, and the uvicorn server
on it, with Nagle's algorithm off and a hook for shutting the answers in flight down."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import BackendUnavailable, FallbackError, HostUnavailable, InvalidSettings, PortUnavailable

if TYPE_CHECKING:
    import uvicorn

__all__ = ["listen", "need_web_stack", "serving"]


def serving(app: Callable[..., Any], *,
            on_shutdown: Callable[[], None] | None = None) -> uvicorn.Server:
    """The uvicorn server that ``run`` starts on ``app``: its HTTP protocol turns Nagle's
    algorithm off on every connection, and ``on_shutdown`` runs when it begins to shut down
    (Ctrl-C), before uvicorn waits for the requests in flight.

    asyncio does that itself only on a selector loop, and only for a socket made as TCP by
    name (``IPPROTO_TCP``, which a plain ``socket(family, SOCK_STREAM)`` is not); the
    proactor loop, Windows' default, makes every accepted socket with protocol 0. With Nagle
    on, a streamed answer's first body write waited for the client to acknowledge the
    headers, which a client may delay (40 ms on Linux, 200 ms on Windows): 40 ms were added
    to the first token of every answer here.
    """
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class NoDelayProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            super().connection_made(transport)

    class Server(uvicorn.Server):
        async def shutdown(self, *args: Any, **kwargs: Any) -> None:
            if on_shutdown is not None:
                on_shutdown()
            await super().shutdown(*args, **kwargs)

    return Server(uvicorn.Config(app, http=NoDelayProtocol, log_level="warning",
                                 timeout_graceful_shutdown=5))


def listen(host: str, port: int) -> socket.socket:
    """The socket that uvicorn serves on, bound and listening (``serving`` turns Nagle's
    algorithm off on each connection it accepts).

    Raises:
        InvalidSettings: ``port`` is outside 0-65535 (bind would raise OverflowError).
        HostUnavailable: ``host`` is not an address of this machine.
        PortUnavailable: the address cannot be listened on (the port is taken, or not allowed).
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise InvalidSettings(f"port={port!r} is not a port: use 0 to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # POSIX only, as asyncio does: there it lets a restart bind while old connections are
        # in TIME_WAIT, but on Windows it lets a socket bind a port another one listens on,
        # so a second serve on 5001 started without a PortUnavailable and shared its clients.
        if os.name == "posix":
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)  # a client that comes before uvicorn has started waits, not refused
    except OSError as exc:
        listener.close()
        raise _cannot_listen(host, port, exc) from exc
    return listener


def _cannot_listen(host: str, port: int, exc: OSError) -> FallbackError:
    # A name that does not resolve (gaierror) or an address no interface here has is a wrong
    # host: another port would fail the same way.
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return HostUnavailable(
            f"cannot serve on {host}:{port}: {host} is not an address of this machine "
            f"({exc.strerror or exc}); listen on one it has, such as --host 127.0.0.1")
    return PortUnavailable(f"cannot serve on {host}:{port}: {exc.strerror or exc}; "
                           "choose another port with --port")


def need_web_stack() -> None:
    """Check that FastAPI and uvicorn, which serve runs on, are installed: Gradio brings them
    (the ``ui`` extra), and an install without it gets them with the ``serve`` extra.

    Raises:
        BackendUnavailable: one of them does not import; the message says what to install.
    """
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(f'serve needs FastAPI and uvicorn ({exc}): pip install '
                                 '"zwaif-fallback[serve]", or "zwaif-fallback[ui]" for the tabs too'
                                 ) from None
