"""What the Hub holds, as this package names it: a file (``HubModel``) and what the Hub says
of it before a download (``RemoteFile``), the curated list of instruct GGUFs, and the forms
a person may type (``parse_spec``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from ._model import Model
from .errors import InvalidSettings
from .locations import SPLIT_RE

__all__ = ["COMMON_QUANTS", "HubModel", "RemoteFile", "RepoListing", "choose_ggufs", "curated",
           "license_of", "parse_spec", "split_parts"]

#: the quantizations a bare repo id stands for, when the repo has them
COMMON_QUANTS = ("Q4_K_M", "Q5_K_M", "Q8_0")
MAX_REPO_FILES = 12


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


class RepoListing(Model):
    """What the Hub's model API says of a repo (``Hub.list_repo``)."""

    repo: str
    revision: str
    files: list[str]  # every file's path in the repo
    commit: str | None  # the revision's commit (``sha``)
    license: str | None


def choose_ggufs(listing: RepoListing) -> list[HubModel]:
    """The repo's GGUF files in the common quantizations (Q4_K_M, Q5_K_M, Q8_0), or, when it
    has none of those, its first GGUF files; vision projectors and later split parts left
    out. Empty when it has no GGUF."""
    ggufs = [n for n in listing.files if n.lower().endswith(".gguf") and "mmproj" not in n.lower()
             and _split_part(n) in (None, 1)]
    chosen: list[tuple[str, str | None]] = [
        (n, q) for n in ggufs for q in COMMON_QUANTS if q in n.upper()]
    chosen = chosen or [(n, None) for n in ggufs[:MAX_REPO_FILES]]
    return [HubModel(repo=listing.repo, file=n, revision=listing.revision, license=listing.license,
                     quantization=q) for n, q in chosen]


def split_parts(model: HubModel) -> list[HubModel]:
    """Every part of a split GGUF (``name-00002-of-00003.gguf``) when ``model`` names any of
    them, first part first; else ``[model]``."""
    match = SPLIT_RE.match(PurePosixPath(model.file).name)
    if match is None:
        return [model]
    count = int(match.group("count"))
    names = [f"{match.group('stem')}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    folder = model.file[:len(model.file) - len(PurePosixPath(model.file).name)]
    url_head = model.url.rpartition("/")[0] + "/" if model.url is not None else None
    return [model.model_copy(update={"file": folder + name,
                                     "url": url_head + name if url_head is not None else None})
            for name in names]


def license_of(data: Any) -> str | None:
    """The license id from the Hub's model API: its card's, or its ``license:`` tag."""
    if not isinstance(data, dict):
        return None
    card = data.get("cardData")
    if isinstance(card, dict) and isinstance(card.get("license"), str):
        return str(card["license"])
    tags = data.get("tags")
    return next((t.partition(":")[2] for t in tags if isinstance(t, str) and t.startswith("license:")),
                None) if isinstance(tags, list) else None


def _split_part(name: str) -> int | None:
    match = SPLIT_RE.match(PurePosixPath(name).name)
    return int(match.group("index")) if match else None


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
