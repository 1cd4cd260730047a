"""The Hub's own protocol, spoken by ``huggingface_hub``: a file's metadata and a repo's listing.

What a file is (its size, its sha256, the commit, the CDN address its bytes come from) is
``huggingface_hub.get_hf_file_metadata``'s HEAD request; what a repo holds is
``HfApi.model_info``. Both are the calls ``hf_hub_download`` itself makes, so whatever the
Hub changes in its headers, redirects or error codes, the client that follows the change
reads it here too. hub.py keeps the byte transfers (the header's range reads, the file's
body): plain HTTP GETs of the address ``huggingface_hub`` resolved.

huggingface_hub 0.24 to 2.x speak it; it is imported on first use. Its errors, and those
of the HTTP client under it (requests before 1.0, httpx after), leave as one line each:
HubFileNotFound, HubAccessDenied, HubOffline or HubUnavailable.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from .errors import HubAccessDenied, HubFileNotFound, HubOffline, HubUnavailable
from .hub_http import connect_problem
from .hub_models import RemoteFile, RepoListing, license_of

__all__ = ["file_metadata", "hub_errors", "repo_listing"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
LIBRARY = "zwaif-fallback"  # named in huggingface_hub's User-Agent, as libraries built on it are


def file_metadata(url: str, *, token: str | None, timeout_s: float, what: str) -> RemoteFile:
    """What the Hub says of the file at ``url`` before sending any of it.

    Args:
        url: its resolve URL (or any URL: a plain server answers a HEAD too).
        token: sent to ``url``'s host; None: no token (never the one on disk: the caller
            decides which hosts get it).

    Raises:
        HubUnavailable, HubFileNotFound, HubAccessDenied: as ``hub_errors``.
    """
    from huggingface_hub import get_hf_file_metadata

    with hub_errors(url, what, timeout_s):
        meta = get_hf_file_metadata(url, token=token or False, timeout=timeout_s,
                                    library_name=LIBRARY, library_version=_version())
    etag = (meta.etag or "").lower()
    return RemoteFile(url=meta.location or url, size_bytes=meta.size, etag=meta.etag or "",
                      sha256=etag if _SHA256.fullmatch(etag) else None, commit=meta.commit_hash)


def repo_listing(endpoint: str, repo: str, revision: str, *, token: str | None,
                 timeout_s: float) -> RepoListing:
    """``repo``'s files at ``revision``, its commit and license (``HfApi.model_info``).

    Raises:
        HubUnavailable, HubFileNotFound, HubAccessDenied: as ``hub_errors``.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token or False, library_name=LIBRARY,
                 library_version=_version())
    with hub_errors(f"{endpoint}/api/models/{repo}", f"the repo {repo}", timeout_s):
        info = api.model_info(repo, revision=None if revision == "main" else revision,
                              timeout=timeout_s)
    card = getattr(info, "card_data", None)
    data: dict[str, Any] = {"tags": list(getattr(info, "tags", None) or [])}
    if card is not None and isinstance(getattr(card, "license", None), str):
        data["cardData"] = {"license": card.license}
    files = [s.rfilename for s in getattr(info, "siblings", None) or []
             if isinstance(getattr(s, "rfilename", None), str)]
    sha = getattr(info, "sha", None)
    return RepoListing(repo=repo, revision=revision, files=files,
                       commit=sha if isinstance(sha, str) else None, license=license_of(data))


@contextmanager
def hub_errors(url: str, what: str, timeout_s: float) -> Iterator[None]:
    """huggingface_hub's errors, and its HTTP client's, as one line each in errors.py's terms."""
    from huggingface_hub import utils as hf  # its errors, exported there from 0.24 to 2.x

    try:
        yield
    except hf.OfflineModeIsEnabled:
        raise HubOffline(f"offline: HF_HUB_OFFLINE is set, so {what} was not fetched; unset it "
                         "to reach the Hub") from None
    except hf.GatedRepoError as exc:
        raise _denied(what, url, _status(exc) or 401) from None
    except hf.RepositoryNotFoundError as exc:
        if _status(exc) in (401, 403):  # the Hub says 401 for a private repo it does not show
            raise _denied(what, url, _status(exc)) from None
        raise HubFileNotFound(f"not found: {what} ({_host(url)} has no such repo, or it is private: "
                              "check the repo id, and set HF_TOKEN if it is yours)") from None
    except hf.RevisionNotFoundError:
        raise HubFileNotFound(f"not found: {what} ({_host(url)} has no such revision); check the "
                              "branch, tag or commit") from None
    except hf.HfHubHTTPError as exc:
        raise _http_error(exc, what, url) from None
    except _transport_errors() as exc:
        if "timeout" in type(exc).__name__.lower() or isinstance(exc, TimeoutError):
            raise HubUnavailable(f"timed out: {_host(url)} sent nothing for {what} within "
                                 f"{timeout_s:g} s; the Hub or the network is slow, try again") from None
        raise HubUnavailable(connect_problem(url, exc)) from None


def _http_error(exc: Exception, what: str, url: str) -> Exception:
    code = _status(exc)
    if code == 404 or _is_entry_not_found(exc):
        return HubFileNotFound(f"not found: {what} ({_host(url)} answered 404); check the repo id, "
                               "the revision and the file name")
    if code in (401, 403):
        return _denied(what, url, code)
    if code is not None and (code >= 500 or code == 429):
        return HubUnavailable(f"hub down: {_host(url)} answered {code} for {what}; try again later")
    return HubUnavailable(f"hub down: {_host(url)} answered {code or 'an error'} for {what}")


def _denied(what: str, url: str, code: int | None) -> HubAccessDenied:
    return HubAccessDenied(f"access denied: {what} ({_host(url)} answered {code}); the repo is gated "
                           "or private: accept its license on its Hub page and set HF_TOKEN "
                           "(or run: hf auth login)")


def _is_entry_not_found(exc: Exception) -> bool:
    from huggingface_hub import utils as hf  # its errors, exported there from 0.24 to 2.x

    return isinstance(exc, hf.EntryNotFoundError)


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _version() -> str:
    from . import __version__

    return __version__


def _host(url: str) -> str:
    return urlsplit(url).netloc


def _transport_errors() -> tuple[type[Exception], ...]:
    """The connection and timeout errors of whichever HTTP client huggingface_hub uses:
    requests (before 1.0), httpx, or its successor httpx2 (2.x); OSError covers the rest."""
    kinds: list[type[Exception]] = [OSError]
    for module, name in (("requests", "RequestException"), ("httpx", "TransportError"),
                         ("httpx2", "TransportError")):
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            kinds.append(kind)
    return tuple(kinds)
