"""The servers ``serve`` stands in front of, the primary and the remotes: who they are, and
what ``/health``, ``/v1/models`` and ``/api/show`` ask of them (a short GET each: whether
they answer, their models, an Ollama primary's card for one), all servers at once and
within a deadline (``at_once``): httpx's timeouts bound one read, not a server that sends a
byte now and then, nor several servers asked one after the other.
``upstream_probe`` asks the same for a person setting them up, and says what is wrong.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .backends.ollama import listed_models, models_url, ollama_root
from .net import LOOP_STATUS, server_headers, start_for_request

if TYPE_CHECKING:
    from .model_info import ModelInfo
    from .settings import FallbackSettings

__all__ = ["MAX_IN_FLIGHT", "MODELS_TIMEOUT_S", "PROBE_DEADLINE_S", "ModelLists", "Upstream", "all_models",
           "answers", "at_once", "model_card_of", "models_response", "upstreams"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How long serve waits for a server's model list (or card) before taking it as silent.
MODELS_TIMEOUT_S = 2.0


class Upstream(NamedTuple):
    """A server that serve stands in front of."""

    url: str
    source: str
    api_key: str
    ollama: bool  # Ollama's own API, not an OpenAI-compatible one


def upstreams(settings: FallbackSettings) -> list[Upstream]:
    """The primary, then the remote servers not the primary."""
    servers = [Upstream(settings.primary_url, "primary", settings.primary_api_key.get_secret_value(),
                       settings.primary_api == "ollama")] if settings.primary_url else []
    return servers + [Upstream(url, "remote", "", False) for url in settings.remote_urls
                      if url != settings.primary_url]


def answers(server: Upstream) -> bool:
    """Whether a server answers HTTP at all: any status means it is up, if perhaps unwilling,
    except serve's own refusal of a request that came from itself (``admission.looped``)."""
    import httpx

    try:
        response = models_response(server)
    except httpx.HTTPError as exc:
        log.info("health: %s does not answer: %s", server.url, exc)
        return False
    if response.status_code == LOOP_STATUS:
        log.warning("health: %s is this serve itself: set the main API to the server the host used "
                    "before", server.url)
        return False
    return True


class ModelLists:
    """The servers' model lists, as ``/v1/models`` and ``/api/tags`` give them: each server's
    own while it answers, and while it does not (down, silent, failing with a 5xx) the one it
    gave last.

    A host that picks its model from the list when it starts (Z-WAIF's pre-release picks
    among Ollama's, and writes the one it picked into its .env) would pick a local one while
    the main API is down, and keep asking for it once the main API is back. A chat that
    names one of these while the server is down is answered by the fallback as any other.
    Only what this process has seen is remembered: started while the server is down, serve
    lists none of its models.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, bool], list[dict[str, Any]]] = {}

    def of(self, server: Upstream) -> list[dict[str, Any]]:
        """A server's models, each marked with its source."""
        import httpx

        try:
            response = models_response(server)
            if response.status_code != 200:
                log.info("no model list from %s: HTTP %d", server.url, response.status_code)
                # up but refusing (a key, a path): its models are not to be had there
                return self.remembered(server) if response.status_code >= 500 else []
            data = listed_models(response.json(), ollama=server.ollama)
        except (httpx.HTTPError, ValueError) as exc:
            log.info("no model list from %s: %s", server.url, exc)
            return self.remembered(server)
        listed = [{**m, "source": server.source} for m in data]
        self._last[server.url, server.ollama] = listed
        return listed

    def remembered(self, server: Upstream) -> list[dict[str, Any]]:
        """The models ``server`` listed when it last answered (none before it has)."""
        return self._last.get((server.url, server.ollama), [])


def model_card_of(server: Upstream, name: str) -> dict[str, Any] | None:
    """An Ollama primary's ``/api/show`` for ``name``; None when it has no such model or
    does not answer within ``PROBE_DEADLINE_S``."""
    card = partial(_card_of, name=name)
    return at_once(card, [server], deadline_s=PROBE_DEADLINE_S, late=lambda _: None)[0]


def _card_of(server: Upstream, name: str) -> dict[str, Any] | None:
    import httpx

    try:
        response = httpx.post(f"{ollama_root(server.url)}/api/show", json={"model": name},
                              headers=server_headers(server.api_key), timeout=MODELS_TIMEOUT_S,
                              trust_env=False)
        card = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        log.info("no model card from %s: %s", server.url, exc)
        return None
    return card if isinstance(card, dict) else None


#: The longest a question to all the servers takes (``at_once``), however many and whatever
#: they do: each asked with ``MODELS_TIMEOUT_S``, and a margin for the one thing httpx's
#: timeouts leave out, a host name that takes long to resolve.
PROBE_DEADLINE_S = MODELS_TIMEOUT_S + 1.0


#: Asks to one server still running (past their deadline: a server that trickles bytes holds
#: them as long as it trickles); with this many, the server counts as late at once, with no
#: new thread, so a host that polls the model list cannot pile threads up on it.
MAX_IN_FLIGHT = 4
_slots: dict[str, threading.Semaphore] = {}  # a server's URL -> its asks that may run now


def at_once(ask: Callable[[Upstream], _T], servers: Sequence[Upstream], *, deadline_s: float,
            late: Callable[[Upstream], _T]) -> list[_T]:
    """``ask`` each of ``servers``, all at once, for at most ``deadline_s`` in all: httpx's
    timeouts bound each read, not a server that sends a byte now and then, nor several
    servers one after the other.

    Args:
        ask: a blocking request to one server; it runs on a daemon thread in a copy of this
            context (``net.start_for_request``), so one still waiting past the deadline never
            holds up the process's exit, and what it sends says where the request came through.
            A server with ``MAX_IN_FLIGHT`` asks still running is not asked again.
        late: what a server that has not answered by the deadline counts as.

    Returns:
        One result a server, in the order of ``servers``.
    """
    futures: list[concurrent.futures.Future[_T] | None] = []
    for server in servers:
        if not _slot(server).acquire(blocking=False):
            futures.append(None)
            continue
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        futures.append(future)
        start_for_request(partial(_settle, future, ask, server), name="upstream-ask")
    concurrent.futures.wait([f for f in futures if f is not None], timeout=deadline_s)
    return [future.result() if future is not None and future.done() else late(server)
            for server, future in zip(servers, futures, strict=True)]


def _slot(server: Upstream) -> threading.Semaphore:
    return _slots.setdefault(server.url, threading.Semaphore(MAX_IN_FLIGHT))  # setdefault: atomic


def _settle(future: concurrent.futures.Future[_T], ask: Callable[[Upstream], _T], server: Upstream) -> None:
    try:
        future.set_result(ask(server))
    except Exception as exc:  # a bug, not the server's doing: raised where the results are read
        future.set_exception(exc)
    finally:
        _slot(server).release()


def models_response(server: Upstream, timeout_s: float = MODELS_TIMEOUT_S) -> Any:
    """The server's answer to a GET of its model list (raises httpx.HTTPError)."""
    import httpx

    return httpx.get(models_url(server.url, ollama=server.ollama), headers=server_headers(server.api_key),
                     timeout=timeout_s, trust_env=False)


def all_models(lists: ModelLists, settings: Callable[[], FallbackSettings],
               local: Callable[[], list[ModelInfo]]) -> list[dict[str, Any]]:
    """What serve's ``/v1/models`` and ``/api/tags`` list: the servers' models, then the
    usable ``local`` ones (blocking)."""
    late = partial(_no_list_in_time, lists)
    listed = [m for models in at_once(lists.of, upstreams(settings()), deadline_s=PROBE_DEADLINE_S,
                                      late=late) for m in models]
    for model in local():
        if model.usable:
            listed.append({"id": model.name, "object": "model", "created": 0,
                           "owned_by": "zwaif-fallback", "source": "local"})
    return listed


def _no_list_in_time(lists: ModelLists, server: Upstream) -> list[dict[str, Any]]:
    log.info("no model list from %s within %g s", server.url, PROBE_DEADLINE_S)
    return lists.remembered(server)
