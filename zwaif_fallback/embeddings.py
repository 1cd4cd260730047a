"""Embeddings through serve: passed on, as they were sent, to the server that makes them.

A host that points its base URL at serve sends its embeddings there too: Open WebUI's and
AnythingLLM's document search (OpenAI-compatible or Ollama embedders), SillyTavern's vector
storage with its llama.cpp, vLLM or Ollama source. Before, serve answered them 404, so
pointing such a host at serve broke its documents even while the main API was up.

serve makes no embeddings itself, and it asks no other server when that one fails. The
vectors a host has stored only compare with vectors from the same model, and a server
answers with the model it has loaded whatever the request names (text-generation-webui,
llama.cpp's server): vectors from another server would be wrong without looking wrong. So
one server makes them all, the primary, or the first remote when no primary is set, and its
answer comes back as it answered, errors included. serve answers for it only when it gave
no answer (503) or refused serve's own API key for it (502: the host's key is not the one
at fault). A batch may take a while on a CPU: the server has ``READ_TIMEOUT_S`` between
reads, far more than a chat's first token.

``/v1/embeddings`` goes to that server's OpenAI-compatible route (an Ollama primary's
``/v1/embeddings``); Ollama's own ``/api/embed`` and ``/api/embeddings`` to an Ollama primary.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends.ollama import ollama_root
from .net import server_headers
from .upstreams import Upstream, upstreams

if TYPE_CHECKING:
    from .settings import FallbackSettings

__all__ = ["OLLAMA_ROUTES", "READ_TIMEOUT_S", "Embedded", "Embeddings", "embeddings_url"]

log = logging.getLogger(__name__)

#: Ollama's own embedding routes, passed to an Ollama primary as they are.
OLLAMA_ROUTES = ("/api/embed", "/api/embeddings")
#: How long the server may take between reads: a few hundred chunks on a CPU embedder. A
#: request waits for a free connection (100 at most) no longer than for a connect.
READ_TIMEOUT_S = 300.0
_MAKES_NONE = ("serve makes no embeddings itself, nor asks another server for them: a host's stored "
               "vectors compare only with the same model's")


@dataclass(frozen=True)
class Embedded:
    """What a host gets back: the server's answer as it came, or serve's own error object
    (``ours``) when it gave none. ``source``: the server's place (primary, remote);
    ``target``: its URL ("" when none was set)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    source: str = ""
    ours: bool = False
    target: str = ""


def embeddings_url(server: Upstream, route: str) -> str | None:
    """Where ``server`` takes a request to ``route``; None when it does not speak it."""
    if route in OLLAMA_ROUTES:
        return f"{ollama_root(server.url)}{route}" if server.ollama else None
    return f"{ollama_root(server.url)}/v1/embeddings" if server.ollama else f"{server.url}/embeddings"


class Embeddings:
    """One serve's way to its embedding server, over a connection kept alive between
    requests: a host that sends a document a chunk at a time sends thousands. The client
    lives as long as serve: closed at shutdown, it would fail the requests still draining."""

    def __init__(self) -> None:
        self._client: Any = None  # an httpx.Client, made on first use
        self._lock = threading.Lock()

    def embed(self, body: bytes, settings: FallbackSettings, *, route: str) -> Embedded:
        """Pass ``body``, as the host sent it to ``route``, to the server that makes the
        embeddings (blocking)."""
        import httpx

        servers = upstreams(settings)
        if not servers:
            return _ours(503, f"no main API is set to make the embeddings. {_MAKES_NONE}: set the "
                              "main API to a server with an embedding model (Ollama: nomic-embed-text)")
        server = servers[0]
        url = embeddings_url(server, route)
        if url is None:
            return _ours(404, f"{route} is Ollama's, and goes to an Ollama main API only; the main API "
                              "here speaks OpenAI's API: ask for /v1/embeddings instead", server=server)
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=settings.timeout, pool=settings.timeout)
        try:
            response = self._http().post(url, content=body, timeout=timeout, headers=server_headers(
                server.api_key, **{"Content-Type": "application/json"}))
        except httpx.HTTPError as exc:
            log.info("embeddings: %s gave no answer: %r", server.url, exc)
            return _ours(503, f"the {server.source} server {server.url} gave no answer "
                              f"({type(exc).__name__}: {exc}). {_MAKES_NONE}", server=server)
        if response.status_code in (401, 403):
            if server.source != "primary":
                need = "a key, and serve sends none to a remote"
            elif server.api_key:
                need = "another key than the one saved as primary_api_key: check it"
            else:
                need = "a key: set primary_api_key"
            return _ours(502, f"the {server.source} server {server.url} refused serve's request "
                              f"({response.status_code}): it may need {need}", server=server)
        return Embedded(response.status_code, response.content,
                        response.headers.get("content-type", "application/json"), source=server.source,
                        target=server.url)

    def _http(self) -> Any:
        import httpx

        with self._lock:
            if self._client is None:  # no proxies from the environment, as for the chats
                self._client = httpx.Client(trust_env=False, follow_redirects=False)
            return self._client


def _ours(status: int, message: str, *, server: Upstream | None = None) -> Embedded:
    """serve's own answer, in OpenAI's error shape; ``server``: the one it was for."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None,
                                 "code": "embeddings_unavailable"}}).encode()
    return Embedded(status, body, "application/json", source=server.source if server else "", ours=True,
                    target=server.url if server else "")
