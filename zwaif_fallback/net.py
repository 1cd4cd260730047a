"""Network addresses: which hosts only this machine can reach, and which requests came
from this process itself.

The metrics endpoint, the web UI and the OpenAI-compatible server listen on loopback
unless a person asks otherwise (and, for the UI, sets a login): they all decide with
``is_loopback``.

Every request this process sends to a server carries ``INSTANCE_HEADER`` with this
process's own id (``own_headers``). A main API URL that points back at serve (an easy slip:
the UI is on serve's port) would otherwise send each chat to itself, and that one again, a
connection more each time until the sockets run out; serve refuses a request with its own id.
The id, not the header alone, decides: one serve may still stand in front of another
serve process. A chat that serve answers for a request from other serve processes carries
their ids on before its own (``passing_through``), so a loop through several processes
(two serves, each the other's main API) is refused where it began.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator

__all__ = ["INSTANCE_HEADER", "LOOP_STATUS", "MAX_HOPS", "instance_id", "instance_ids", "is_loopback",
           "own_headers", "passing_through", "server_headers", "start_for_request"]

INSTANCE_HEADER = "X-Zwaif-Fallback-Instance"
#: HTTP's "Loop Detected": what serve answers a request that came from itself
LOOP_STATUS = 508
_INSTANCE_ID = uuid.uuid4().hex  # random bits, nothing read: one id for all threads at once
_ID = re.compile("[0-9a-f]{32}")  # what an id looks like (uuid4().hex)
#: The most ids of earlier serves sent on: a longer chain is no real setup, and the header
#: stays small whatever a client sends.
MAX_HOPS = 16
#: The serve processes the request being answered has come through, set by serve for the
#: request's task; threads that work for the request run in a copy of its context.
_came_through: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("came_through", default=())


def instance_id() -> str:
    """This process's id."""
    return _INSTANCE_ID


def instance_ids(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, ...]:
    """The serve processes a request (its ASGI headers) has come through, in order: every
    ``INSTANCE_HEADER``, each a comma-separated list. Only ids as serve makes them are kept:
    anything else a client sends is not sent on."""
    name = INSTANCE_HEADER.lower().encode()
    return tuple(part for key, value in headers if key == name
                 for part in (p.strip() for p in value.decode("latin-1").split(",")) if _ID.fullmatch(part))


@contextlib.contextmanager
def passing_through(ids: tuple[str, ...]) -> Iterator[None]:
    """Within it, the requests this process sends say that they came through ``ids`` first."""
    token = _came_through.set(ids[-MAX_HOPS:])
    try:
        yield
    finally:
        _came_through.reset(token)


def start_for_request(work: Callable[[], None], name: str) -> None:
    """Run ``work`` on a daemon thread in a copy of this context: what it sends to a server
    for the request says which serves the request came through (``passing_through``)."""
    threading.Thread(target=contextvars.copy_context().run, args=(work,), daemon=True, name=name).start()


def own_headers() -> dict[str, str]:
    """The headers every request to a server carries (see the module docstring)."""
    return {INSTANCE_HEADER: ", ".join((*_came_through.get(), instance_id()))}


def server_headers(api_key: str, **more: str) -> dict[str, str]:
    """The headers of a request to a server: ``own_headers``, its key as a Bearer token when
    it has one, and ``more``."""
    return {**more, **own_headers(), **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP address, "[::1]" or "localhost", spaces around allowed) is
    loopback; any other name is not, since it may resolve to anything."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
