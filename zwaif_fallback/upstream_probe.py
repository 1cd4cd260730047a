"""What the main API and the remote servers answer now, for a person setting them up (the
web UI's Main API section): each asked for its model list at once (``probe_all``), what it
found, and in words what is wrong and what to do, within ``PROBE_DEADLINE_S`` whatever the
servers do.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .backends.ollama import OLLAMA_PORT, listed_models
from .backends.openai_answers import server_said
from .net import LOOP_STATUS
from .routing import USUAL_MAIN_APIS
from .upstreams import MODELS_TIMEOUT_S, PROBE_DEADLINE_S, Upstream, at_once, models_response, upstreams

if TYPE_CHECKING:
    from .settings import FallbackSettings

__all__ = ["UpstreamProbe", "probe", "probe_all"]

log = logging.getLogger(__name__)

#: The servers' usual ports, for a person told that nothing listens on the one given.
_USUAL_PORTS = ("Oobabooga listens on 5000 when started with --api, LM Studio on 1234 once its server "
                "is started, llama.cpp's llama-server on 8080, Ollama on 11434 (`ollama serve`)")
#: What to do when a server took too long, by what it took too long for.
_TIMEOUT_ADVICE = {
    "connection": "nothing took the connection: check the address and port, and that no firewall "
                  "drops it (a server on another PC must listen on its network address, not only "
                  "127.0.0.1)",
    "answer": "it took the connection but did not answer: it may be busy (loading a model, or "
              "answering another chat) or stuck; check again in a moment, or restart it",
}


@dataclass(frozen=True, kw_only=True)
class UpstreamProbe:
    """What one short request for a server's model list found (``probe``).

    ``answered``: it gave its model list, ``models`` (their names, in its order), though
    ``problem`` may still say something is off (it lacks the model it is asked for).
    Otherwise ``problem`` says what went wrong; ``advice`` says what to do about it.
    ``status_code``: the HTTP status it answered with, None when it gave none.
    """

    server: Upstream
    answered: bool
    status_code: int | None = None
    models: tuple[str, ...] = ()
    problem: str = ""
    advice: str = ""


def probe(server: Upstream, *, model: str = "", timeout_s: float = MODELS_TIMEOUT_S) -> UpstreamProbe:
    """Ask ``server`` for its model list once, and say what the answer means.

    Args:
        server: the server to ask.
        model: the model it will be asked for (``primary_model``), if any: a list without it
            is a problem.
        timeout_s: how long to wait for each step of the request (connecting, the answer).

    Returns:
        What it found; never raises for what the server does.
    """
    import httpx

    try:
        response = models_response(server, timeout_s)
    except httpx.TimeoutException as exc:
        waited = "connection" if isinstance(exc, httpx.ConnectTimeout) else "answer"
        return _silent(server, f"no {waited} within {timeout_s:g} s", _TIMEOUT_ADVICE[waited])
    except httpx.HTTPError as exc:
        return _unreachable(server, exc)
    if response.status_code != 200:
        return _refused(server, response)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("models" if server.ollama else "data"), list):
        return UpstreamProbe(server=server, answered=False, status_code=200,
                             problem=f"answers, but not with a model list, at {server.url}",
                             advice=("" if server.ollama else "this may be a web page, not the API: ")
                             + _path_advice(server))
    names = tuple(m["id"] for m in listed_models(body, ollama=server.ollama))
    found = UpstreamProbe(server=server, answered=True, status_code=200, models=names)
    if not names and server.ollama:
        return replace(found, problem="has no models",
                       advice="`ollama pull <name>` one (`ollama list` names those it has)")
    if model and names and not _lists(names, model):
        refuses = server.ollama or _port(server.url) == OLLAMA_PORT
        return replace(found, problem=f"does not list the model `{model}` it is asked for",
                       advice="give one it lists as the model to ask for" + (
                           f", or `ollama pull {model}`: Ollama refuses a model it does not have" if refuses
                           else " (a server with one model loaded, such as llama.cpp's, may answer anyway)"))
    return found


def probe_all(settings: FallbackSettings, *, deadline_s: float = PROBE_DEADLINE_S) -> list[UpstreamProbe]:
    """``probe`` the primary and each remote (``upstreams``) at once.

    Args:
        settings: where the servers are, and the model the primary is asked for.
        deadline_s: the longest this takes; a server that has not answered by then is
            reported as silent (its request ends later, in the background).

    Returns:
        One probe a server, the primary first.
    """
    def ask(server: Upstream) -> UpstreamProbe:
        model = settings.primary_model if server.source == "primary" else ""
        return probe(server, model=model, timeout_s=min(MODELS_TIMEOUT_S, deadline_s))

    return at_once(ask, upstreams(settings), deadline_s=deadline_s, late=lambda server: _silent(
        server, f"no answer within {deadline_s:g} s", _TIMEOUT_ADVICE["answer"]))


def _silent(server: Upstream, what: str, advice: str) -> UpstreamProbe:
    """A probe that got no HTTP answer."""
    return UpstreamProbe(server=server, answered=False, problem=f"does not answer: {what} at {server.url}",
                         advice=advice)


def _unreachable(server: Upstream, exc: Exception) -> UpstreamProbe:
    """Why a request got no HTTP answer at all, from the socket error under httpx's."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, (ConnectionRefusedError, socket.gaierror)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConnectionRefusedError):
        return _silent(server, "connection refused", f"is it running, on this port? {_USUAL_PORTS}")
    host = urlsplit(server.url).hostname
    if isinstance(cause, socket.gaierror):
        return _silent(server, f"no host named {host!r} is known",
                       "check the host name, or give the server's IP address")
    log.info("probe: %s does not answer: %r", server.url, exc)
    return _silent(server, str(exc) or type(exc).__name__,
                   "check the address: http:// or https:// as the server speaks, its host and its port")


def _refused(server: Upstream, response: Any) -> UpstreamProbe:
    """What an answer other than 200 to the model list means."""
    import httpx

    code = response.status_code
    reason, said = httpx.codes.get_reason_phrase(code) or "error", server_said(response.content)
    problem = f"answers HTTP {code} ({reason})"
    if said and said.lower() != reason.lower():  # FastAPI's 404 says "Not Found" again
        problem += f": {said}"
    if code == LOOP_STATUS:
        problem = f"is this zwaif-fallback serve itself ({server.url})"
        advice = f"each chat would come back here: set the server the host used before ({USUAL_MAIN_APIS})"
    elif code in (401, 403) and server.source == "primary":
        advice = ("the API key is wrong or missing: type the key the server was started with "
                  "(text-generation-webui's --api-key, TabbyAPI's api_tokens.yml)")
    elif code in (401, 403):
        advice = ("it needs an API key, and serve sends one only to the main API: make it the main API, "
                  "or start it without a key")
    elif code in (404, 405):
        advice = _path_advice(server)
    elif code >= 500:
        advice = "the server itself failed: its own window or log says why (often no model is loaded)"
    else:
        advice = "check the URL; the server's own log may say more"
    return UpstreamProbe(server=server, answered=False, status_code=code, problem=problem, advice=advice)


def _path_advice(server: Upstream) -> str:
    """Where the model list should have been, for a URL that has none."""
    path = urlsplit(server.url).path.rstrip("/")
    if server.ollama:
        return ("it has no /api/tags, so it is not Ollama's own API: for an OpenAI-compatible server, "
                "choose OpenAI-compatible and give its /v1 URL")
    if _port(server.url) == OLLAMA_PORT and not path.endswith("/v1"):
        return "this is Ollama's port: choose Ollama's own API, or add /v1 for its OpenAI-compatible one"
    if not path.endswith("/v1"):
        return (f"the URL's path is likely wrong: OpenAI-compatible servers answer under /v1 "
                f"({server.url.rstrip('/')}/v1?)")
    return (f"the port may be another program's: {_USUAL_PORTS}; text-generation-webui's page (7860) "
            "is not its API")


def _port(url: str) -> int | None:
    try:
        return urlsplit(url).port
    except ValueError:  # not a number: the request itself fails first
        return None


def _lists(names: tuple[str, ...], model: str) -> bool:
    """Whether ``model`` is among ``names``, where Ollama takes ``x`` for ``x:latest``."""
    bare = model.removesuffix(":latest")
    return any(name.removesuffix(":latest") == bare for name in names)
