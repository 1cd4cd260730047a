"""GGUF files on the Hugging Face Hub, read header-only before anything is downloaded.

A GGUF's header (metadata, vocabulary, tensor table) is its first few MiB. The reader
for local files (``gguf_header.read_gguf_header_from``) walks it through ``_RangedFile``,
whose reads are HTTP range requests in blocks that grow with the header: 256 KiB, then
as much as was fetched so far, up to 2 MiB. A 150k-token vocabulary costs a handful of
requests, and no weights are fetched. The result is the ``ModelInfo`` a local file
gives (``model_info.gguf_model_info``), which the fit estimator plans like a local one.

Files live at ``{HF_ENDPOINT or https://huggingface.co}/{repo}/resolve/{revision}/{file}``.
With ``HF_HUB_OFFLINE`` set, nothing is fetched. The token is huggingface_hub's
(``HF_TOKEN``, or the file ``hf auth login`` writes), sent to the endpoint's host only.
Every failure is one line, raised as one of errors.py's Hub errors: HubUnavailable (with
HubOffline), HubFileNotFound, HubAccessDenied.

httpx is imported on first use, so ``import zwaif_fallback`` stays cheap.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ._model import Model
from .errors import (
    FallbackError,
    HubAccessDenied,
    HubFileNotFound,
    HubOffline,
    HubUnavailable,
    InvalidModelFile,
    InvalidSettings,
)
from .gguf_header import GGUFHeader, read_gguf_header_from
from .locations import SPLIT_RE
from .model_info import ModelInfo, gguf_model_info

if TYPE_CHECKING:
    import httpx

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

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
FIRST_BLOCK = 256 * 1024
MAX_BLOCK = 2 * 1024 * 1024
#: the quantizations a bare repo id stands for, when the repo has them
COMMON_QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0")
MAX_REPO_FILES = 12
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class HubModel(Model):
    """One GGUF file on the Hub, or at a plain URL, with what a list says about it.

    ``file`` is empty for a bare repo id (``Hub.resolve`` lists its files). For a split
    model it names the first part; the other parts are read with it.
    """

    repo: str  # "" for a URL outside the Hub's layout
    file: str
    revision: str = "main"
    url: str | None = None  # set when the file is not at the endpoint's resolve URL
    params: int | None = None  # the parameter count the list gives
    license: str | None = None
    quantization: str | None = None

    @property
    def label(self) -> str:
        """How a person names it: ``repo/file``, or the URL."""
        if self.url is not None and not self.repo:
            return self.url
        return f"{self.repo}/{self.file}" if self.file else self.repo


class RemoteFile(Model):
    """A file as the server describes it before sending it (``Hub.stat``)."""

    url: str  # where its bytes are, after the Hub's redirect
    size_bytes: int | None
    sha256: str | None  # lower-case hex; None when the server gives no sha256 (not an LFS file)
    etag: str
    commit: str | None  # the Hub's X-Repo-Commit


def curated() -> list[HubModel]:
    """The curated candidates: well-known instruct GGUFs from 0.5B to 14B
    (``zwaif_fallback/data/recommended.json``)."""
    text = resources.files("zwaif_fallback").joinpath("data/recommended.json").read_text(encoding="utf-8")
    data = json.loads(text)
    revision = str(data.get("revision", "main"))
    return [HubModel(revision=revision, **entry) for entry in data["models"]]


def parse_spec(text: str) -> HubModel:
    """What a person typed: ``REPO/FILE.gguf``, a repo id ``OWNER/NAME``, or an http(s) URL
    of a .gguf file (a Hub page's ``/blob/`` or ``/resolve/`` link, or any server's).

    Raises:
        InvalidSettings: none of these.
    """
    text = text.strip()
    if text.startswith(("https://", "http://")):
        return _parse_url(text)
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.lower().endswith(".gguf"):
        return HubModel(repo=text, file="")
    if len(parts) >= 3 and all(parts) and text.lower().endswith(".gguf"):
        return HubModel(repo="/".join(parts[:2]), file="/".join(parts[2:]))
    raise InvalidSettings(
        f"{text!r} is not a model on the Hub: give REPO/FILE.gguf (e.g. Qwen/Qwen2.5-0.5B-"
        "Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf), a repo id, or the URL of a .gguf file")


def _parse_url(text: str) -> HubModel:
    parts = urlsplit(text)
    segments = parts.path.strip("/").split("/")
    if not segments[-1].lower().endswith(".gguf"):
        raise InvalidSettings(f"{text!r} is not the URL of a .gguf file")
    if len(segments) >= 5 and segments[2] in ("resolve", "blob"):  # a Hub page: /blob/ shows HTML
        repo, revision, file = "/".join(segments[:2]), segments[3], "/".join(segments[4:])
        url = f"{parts.scheme}://{parts.netloc}/{repo}/resolve/{revision}/{file}"
        return HubModel(repo=repo, file=file, revision=revision, url=url)
    return HubModel(repo="", file=segments[-1], url=text)


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
        self.offline = _is_true(os.environ.get("HF_HUB_OFFLINE")) if offline is None else offline
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
        """``repo``'s GGUF files in the common quantizations (Q4_K_M, Q5_K_M, Q8_0), or, when it
        has none of those, its first GGUF files; vision projectors and later split parts left out.

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied.
        """
        self._check_online()
        url = f"{self.endpoint}/api/models/{repo}"
        if revision != "main":
            url += f"/revision/{quote(revision, safe='')}"
        data = self._json(url, what=f"the repo {repo}")
        siblings = data.get("siblings") if isinstance(data, dict) else None
        names = [s["rfilename"] for s in siblings or [] if isinstance(s, dict)
                 and isinstance(s.get("rfilename"), str)]
        ggufs = [n for n in names if n.lower().endswith(".gguf") and "mmproj" not in n.lower()
                 and _split_part(n) in (None, 1)]
        if not ggufs:
            raise HubFileNotFound(f"not found: the repo {repo} holds no GGUF files; pick a repo "
                                  "whose name ends in -GGUF, or give REPO/FILE.gguf")
        chosen: list[tuple[str, str | None]] = [
            (n, q) for n in ggufs for q in COMMON_QUANTS if q in n.upper()]
        chosen = chosen or [(n, None) for n in ggufs[:MAX_REPO_FILES]]
        license_id = _license(data)
        return [HubModel(repo=repo, file=n, revision=revision, license=license_id, quantization=q)
                for n, q in chosen]

    # -- headers ----------------------------------------------------------------------

    def read(self, model: HubModel) -> ModelInfo:
        """``model``'s ``ModelInfo`` from its header alone (every part's, for a split file).

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: it could not be fetched.
            InvalidModelFile: it is not a GGUF language model.
        """
        url = self.url(model)
        headers = self.headers(model)
        name = PurePosixPath(urlsplit(url).path).name
        split = SPLIT_RE.match(name)
        base = ModelInfo(name=split.group("stem") if split else name.removesuffix(".gguf"),
                         path=url, format="gguf", source="hub",
                         size_bytes=sum(h.file_size for h in headers))
        try:
            return gguf_model_info(base, headers)
        except InvalidModelFile as exc:
            raise InvalidModelFile(url, exc.reason) from None

    def headers(self, model: HubModel) -> list[GGUFHeader]:
        """The GGUF headers of ``model``'s file, one a part for a split file, read by ranges.

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: it could not be fetched.
            InvalidModelFile: it is not a GGUF file.
        """
        self._check_online()
        return [self._header(url, model) for url in _part_urls(self.url(model))]

    def read_all(self, models: Sequence[HubModel]) -> list[ModelInfo | FallbackError]:
        """``read`` for each model, ``workers`` at a time: its ``ModelInfo``, or the error
        that says why not, in the order given.

        Raises:
            HubOffline: before anything is fetched.
        """
        self._check_online()
        if not models:
            return []
        self._client()  # one client for every thread, made before they start
        with ThreadPoolExecutor(max_workers=min(self.workers, len(models)),
                                thread_name_prefix="zwaif-hub") as pool:
            return list(pool.map(self._read_or_error, models))

    def _read_or_error(self, model: HubModel) -> ModelInfo | FallbackError:
        try:
            return self.read(model)
        except FallbackError as exc:
            return exc

    def _header(self, url: str, model: HubModel) -> GGUFHeader:
        remote = _RangedFile(self, url, model.label)
        try:
            return read_gguf_header_from(remote, size=remote.size, path=model.file or url)
        except InvalidModelFile as exc:
            raise InvalidModelFile(url, exc.reason) from None

    # -- HTTP ------------------------------------------------------------------------

    def _check_online(self) -> None:
        if self.offline:
            raise HubOffline(f"offline: HF_HUB_OFFLINE is set, so nothing was fetched from "
                             f"{self.endpoint}; unset it to read the models' headers")

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._client_instance is None:
                import httpx

                from . import __version__

                self._client_instance = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s), follow_redirects=True,
                    limits=httpx.Limits(max_connections=self.workers * 2),
                    headers={"User-Agent": f"zwaif-fallback/{__version__}",
                             "Accept-Encoding": "identity"})  # byte ranges of the file, not of a gzip
            return self._client_instance

    def _auth(self, url: str) -> dict[str, str]:
        """The token, for the endpoint's host only (httpx drops it on a redirect elsewhere)."""
        if urlsplit(url).netloc != urlsplit(self.endpoint).netloc:
            return {}
        with self._lock:
            if not self._token_known:
                self._token, self._token_known = _hub_token(), True
            token = self._token
        return {"Authorization": f"Bearer {token}"} if token else {}

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
                size = _content_range_size(response.headers.get("content-range", ""))
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
        """What the Hub says about ``model``'s file before sending any of it (a HEAD request):
        its size, its sha256 (the Hub's ``X-Linked-Etag`` for a file kept in LFS), the commit,
        and the URL that serves it after redirects (the Hub's CDN).

        Raises:
            HubOffline, HubUnavailable, HubFileNotFound, HubAccessDenied: it could not be asked.
        """
        self._check_online()
        url = self.url(model)
        with self._request(url, {}, what=model.label, method="HEAD") as response:
            first = next((r for r in response.history if "x-linked-size" in r.headers), response)
            size = first.headers.get("x-linked-size") or response.headers.get("content-length", "")
            linked = first.headers.get("x-linked-etag", "").strip('"').removeprefix("W/").strip('"')
            etag = linked or response.headers.get("etag", "").strip('"')
            return RemoteFile(url=str(response.url), size_bytes=int(size) if size.isdigit() else None,
                              sha256=linked.lower() if _SHA256.fullmatch(linked) else None,
                              etag=etag, commit=first.headers.get("x-repo-commit") or None)

    @contextmanager
    def stream(self, url: str, *, start: int = 0, what: str) -> Iterator[httpx.Response]:
        """A GET of the file at ``url`` from byte ``start`` on (a range request when ``start``
        is not 0), its status checked; a server that ignores the range answers 200.

        Raises:
            HubUnavailable, HubFileNotFound, HubAccessDenied: while connecting or reading.
        """
        headers = {"Range": f"bytes={start}-"} if start else {}
        with self._request(url, headers, what=what) as response:
            yield response

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
                _check_status(response, what)
                yield response
            finally:
                response.close()
        except httpx.TimeoutException:
            raise HubUnavailable(f"timed out: {urlsplit(url).netloc} sent nothing for {what} within "
                                 f"{self.timeout_s:g} s; the Hub or the network is slow, try again"
                                 ) from None
        except httpx.RequestError as exc:
            raise HubUnavailable(_connect_problem(url, exc)) from None
        except httpx.InvalidURL as exc:
            raise InvalidSettings(f"{url!r} is not a valid URL ({exc})") from None


def _check_status(response: httpx.Response, what: str) -> None:
    code = response.status_code
    host = response.url.netloc.decode("ascii", "replace")
    if code in (200, 206):
        return
    if code == 404:
        raise HubFileNotFound(f"not found: {what} ({host} answered 404); check the repo id, "
                              "the revision and the file name")
    if code in (401, 403):
        raise HubAccessDenied(f"access denied: {what} ({host} answered {code}); the repo is gated "
                              "or private: accept its license on its Hub page and set HF_TOKEN "
                              "(or run: hf auth login)")
    if code == 416:
        raise InvalidModelFile(str(response.url), "is empty")
    if code >= 500 or code == 429:
        raise HubUnavailable(f"hub down: {host} answered {code} for {what}; try again later")
    raise HubUnavailable(f"hub down: {host} answered {code} for {what}")


def _connect_problem(url: str, exc: Exception) -> str:
    """Which of 'no network' and 'hub down' a failed connection means, in one line."""
    host = urlsplit(url).netloc
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return (f"no network: cannot look up {host} ({cause.strerror or cause}); check the "
                    "connection, or set HF_HUB_OFFLINE=1")
        if isinstance(cause, OSError) and cause.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return f"no network: {host} is unreachable ({cause.strerror}); check the connection"
        if isinstance(cause, ConnectionRefusedError):
            return (f"hub down: nothing answers at {host} (connection refused); try again later, "
                    "or check HF_ENDPOINT")
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    if "name resolution" in text or "not known" in text or "nodename" in text:
        return f"no network: cannot look up {host} ({text}); check the connection"
    if "refused" in text:
        return f"hub down: nothing answers at {host} ({text}); try again later, or check HF_ENDPOINT"
    return f"hub down: the connection to {host} failed ({text}); try again later"


class _RangedFile:
    """A remote file read forward by HTTP range requests: what ``read_gguf_header_from``
    needs of a file (``seek`` and ``read``).

    Reads ahead in blocks: the first is ``FIRST_BLOCK``; each next one is as big as all
    fetched so far (a header that needed that much is most likely a long vocabulary, with
    merges after it), at most ``MAX_BLOCK``: what is fetched past the header is less than
    the header and less than one block. Only the bytes from the last read on are kept.
    Later requests go to the URL that answered the first (a CDN's, after the Hub's
    redirect); a changed ETag between them means the file changed under the reader.
    """

    def __init__(self, hub: Hub, url: str, what: str) -> None:
        self._hub = hub
        self._what = what
        data, self.size, self._url, self._etag = hub._get_range(url, 0, FIRST_BLOCK, what=what)
        self._buf, self._base, self._pos = data, 0, 0
        self.fetched = len(data)

    def seek(self, offset: int, whence: int = 0, /) -> int:
        self._pos = offset if whence == 0 else self._pos + offset if whence == 1 else self.size + offset
        return self._pos

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            raise ValueError("a remote file is read in ranges: give a size")
        pos, stop = self._pos, min(self._pos + size, self.size)
        end = self._base + len(self._buf)
        if not self._base <= pos <= end:  # a jump past the buffer: start afresh there
            self._buf, self._base, end = b"", pos, pos
        if stop > end:
            block = max(min(max(self.fetched, FIRST_BLOCK), MAX_BLOCK), stop - end)
            data, _, _, etag = self._hub._get_range(self._url, end, min(end + block, self.size),
                                                    what=self._what)
            if etag != self._etag:
                raise InvalidModelFile(self._url, "changed on the server while its header was "
                                                  "read (its ETag changed): try again")
            self.fetched += len(data)
            self._buf, self._base = self._buf[pos - self._base:] + data, pos
        self._pos = max(stop, pos)
        return self._buf[pos - self._base:stop - self._base]


def _content_range_size(value: str) -> int:
    """The total size in ``Content-Range: bytes 0-99/1234``, or -1."""
    total = value.rpartition("/")[2].strip()
    return int(total) if total.isdigit() else -1


def _part_urls(url: str) -> list[str]:
    """Every part of a split GGUF (``-00001-of-00003.gguf``) from its first part's URL."""
    head, _, name = url.rpartition("/")
    match = SPLIT_RE.match(name)
    if match is None or int(match.group("index")) != 1:
        return [url]
    count = int(match.group("count"))
    return [f"{head}/{match.group('stem')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def _split_part(name: str) -> int | None:
    match = SPLIT_RE.match(PurePosixPath(name).name)
    return int(match.group("index")) if match else None


def _license(data: Any) -> str | None:
    """The license id from the Hub's model API: its card's, or its ``license:`` tag."""
    if not isinstance(data, dict):
        return None
    card = data.get("cardData")
    if isinstance(card, dict) and isinstance(card.get("license"), str):
        return str(card["license"])
    tags = data.get("tags")
    return next((t.partition(":")[2] for t in tags if isinstance(t, str) and t.startswith("license:")),
                None) if isinstance(tags, list) else None


def _is_true(value: str | None) -> bool:
    """huggingface_hub's reading of a boolean environment variable."""
    return (value or "").upper() in {"1", "ON", "YES", "TRUE"}


def _hub_token() -> str | None:
    """The token huggingface_hub would send (HF_TOKEN, or the file ``hf auth login`` wrote)."""
    get_token: Callable[[], str | None]
    try:
        from huggingface_hub import get_token
    except ImportError:  # not installed: the environment variable is all there is
        return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None
    try:
        return get_token()
    except Exception as exc:  # a broken token file or OIDC setup: read public files without one
        log.warning("no Hugging Face token: %s", exc)
        return None
