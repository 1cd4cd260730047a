"""Ollama's routes that describe models, on ``serve``: ``/api/tags``, ``/api/show``,
``/api/ps`` and ``/api/version``; and Ollama's ways of saying things, which its answers
(``ollama_api``) share: a model's name, a moment (``timestamp``), an error (``render``).

Ollama names every model ``name:tag``, ``latest`` when no tag is given, and its clients rely
on it: Open WebUI adds ``:latest`` to a model named without a tag, then looks that name up
in the ``/api/tags`` it read, so a model listed bare could never be chosen. So a model listed
here without a tag is listed ``:latest`` (``tagged``), and a request by that name asks for
the model by its own (``OllamaInfo.own_name``). Any other name goes on as it was given: a
server may have a model whose own name ends in ``:latest``.

Open WebUI's "verify connection" asks ``/api/version``; it and ``ollama.ps()`` list what is
in memory with ``/api/ps``; AnythingLLM asks ``/api/show`` for every model ``/api/tags``
lists, and drops them all when one is missing. Ollama's other routes (``UNANSWERED``: pull,
push, ...) are answered 404 in Ollama's words, naming what serve answers (``unknown``);
other ``/api/`` paths are left to the tabs (Gradio 4 has routes there).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .admission import read_body, refusal
from .errors import FallbackError
from .upstreams import model_card_of, upstreams

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

    from .model_info import ModelInfo
    from .pool import HeldModel
    from .settings import FallbackSettings

__all__ = ["ANSWERED", "OLLAMA_VERSION", "UNANSWERED", "OllamaInfo", "in_ollamas_words", "model_card",
           "model_list", "render", "running", "tagged", "timestamp"]

#: The Ollama release whose API serve answers as: Open WebUI reads it as dotted integers.
OLLAMA_VERSION = "0.9.0"
#: What serve answers of Ollama's API, for a client that asks for anything else.
ANSWERED = ("/api/chat", "/api/generate", "/api/tags", "/api/show", "/api/ps", "/api/version", "/api/embed",
            "/api/embeddings")
#: Ollama's routes that serve does not answer: models are pulled and managed by Ollama itself.
UNANSWERED = ("/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/status",
              "/api/blobs/{digest}")
#: How long Ollama says a model kept in memory for good stays: its longest duration, 2^63 - 1
#: ns (some 292 years), as it sets a negative keep_alive.
_FOREVER_S = (2**63 - 1) / 1e9


def render(item: dict[str, Any]) -> dict[str, Any]:
    """``item`` as Ollama shows it: an OpenAI error object becomes ``{"error": "..."}``."""
    error = item.get("error")
    if isinstance(error, Mapping):
        return {"error": str(error.get("message") or "the answer failed")}
    return item


def timestamp(at: float | None = None) -> str:
    """A moment (now, by default) as Ollama writes one: ISO 8601 in UTC, with a Z."""
    utc = dt.timezone.utc
    moment = dt.datetime.fromtimestamp(at, utc) if at is not None else dt.datetime.now(utc)
    return moment.isoformat().replace("+00:00", "Z")


def tagged(name: str) -> str:
    """``name`` as Ollama lists it: with its tag, ``latest`` when it has none."""
    return name if ":" in name else f"{name}:latest"


def model_list(models: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /v1/models``' list as Ollama's ``GET /api/tags`` gives it: an Ollama primary's
    entries as it gave them (size, digest, details), first, as ``/v1/models`` lists them;
    the others by ``tagged`` names."""
    return {"models": [m.get("x_ollama") or {"name": tagged(m["id"]), "model": tagged(m["id"]), "details": {}}
                       for m in models]}


def model_card(model: ModelInfo, n_ctx: int) -> dict[str, Any]:
    """A local model as Ollama's ``/api/show`` describes one, from what its header says."""
    family = model.architecture or "unknown"
    info: dict[str, Any] = {"general.architecture": family}
    if model.parameters:
        info["general.parameter_count"] = model.parameters
    if model.context_length:
        info[f"{family}.context_length"] = model.context_length
    return {"modelfile": "", "parameters": f"num_ctx {min(n_ctx, model.context_length or n_ctx)}",
            "template": "", "details": _details(model), "model_info": info, "capabilities": ["completion"]}


#: ``/api/show`` of a model another server lists: serve knows no more of it than its name.
SERVERS_CARD: dict[str, Any] = {"modelfile": "", "parameters": "", "template": "", "details": {},
                                "model_info": {}, "capabilities": ["completion"]}


def _details(model: ModelInfo) -> dict[str, Any]:
    family = model.architecture or "unknown"
    return {"format": model.format, "family": family, "families": [family],
            "parameter_size": _count(model.parameters), "quantization_level": model.quantization or ""}


def _count(parameters: int | None) -> str:
    """A parameter count as Ollama writes it: "135M", "8.0B"."""
    if not parameters:
        return ""
    return f"{parameters / 1e9:.1f}B" if parameters >= 1e9 else f"{parameters / 1e6:.0f}M"


def running(model: ModelInfo, *, n_ctx: int, idle_s: float, keep_alive_s: float,
            now: float) -> dict[str, Any]:
    """The local model in memory as ``/api/ps`` lists one: when it will be unloaded if
    nothing uses it (``keep_alive_s`` after its last use; never, for 0 or less)."""
    expires = timestamp(now - idle_s + keep_alive_s if keep_alive_s > 0 else now + _FOREVER_S)
    name = tagged(model.name)
    return {"name": name, "model": name, "size": model.size_bytes, "digest": "", "details": _details(model),
            "expires_at": expires, "context_length": min(n_ctx, model.context_length or n_ctx)}


@dataclass(kw_only=True)
class OllamaInfo:
    """The handlers of Ollama's describing routes.

    Args:
        settings: the settings now (where the primary is, n_ctx, keep_alive).
        models: the list ``/v1/models`` shows (blocking: it asks the servers).
        find_model: a local model by name (``FallbackManager.find_model``).
        loaded: the local model in memory and its idle seconds (``FallbackManager.loaded_model``).
        api_key: the Bearer token every route requires; None for none.
        clock: the wall clock, for ``expires_at``.
    """

    settings: Callable[[], FallbackSettings]
    models: Callable[[], list[dict[str, Any]]]
    find_model: Callable[[str], ModelInfo]
    loaded: Callable[[], HeldModel | None]
    api_key: str | None
    clock: Callable[[], float]
    #: a name /api/tags gave -> the model's own
    _own_names: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def own_name(self, name: str) -> str:
        """The model a request for ``name`` asks for: one ``tags`` listed with a tag it has
        not is asked for by its own name; any other name as it is."""
        return self._own_names.get(name, name)

    def _listed(self) -> list[dict[str, Any]]:
        """``models``, remembering the names it is listed by (blocking)."""
        listed = self.models()
        self._own_names.update({tagged(m["id"]): m["id"] for m in listed if tagged(m["id"]) != m["id"]})
        return listed

    async def tags(self, request: Request) -> Response:
        """``GET /api/tags``: the models ``/v1/models`` lists."""
        from starlette.responses import JSONResponse

        refused = refusal(request, self.api_key)
        if refused is not None:
            return in_ollamas_words(refused)
        return JSONResponse(model_list(await asyncio.to_thread(self._listed)))

    async def show(self, request: Request) -> Response:
        """``/api/show``: an Ollama primary's own card for its models, a local model's from
        its header, or what serve knows of a model another server lists (hosts ask it to see
        whether a model is there)."""
        from starlette.responses import JSONResponse

        refused = refusal(request, self.api_key)
        body = refused if refused is not None else await read_body(request)
        if not isinstance(body, dict):
            return in_ollamas_words(body)
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name:
            return JSONResponse({"error": "model is required"}, status_code=400)
        card = await asyncio.to_thread(self._card, name)
        if card is None:
            return JSONResponse({"error": f"model '{name}' not found"}, status_code=404)
        return JSONResponse(card)

    def _card(self, name: str) -> dict[str, Any] | None:
        settings = self.settings()
        primary = upstreams(settings)[:1]
        if primary and primary[0].ollama:
            card = model_card_of(primary[0], name)
            if card is not None:
                return card
        local = self._local_card(name, settings.n_ctx)
        if local is not None:
            return local
        servers = {m["id"] for m in self._listed() if m.get("source") != "local"}  # names learnt
        if servers & {name, self.own_name(name), tagged(name)}:
            return dict(SERVERS_CARD)
        return self._local_card(name, settings.n_ctx)

    def _local_card(self, name: str, n_ctx: int) -> dict[str, Any] | None:
        try:
            model = self.find_model(self.own_name(name))
        except FallbackError:
            return None
        return model_card(model, n_ctx) if model.usable else None

    async def ps(self, request: Request) -> Response:
        """``GET /api/ps``: the local model in memory now, if one is."""
        from starlette.responses import JSONResponse

        refused = refusal(request, self.api_key)
        if refused is not None:
            return in_ollamas_words(refused)
        held = self.loaded()
        if held is None:
            return JSONResponse({"models": []})
        settings = self.settings()
        return JSONResponse({"models": [running(held.model, n_ctx=settings.n_ctx, idle_s=held.idle_s,
                                                keep_alive_s=settings.keep_alive, now=self.clock())]})

    async def version(self, request: Request) -> Response:
        """``GET /api/version``: the Ollama release whose API serve answers as."""
        from starlette.responses import JSONResponse

        refused = refusal(request, self.api_key)
        return in_ollamas_words(refused) if refused is not None else JSONResponse({"version": OLLAMA_VERSION})

    async def unknown(self, request: Request) -> Response:
        """Ollama's routes serve does not answer: 404, in Ollama's words, naming what it does."""
        from starlette.responses import JSONResponse

        refused = refusal(request, self.api_key)
        if refused is not None:
            return in_ollamas_words(refused)
        return JSONResponse({"error": (
            f"zwaif-fallback serve does not answer {request.method} {request.url.path}: of Ollama's API "
            f"it answers {', '.join(ANSWERED)}. Pull and manage models with Ollama itself; "
            "a GGUF for the fallback comes with `zwaif-fallback pull`")}, status_code=404)


def in_ollamas_words(refused: Response) -> Response:
    """A refusal (401, 400, 413, 508) as Ollama words an error, ``{"error": "..."}``: its
    clients show that text."""
    import json

    from starlette.responses import JSONResponse

    return JSONResponse(render(json.loads(bytes(refused.body))), status_code=refused.status_code)
