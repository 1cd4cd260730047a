"""The servers ``serve`` stands in front of, the primary and the remotes: who they are, and
what ``/health``, ``/v1/models`` and ``/api/show`` ask of them (a short GET each: whether
they answer, their models, an Ollama primary's card for one)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from .backends.ollama import listed_models, models_url, ollama_root
from .net import LOOP_STATUS, server_headers

if TYPE_CHECKING:
    from .settings import FallbackSettings

__all__ = ["MODELS_TIMEOUT_S", "Upstream", "answers", "model_card_of", "models_of", "upstreams"]

log = logging.getLogger(__name__)

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
        response = _models_response(server)
    except httpx.HTTPError as exc:
        log.info("health: %s does not answer: %s", server.url, exc)
        return False
    if response.status_code == LOOP_STATUS:
        log.warning("health: %s is this serve itself: set the main API to the server the host used "
                    "before", server.url)
        return False
    return True


def models_of(server: Upstream) -> list[dict[str, Any]]:
    """A server's models, each marked with its source; nothing when it does not answer."""
    import httpx

    try:
        response = _models_response(server)
        data = listed_models(response.json(), ollama=server.ollama) if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError) as exc:
        log.info("no model list from %s: %s", server.url, exc)
        return []
    return [{**m, "source": server.source} for m in data]


def model_card_of(server: Upstream, name: str) -> dict[str, Any] | None:
    """An Ollama primary's ``/api/show`` for ``name``; None when it has no such model or
    does not answer."""
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


def _models_response(server: Upstream) -> Any:
    """The server's answer to a GET of its model list (raises httpx.HTTPError)."""
    import httpx

    return httpx.get(models_url(server.url, ollama=server.ollama), headers=server_headers(server.api_key),
                     timeout=MODELS_TIMEOUT_S, trust_env=False)
