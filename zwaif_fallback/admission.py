"""What ``serve`` lets in: who may ask, and what a request body may be.

A server on an address other than loopback needs an API key (``check_bind``), and each
request to the API then carries it as a Bearer token (``refusal``). A body is JSON, an
object, and at most ``MAX_BODY_BYTES`` (``read_body``). A request this process sent itself
(``looped``: a main API URL pointing back at serve) is refused. What is refused gets
OpenAI's error object with its status: 401, 413, 400 or 508.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .completions import error_object
from .errors import InvalidSettings
from .net import LOOP_STATUS, instance_id
from .routing import USUAL_MAIN_APIS

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["API_KEY_ENV", "MAX_BODY_BYTES", "check_bind", "loop_refusal", "looped", "read_body",
           "read_raw_body", "refusal"]

API_KEY_ENV = "FALLBACK_API_KEY"
#: The largest request body taken (413 above it): room for inline base64 images as OpenAI
#: takes them (up to 20 MB an image: 27 MB as base64) beside 2 M characters of text.
MAX_BODY_BYTES = 32 * 1024 * 1024


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse a non-loopback address without an API key.

    Raises:
        InvalidSettings: anyone on the network could use the models and read the answers.
    """
    from .net import is_loopback

    if not api_key and not is_loopback(host):
        raise InvalidSettings(
            f"refusing to serve the API on {host!r} without a key: anyone on the network could "
            f"use it. Set {API_KEY_ENV} (clients then send it as a Bearer token), or listen on "
            "127.0.0.1")


def refusal(request: Request, api_key: str | None) -> Response | None:
    """The 401 response for a request without ``api_key`` as its Bearer token; None when
    it has it, or when no key is needed."""
    if api_key is None:
        return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), api_key.encode()):
        return None
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {
        "message": "a valid API key is required: send 'Authorization: Bearer <key>' with "
                   f"the key this server was started with ({API_KEY_ENV})",
        "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}},
        status_code=401)


def looped(came_through: Sequence[str]) -> bool:
    """Whether a request that came through these serve processes (``net.instance_ids``) came
    from this process itself: a main API URL or a remote that points back at serve, here or
    through other serves (``net.own_headers``)."""
    return instance_id() in came_through


def loop_refusal() -> Response:
    """The 508 response for a request ``looped`` finds."""
    return _error_response(InvalidSettings(
        "this request came from this serve itself: the main API URL (primary_url) or a remote "
        "(remote_urls) points back at serve, directly or through another serve, so each chat "
        f"would go round again and again. Set it to the server your host used before "
        f"({USUAL_MAIN_APIS})"), LOOP_STATUS)


async def read_body(request: Request) -> dict[str, Any] | Response:
    """The JSON body, at most MAX_BODY_BYTES; otherwise the error response (413 or 400)."""
    read = await _read(request)
    return read if not isinstance(read, tuple) else read[1]


async def read_raw_body(request: Request) -> bytes | Response:
    """The body's bytes as they came, once checked as ``read_body`` checks it: for a request
    passed on as it was sent."""
    read = await _read(request)
    return read if not isinstance(read, tuple) else read[0]


async def _read(request: Request) -> tuple[bytes, dict[str, Any]] | Response:
    size = 0
    parts = []
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            return _error_response(InvalidSettings(
                f"the request body is larger than {MAX_BODY_BYTES // 2**20} MiB; send large images "
                "by URL, or smaller"), 413)
        parts.append(part)
    raw = b"".join(parts)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _error_response(InvalidSettings(f"the request body is not JSON: {exc}"), 400)
    if not isinstance(body, dict):
        return _error_response(InvalidSettings(
            f"the request body must be a JSON object, not {type(body).__name__}"), 400)
    return raw, body


def _error_response(exc: InvalidSettings, status: int) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse(error_object(exc), status_code=status)
