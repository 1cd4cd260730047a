"""The kinds of value ``FallbackSettings``' fields take, and what a field allows in words.

Lists come from the environment as comma-separated text or as JSON; a URL must be
http:// or https:// and loses its trailing slash; a web page's origin is a scheme, a host
and a port, nothing more; an empty path is refused rather than read as the current folder.
``describe_range`` and ``field_problem`` say what a field allows, for the messages
``InvalidSettings`` carries and for the CLI's help.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BeforeValidator
from pydantic.fields import FieldInfo
from pydantic_settings import NoDecode

__all__ = ["Folder", "NameList", "OriginList", "SomePath", "Url", "UrlList", "bounds", "describe_range",
           "field_problem", "unquoted"]

#: The port a browser leaves out of an origin, by scheme.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string (how lists come from the environment)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a valid JSON list: {exc.msg}") from None
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


#: What a server's base URL looks like, for the messages that refuse one.
_URL_EXAMPLE = "e.g. http://127.0.0.1:5000/v1"


def _check_url(value: str) -> str:
    """A server's base URL, without the slash at its end. What would only fail at the first
    chat, or be refused when the file is read again, is refused now: no host, a space, two
    URLs run together, an endpoint instead of the base."""
    from urllib.parse import urlsplit

    value = value.strip()
    if not value:
        return value
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https:// ({_URL_EXAMPLE})")
    if value.count("://") > 1:
        raise ValueError("holds more than one URL: give one, or for a list separate them with commas")
    if any(c.isspace() for c in value):
        raise ValueError(f"must not hold spaces ({_URL_EXAMPLE})")
    parts = urlsplit(value)
    host_port = parts.netloc.rpartition("@")[2]  # not the user:password of a proxy's login
    if host_port.count(":") > 1 and not host_port.startswith("["):
        raise ValueError("has an IPv6 address without brackets (write it in [ ], e.g. "
                         "http://[::1]:5000/v1), or more than one port")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number from 0 to 65535
    except ValueError:
        raise ValueError(f"has a port that is not a number from 0 to 65535 ({_URL_EXAMPLE})") from None
    if not parts.hostname:
        raise ValueError(f"names no server ({_URL_EXAMPLE})")
    if parts.path.rstrip("/").endswith(("/chat/completions", "/v1/completions")):
        raise ValueError("is an endpoint, not the server's base URL: leave out what follows /v1 "
                         f"({_URL_EXAMPLE})")
    return value.rstrip("/")


def _check_urls(values: list[str]) -> list[str]:
    return [_check_url(v) for v in values]


def _check_origins(values: list[str]) -> list[str]:
    return [_check_origin(v) for v in values]


def _check_origin(value: str) -> str:
    """An origin as a browser sends it (``Origin``): ``scheme://host[:port]`` in lower case,
    an IPv6 address in its short form, a name in its ASCII (punycode) form, without a default
    port; ``*`` (any page) as it is."""
    import ipaddress
    from urllib.parse import urlsplit

    value = value.strip()
    if value == "*":
        return value
    if value.lower() == "null":  # what a page opened from a file sends, and a sandboxed frame
        raise ValueError("'null' would let in any website: it sends null from a sandboxed frame. Serve "
                         "the page from this machine instead (e.g. python -m http.server in its folder, "
                         "then open http://localhost:8000/)")
    example = "e.g. http://localhost:3000 or https://amica.arbius.ai"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an origin ({exc}): {example}") from None
    if not parts.scheme or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{value!r} is not an origin: give a scheme and a host, {example}")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not an origin: give only the scheme, host and port, without "
                         f"a path ({parts.scheme}://{parts.netloc})")
    try:
        host = f"[{ipaddress.IPv6Address(parts.hostname).compressed}]"
    except ValueError:
        try:
            host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{value!r} is not an origin: {parts.hostname!r} is no host name") from None
    shown_port = "" if port is None or port == _DEFAULT_PORTS.get(parts.scheme.lower()) else f":{port}"
    return f"{parts.scheme.lower()}://{host}{shown_port}"


def unquoted(value: Any) -> Any:
    """A path as a person pastes it: without the spaces around it, and without the double
    quotes Windows Explorer's "Copy as path" puts around it (a path cannot hold them there)."""
    if isinstance(value, str):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].strip()
    return value


def _some_path(value: Any) -> Any:
    """A path pasted as it comes (``unquoted``); an empty one would become "." (the current
    folder): refuse it instead."""
    value = unquoted(value)
    if isinstance(value, str) and not value:
        raise ValueError("must not be empty: give a folder or file path")
    return value


Url = Annotated[str, AfterValidator(_check_url)]
UrlList = Annotated[list[str], NoDecode, BeforeValidator(_split_list), AfterValidator(_check_urls)]
NameList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]
OriginList = Annotated[list[str], NoDecode, BeforeValidator(_split_list), AfterValidator(_check_origins)]
def _expanded(path: Path) -> Path:
    """``~`` expanded: Windows' shells leave it to the program, and a folder named "~" was made."""
    try:
        return path.expanduser()
    except RuntimeError as exc:  # ~name of no user, or no home at all (a service account)
        raise ValueError(f"{path}: {exc}; give the whole path") from None


SomePath = Annotated[Path, BeforeValidator(_some_path), AfterValidator(_expanded)]
Folder = Annotated[str, BeforeValidator(unquoted)]


def bounds(info: FieldInfo) -> tuple[float, float] | None:
    """A numeric field's range (``ge`` and ``le``), or None when it has none."""
    low = high = None
    for item in info.metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return (low, high) if low is not None and high is not None else None


def describe_range(info: FieldInfo) -> str:
    """What a field allows, in words: ``"5 to 120"`` for a bounded number (``"a whole number
    from 1 to 10"`` for an integer), ``"models_dir or hf_cache"`` for a choice, ``"true or
    false"`` for a flag, else the kind of value."""
    limits = bounds(info)
    if limits is not None:
        # an Ollama user writes keep_alive=5m: the unit says what is meant
        unit = " seconds" if "seconds" in (info.description or "") else ""
        bounds_text = f"{limits[0]:g} to {limits[1]:g}{unit}"
        return f"a whole number from {bounds_text}" if info.annotation is int else bounds_text
    if get_origin(info.annotation) is Literal:
        return " or ".join(str(choice) for choice in get_args(info.annotation))
    if info.annotation is bool:
        return "true or false"
    if info.annotation is Path:
        return "a folder or file path"
    validators = {getattr(item, "func", None) for item in info.metadata}
    if _check_url in validators:
        return "an http:// or https:// URL, or empty"
    if _check_urls in validators:
        return "a list of http:// or https:// URLs, comma-separated or as JSON"
    if _check_origins in validators:
        return "a list of origins (scheme://host:port) or *, comma-separated or as JSON"
    if _split_list in validators:
        return "a list, comma-separated or as JSON"
    return "a list of values" if "list" in str(info.annotation) else "text"


def field_problem(name: str, info: FieldInfo, value: Any, reason: str) -> str:
    """The message for a refused ``value`` of the field ``name``: why, and what it allows."""
    shown = repr(value) if not isinstance(value, str) or len(value) < 80 else repr(value[:77] + "...")
    reason = reason.removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
    return f"{name}={shown} is not valid ({reason}); allowed: {describe_range(info)}"
