"""What the Hub holds, as this package names it: a file (``HubModel``) and what the Hub says
of it before a download (``RemoteFile``), the curated list of instruct GGUFs, and the forms
a person may type (``parse_spec``).
"""

from __future__ import annotations

import json
from importlib import resources
from urllib.parse import urlsplit

from ._model import Model
from .errors import InvalidSettings

__all__ = ["HubModel", "RemoteFile", "curated", "parse_spec"]


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
