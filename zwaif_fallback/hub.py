"""GGUF files on the Hugging Face Hub, read header-only before anything is downloaded.

A GGUF's header (metadata, vocabulary, tensor table) is its first few MiB. The reader
for local files (``gguf_header.read_gguf_header_from``) walks it through ``hub_http.RangedFile``,
whose reads are HTTP range requests: the first 256 KiB, then what the reader expects to
need, up to 2 MiB a request. A 150k-token vocabulary costs a handful of requests, the
arrays it steps over (token types, scores) none, and no weights are fetched. The result
is the ``ModelInfo`` a local file gives (``model_info.gguf_model_info``), which the fit
estimator plans like a local one. ``read_all`` walks a vocabulary once for the files
that share it (hub_headers.py): the others jump over theirs, checked to land exactly.

Files live at ``{HF_ENDPOINT or https://huggingface.co}/{repo}/resolve/{revision}/{file}``.
With ``HF_HUB_OFFLINE`` set, nothing is fetched. The token is huggingface_hub's
(``HF_TOKEN``, or the file ``hf auth login`` writes), sent to the endpoint's host only.
Every failure is one line, raised as one of errors.py's Hub errors: HubUnavailable (with
HubOffline), HubFileNotFound, HubAccessDenied.

httpx is imported on first use, so ``import zwaif_fallback`` stays cheap.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from .errors import (
    FallbackError,
    HubAccessDenied,
    HubFileNotFound,
    HubOffline,
    HubUnavailable,
    InvalidModelFile,
    InvalidSettings,
)
from .gguf_header import GGUFHeader
from .hub_headers import VocabSharing, read_header
from .hub_http import check_status, connect_problem, content_range_size, hub_token, is_true
from .hub_models import (
    HubModel,
    RemoteFile,
    RepoListing,
    choose_ggufs,
    curated,
    parse_spec,
    split_parts,
)
from .locations import SPLIT_RE
from .model_info import ModelInfo, gguf_model_info

if TYPE_CHECKING:
    import httpx

    from .hub_body import Body

__all__ = [
    "DEFAULT_ENDPOINT",
    "Hub",
    "HubAccessDenied",
    "HubFileNotFound",
    "HubModel",
    "HubOffline",
    "HubUnavailable",
    "RemoteFile",
    "curated",
    "parse_spec",
]

DEFAULT_ENDPOINT = "https://huggingface.co"


class Hub:
    """The Hugging Face Hub (or the mirror at HF_ENDPOINT), read header-only. Thread-safe.

    Args:
        endpoint: the Hub's address; None reads HF_ENDPOINT (default https://huggingface.co).
        token: the token to send to the endpoint; None looks it up as huggingface_hub does.
        offline: fetch nothing; None reads HF_HUB_OFFLINE.
        timeout_s: how long one request may wait for the connection or for data.
        workers: how many headers are read at once.

    Raises:
        InvalidSettings: the endpoint is not an http(s) URL.
    """

    def __init__(self, *, endpoint: str | None = None, token: str | None = None,
                 offline: bool | None = None, timeout_s: float = 10.0, workers: int = 8) -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        if not self.endpoint.startswith(("https://", "http://")):
            raise InvalidSettings(f"HF_ENDPOINT={self.endpoint!r} is not an http(s) URL; "
                                  f"unset it to use {DEFAULT_ENDPOINT}")
        self.offline = is_true(os.environ.get("HF_HUB_OFFLINE")) if offline is None else offline
        self.timeout_s = timeout_s
        self.workers = max(workers, 1)
        self._token = token
        self._token_known = token is not None
        self._client_instance: httpx.Client | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._client_instance is not None:
                self._client_instance.close()
                self._client_instance = None

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, model: HubModel) -> str:
        """Where ``model``'s file is: its own URL, or the endpoint's resolve URL."""
        if model.url is not None:
            return model.url
        return (f"{self.endpoint}/{model.repo}/resolve/{quote(model.revision, safe='')}/"
                f"{quote(model.file)}")

    # -- which files -------------------------------------------------------------------

    def resolve(self, specs: Sequence[str]) -> list[HubModel]:
        """The files that what a person typed names (``parse_spec``); a bare repo id stands
        for its files in the common quantizations (``repo_files``).

        Raises:
            InvalidSettings: a spec is none of the accepted forms.
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: listing a repo failed.
        """
        models = [parse_spec(spec) for spec in specs]
        found: list[HubModel] = []
        for model in models:
            found.extend(self.repo_files(model.repo, revision=model.revision) if not model.file
                         else [model])
        return found

    def repo_files(self, repo: str, *, revision: str = "main") -> list[HubModel]:
        """``repo``'s GGUF files in the common quantizations (``hub_models.choose_ggufs``).

        Raises:
            HubOffline, HubUnavailable, HubAccessDenied.
            HubFileNotFound: no such repo, or it holds no GGUF file.
        """
        chosen = choose_ggufs(self.list_repo(repo, revision=revision))
        if not chosen:
            raise HubFileNotFound(f"not found: the repo {repo} holds no GGUF files; pick a repo "
                                  "whose name ends in -GGUF, or give REPO/FILE.gguf")
        return chosen

    def list_repo(self, repo: str, *, revision: str = "main") -> RepoListing:
        """``repo``'s files at ``revision``, its commit and license (the Hub's model API).

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied.
        """
        self._check_online()
        from .hub_api import repo_listing

        return repo_listing(self.endpoint, repo, revision, token=self._token_for(self.endpoint),
                            timeout_s=self.timeout_s)

    def read_json(self, model: HubModel) -> Any:
        """The JSON in ``model``'s file (a small one: an index, a config).

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied.
        """
        self._check_online()
        return self._json(self.url(model), what=model.label)

    # -- headers ----------------------------------------------------------------------

    def read(self, model: HubModel, *, sharing: VocabSharing | None = None) -> ModelInfo:
        """``model``'s ``ModelInfo`` from its header alone (every part's, for a split file).

        Args:
            sharing: as for ``headers``.

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: it could not be fetched.
            InvalidModelFile: it is not a GGUF language model.
        """
        url = self.url(model)
        headers = self.headers(model, sharing=sharing)
        name = PurePosixPath(urlsplit(url).path).name
        split = SPLIT_RE.match(name)
        base = ModelInfo(name=split.group("stem") if split else name.removesuffix(".gguf"),
                         path=url, format="gguf", source="hub",
                         size_bytes=sum(h.file_size for h in headers))
        try:
            return gguf_model_info(base, headers)
        except InvalidModelFile as exc:
            raise InvalidModelFile(url, exc.reason) from None

    def headers(self, model: HubModel, *, sharing: VocabSharing | None = None) -> list[GGUFHeader]:
        """The GGUF headers of ``model``'s file, one a part for a split file, read by ranges.

        Args:
            sharing: files with the same vocabulary read through the same ``VocabSharing``
                walk it once: a file that jumps over its own with another's run reads the
                rest from its own bytes, checked to land exactly, and gets that file's
                ``ArrayInfo`` for the arrays after its vocabulary. None: read it alone.

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: it could not be fetched.
            InvalidModelFile: it is not a GGUF file.
        """
        self._check_online()
        return [self._header(self.url(part), part, sharing) for part in split_parts(model)]

    def read_all(self, models: Sequence[HubModel], *, sharing: VocabSharing | None = None
                 ) -> list[ModelInfo | FallbackError]:
        """``read`` for each model, ``workers`` at a time: its ``ModelInfo``, or the error
        that says why not, in the order given. Files with the same vocabulary walk it once
        (``headers``); a file that waits for another's walk holds its worker meanwhile.

        Args:
            sharing: pass one to see which files led, followed or walked after all; None:
                a new one.

        Raises:
            HubOffline: before anything is fetched.
        """
        self._check_online()
        if not models:
            return []
        self._client()  # one client for every thread, made before they start
        shared = sharing if sharing is not None else VocabSharing()
        with ThreadPoolExecutor(max_workers=min(self.workers, len(models)),
                                thread_name_prefix="zwaif-hub") as pool:
            return list(pool.map(lambda model: self._read_or_error(model, shared), models))

    def _read_or_error(self, model: HubModel, sharing: VocabSharing) -> ModelInfo | FallbackError:
        try:
            return self.read(model, sharing=sharing)
        except FallbackError as exc:
            return exc

    def _header(self, url: str, model: HubModel, sharing: VocabSharing | None) -> GGUFHeader:
        return read_header(self._get_range, url, what=model.label, path=model.file or url,
                           sharing=sharing)

    # -- HTTP ------------------------------------------------------------------------

    def _check_online(self) -> None:
        if self.offline:
            raise HubOffline(f"offline: HF_HUB_OFFLINE is set, so nothing was fetched from "
                             f"{self.endpoint}; unset it to read the models' headers")

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._client_instance is None:
                import httpx

                from .hub_body import ssl_context

                self._client_instance = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s), follow_redirects=True, verify=ssl_context(),
                    limits=httpx.Limits(max_connections=self.workers * 2), headers=self._headers())
            return self._client_instance

    @staticmethod
    def _headers() -> dict[str, str]:
        from . import __version__

        # identity: byte ranges of the file, not of a gzip of it
        return {"User-Agent": f"zwaif-fallback/{__version__}", "Accept-Encoding": "identity"}

    def _auth(self, url: str) -> dict[str, str]:
        """The token, for the endpoint's host only (httpx drops it on a redirect elsewhere)."""
        token = self._token_for(url)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _token_for(self, url: str) -> str | None:
        """The token to send to ``url``: huggingface_hub's, and only to the endpoint's host."""
        if urlsplit(url).netloc != urlsplit(self.endpoint).netloc:
            return None
        with self._lock:
            if not self._token_known:
                self._token, self._token_known = hub_token(), True
            return self._token

    def _json(self, url: str, *, what: str) -> Any:
        with self._request(url, {}, what=what) as response:
            body = response.read()
        try:
            return json.loads(body)
        except ValueError:
            raise HubUnavailable(f"hub down: {url} did not answer with the Hub's JSON; "
                                 "check HF_ENDPOINT") from None

    def _get_range(self, url: str, start: int, stop: int, *, what: str) -> tuple[bytes, int, str, str]:
        """Bytes ``start`` to ``stop`` of the file at ``url``: (data, the file's size, the URL
        that answered after redirects, its ETag). Never downloads more than was asked for."""
        with self._request(url, {"Range": f"bytes={start}-{stop - 1}"}, what=what) as response:
            host = response.url.netloc.decode("ascii", "replace")
            if response.status_code == 206:
                size = content_range_size(response.headers.get("content-range", ""))
            else:  # 200: the server ignores Range; fine only for a file no bigger than asked
                length = response.headers.get("content-length", "")
                size = int(length) if length.isdigit() else -1
                if start != 0 or not 0 <= size <= stop - start:
                    raise HubUnavailable(f"hub down: {host} ignores range requests for {what}, so "
                                         "its header cannot be read without downloading it all")
            if size < 0:
                raise HubUnavailable(f"hub down: {host} answered {what} without the file's size")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) >= stop - start:
                    break
            return bytes(data[:stop - start]), size, str(response.url), response.headers.get("etag", "")

    def stat(self, model: HubModel) -> RemoteFile:
        """What the server says about ``model``'s file before sending any of it (a HEAD
        request): its size, its sha256 (the Hub's ``X-Linked-Etag`` for a file kept in LFS),
        the commit, and the URL that serves it after redirects (the Hub's CDN). A file on the
        Hub is asked by huggingface_hub (``hub_api.file_metadata``); one at a plain URL, which
        may redirect anywhere, by following its redirects.

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: it could not be asked.
        """
        self._check_online()
        url = self.url(model)
        if model.url is None:
            from .hub_api import file_metadata

            return file_metadata(url, token=self._token_for(url), timeout_s=self.timeout_s,
                                 what=model.label)
        with self._request(url, {}, what=model.label, method="HEAD") as response:
            size = response.headers.get("content-length", "")
            return RemoteFile(url=str(response.url), size_bytes=int(size) if size.isdigit() else None,
                              sha256=None, etag=response.headers.get("etag", "").strip('"'), commit=None)

    @contextmanager
    def body(self, url: str, *, start: int = 0, what: str) -> Iterator[Body]:
        """The body of a GET of the file at ``url`` from byte ``start`` on (a range request
        when ``start`` is not 0), its status checked; a server that ignores the range
        answers 200. A plain answer is read by ``hub_body.RawBody``, any other by httpx.

        Raises:
            HubUnavailable, HubFileNotFound, HubAccessDenied: while connecting or reading.
        """
        from .hub_body import HttpxBody, open_raw_body, ssl_context, uses_proxy

        headers = {"Range": f"bytes={start}-"} if start else {}
        if not uses_proxy(url):
            raw = open_raw_body(url, self._headers() | headers | self._auth(url),
                                timeout_s=self.timeout_s, ssl_context=ssl_context(), what=what)
            if raw is not None:
                try:
                    yield raw
                finally:
                    raw.close()
                return
        with self._request(url, headers, what=what) as response:
            yield HttpxBody(response)

    @contextmanager
    def _request(self, url: str, headers: dict[str, str], *, what: str,
                 method: str = "GET") -> Iterator[httpx.Response]:
        """A streamed request whose status was checked, closed on leaving the ``with``; httpx's
        errors, raised while connecting or reading, leave as one line each."""
        import httpx

        client = self._client()
        try:
            request = client.build_request(method, url, headers=headers | self._auth(url))
            response = client.send(request, stream=True)
            try:
                check_status(response, what)
                yield response
            finally:
                response.close()
        except httpx.TimeoutException:
            raise HubUnavailable(f"timed out: {urlsplit(url).netloc} sent nothing for {what} within "
                                 f"{self.timeout_s:g} s; the Hub or the network is slow, try again"
                                 ) from None
        except httpx.RequestError as exc:
            raise HubUnavailable(connect_problem(url, exc)) from None
        except httpx.InvalidURL as exc:
            raise InvalidSettings(f"{url!r} is not a valid URL ({exc})") from None
