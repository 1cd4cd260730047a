"""Embeddings through serve: passed on to the servers, in the chain's order.

A host that points its OpenAI base URL at serve sends its embeddings there too: Open WebUI's
and AnythingLLM's document search, SillyTavern's vector storage with an OpenAI-compatible
source. Before, serve answered them 404, so pointing such a host at serve broke its
documents even while the main API was up.

serve makes no embeddings itself. A chat model's hidden states make poor ones, and the
vectors a host has stored only compare with vectors from the same model: an answer from
another model would be wrong without looking wrong. So a request goes as it was sent to the
primary, then to each remote, and the first server that takes it answers, as it answered.
A server whose circuit is open (the chats skip it now) is skipped. A server that fails or
refuses passes the request on; when none takes it, the answer is 400 if every server that
answered refused the request itself (a wrong model name), else 503, naming each attempt.

``/v1/embeddings`` goes to every server (an Ollama primary at its OpenAI-compatible
``/v1/embeddings``); Ollama's own ``/api/embed`` and ``/api/embeddings`` to an Ollama
primary only, as there is no other server that speaks them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .backends.ollama import ollama_root
from .completions import error_object
from .errors import AllTargetsFailed, InvalidSettings
from .net import server_headers
from .results import Attempt
from .upstreams import Upstream

__all__ = ["OLLAMA_ROUTES", "Embedded", "embed", "embeddings_url"]

log = logging.getLogger(__name__)

#: Ollama's own embedding routes, passed to an Ollama primary as they are.
OLLAMA_ROUTES = ("/api/embed", "/api/embeddings")
#: A server's answers that refuse the request itself, not a failure of the server: the next
#: one would refuse it too. 404 and 405 are not here: a server without embeddings says so.
_REQUEST_REFUSED = frozenset({400, 401, 403, 413, 422})
_MAKES_NONE = ("serve makes no embeddings itself (its local models are chat models): set a main API "
               "or a remote that makes them, with an embedding model (Ollama: nomic-embed-text)")


@dataclass(frozen=True)
class Embedded:
    """What a host gets back: a server's answer as it came (``body``, its status and content
    type), or serve's own error object (``ours``) when no server took the request."""

    status: int
    body: bytes
    content_type: str = "application/json"
    attempts: list[Attempt] = field(default_factory=list)
    ours: bool = False  # serve's own error object, not a server's answer


def embeddings_url(server: Upstream, route: str) -> str | None:
    """Where ``server`` takes a request to ``route``; None when it does not speak it."""
    if route in OLLAMA_ROUTES:
        return f"{ollama_root(server.url)}{route}" if server.ollama else None
    return f"{ollama_root(server.url)}/v1/embeddings" if server.ollama else f"{server.url}/embeddings"


def embed(body: bytes, servers: Sequence[Upstream], *, route: str, timeout_s: float,
          skipped: Callable[[Upstream], bool]) -> Embedded:
    """Pass an embeddings request on (blocking): the first server that takes it answers.

    Args:
        body: the request's body, as the host sent it.
        servers: the primary, then the remotes (``upstreams``).
        route: the path it came to: ``/v1/embeddings`` or one of ``OLLAMA_ROUTES``.
        timeout_s: how long each server may take to connect, and between reads.
        skipped: whether a server is left out now (its circuit is open).
    """
    if not any(embeddings_url(server, route) for server in servers):
        return _nowhere(route, servers)
    attempts: list[Attempt] = []
    refused: Embedded | None = None  # the last answer that refused the request itself
    failed = False  # a server failed (no answer, a 5xx, no embeddings there), not the request
    for server in servers:
        url = embeddings_url(server, route)
        if url is None:
            continue
        if skipped(server):
            attempts.append(Attempt(target=server.url, source=server.source, ok=False, latency_s=0.0,
                                    tries=0, error="skipped: its circuit is open after failed chats"))
            failed = True
            continue
        started = time.monotonic()
        answer, error = _ask(url, body, server.api_key, timeout_s)
        attempts.append(Attempt(target=server.url, source=server.source, ok=answer is not None and not error,
                                error=error or None, latency_s=time.monotonic() - started))
        if answer is not None and not error:
            return replace(answer, attempts=attempts)
        log.info("embeddings: %s did not take the request: %s", server.url, error)
        if answer is not None and answer.status in _REQUEST_REFUSED:
            refused = answer
        else:
            failed = True
    if refused is not None and not failed:  # e.g. a model none of them has: theirs to say
        return replace(refused, attempts=attempts)
    problem = error_object(AllTargetsFailed(attempts))
    problem["error"]["message"] += f". {_MAKES_NONE}"
    return _answer(503, problem, attempts)


def _ask(url: str, body: bytes, api_key: str, timeout_s: float) -> tuple[Embedded | None, str]:
    """One server's answer (None when it gave none) and what went wrong ("" when it took it)."""
    import httpx

    try:
        response = httpx.post(url, content=body, timeout=timeout_s, trust_env=False,
                              headers=server_headers(api_key, **{"Content-Type": "application/json"}))
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    answer = Embedded(response.status_code, response.content,
                      response.headers.get("content-type", "application/json"))
    return answer, "" if response.is_success else f"{response.status_code}: {response.text[:300]}"


def _nowhere(route: str, servers: Sequence[Upstream]) -> Embedded:
    """The answer when no server is set that takes ``route``."""
    if servers:  # only Ollama's own routes can have none: the servers speak OpenAI's API
        return _answer(404, error_object(InvalidSettings(
            f"{route} is Ollama's, and goes to an Ollama main API only; the servers set here speak "
            "OpenAI's API: ask for /v1/embeddings instead")), [])
    return _answer(503, error_object(InvalidSettings(
        f"no main API or remote server is set to make the embeddings. {_MAKES_NONE}")), [])


def _answer(status: int, error: dict[str, Any], attempts: list[Attempt]) -> Embedded:
    import json

    return Embedded(status, json.dumps(error).encode(), "application/json", attempts, ours=True)
