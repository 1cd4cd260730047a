"""A local stand-in for the Hugging Face Hub, in the Hub's URL layout, for hub.py's tests
and benchmarks/bench_recommend.py.

* ``GET /api/models/{owner}/{name}``: the model API's JSON: ``siblings``, ``sha``,
  ``cardData.license`` and ``license:`` tag.
* ``GET|HEAD /{owner}/{name}/resolve/{revision}/{file}``: what the Hub answers for a file
  kept in LFS: a 302 to ``/cdn/{id}`` on another host name (127.0.0.1 and localhost stand
  for the Hub and its CDN, so clients drop the token there) with ``X-Linked-Etag``, ``X-Linked-Size``,
  ``X-Repo-Commit`` and ``ETag``, the headers huggingface_hub's ``get_hf_file_metadata``
  reads; 404 with ``X-Error-Code`` for an unknown repo, revision or file; 401 for a gated
  repo without its token.
* ``GET|HEAD /cdn/{id}``: the file, with ``Range`` (206 and ``Content-Range``, 416 past
  the end) and its ``ETag``.

For downloads (pull.py's tests): ``add(..., sha256=True)`` gives a file its real sha256 as
``X-Linked-Etag`` (a text gives that one: a wrong hash), and ``cut_after`` bytes makes
the next ``cuts`` file bodies stop there and drop the connection (a network cut);
``stall_after`` bytes makes every file body stop there and send nothing more, with the
connection open, until ``stop`` (a stalled server). ``gone_after[(repo, file)] = n``: after
``n`` more bodies of that file, it answers 404 (a file deleted while it is read).
``add(..., lfs=False)`` serves a file
as the Hub serves a small one kept in git (config.json): at its resolve URL, no redirect,
its git object id as ``ETag`` and no sha256.

It counts the requests and the body bytes it sent, and can add latency to every request
(a far-away Hub, for benchmarks). Files are served from disk, so sparse zero-filled GGUFs
of real shapes cost nothing to serve.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CHUNK = 1 << 20
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass(frozen=True)
class Served:
    """One request as the server saw it."""

    method: str
    host: str
    path: str
    range: str | None
    authorization: str | None
    user_agent: str = ""


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    etag: str  # what the Hub gives an LFS file: its sha256 (here a stand-in: hashing 4 GB is slow)
    lfs: bool = True  # False: a small file in git, served at its resolve URL


class HubServer:
    """Serves the files ``add``ed, on a free loopback port, until ``stop``.

    Args:
        latency_s: added before every answer (a far-away Hub).
    """

    def __init__(self, *, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.files: dict[tuple[str, str], _File] = {}
        self.licenses: dict[str, str] = {}
        self.gated: dict[str, str] = {}  # repo -> the token it wants
        self.requests: list[Served] = []
        self.bytes_served = 0
        self.bytes_by_file: dict[tuple[str, str], int] = {}  # (repo, file) -> its bytes sent
        self.cut_after: int | None = None  # a file body stops after this many bytes ...
        self.cuts = 0  # ... this many more times
        self.stall_after: int | None = None  # every body sends this many bytes, then waits ...
        self.unstalled = threading.Event()  # ... until this is set (by stop)
        self.gone_after: dict[tuple[str, str], int] = {}  # (repo, file) -> bodies left, then 404
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def add(self, repo: str, file: str, path: Path, *, license: str = "apache-2.0",
            sha256: bool | str = False, lfs: bool = True) -> str:
        """Serve ``path`` as ``file`` of ``repo``; returns ``repo/file``.

        Args:
            sha256: True: announce the file's real sha256; a text: announce that instead.
            lfs: False: serve it as a file kept in git (no redirect, no sha256).
        """
        stat = os.stat(path)
        if not lfs:
            data = Path(path).read_bytes()
            digest = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's object id
        elif sha256 is True:
            digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        elif isinstance(sha256, str):
            digest = sha256
        else:
            digest = hashlib.sha256(f"{repo}/{file}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        self.files[(repo, file)] = _File(Path(path), stat.st_size, digest, lfs)
        self.licenses[repo] = license
        return f"{repo}/{file}"

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True, name="hub-server").start()
        return self

    def stop(self) -> None:
        self.unstalled.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_served = 0
            self.bytes_by_file.clear()

    def _cut(self) -> int | None:
        """How many bytes this body may send before the connection drops, or None."""
        with self._lock:
            if self.cut_after is None or self.cuts <= 0:
                return None
            self.cuts -= 1
            return self.cut_after

    def _gone(self, file: tuple[str, str]) -> bool:
        """Whether a body of ``file`` asked for now finds it deleted (``gone_after``)."""
        with self._lock:
            left = self.gone_after.get(file)
            if left is None:
                return False
            self.gone_after[file] = left - 1
            return left <= 0

    def _count(self, served: Served | None, nbytes: int = 0, file: tuple[str, str] | None = None) -> None:
        with self._lock:
            if served is not None:
                self.requests.append(served)
            self.bytes_served += nbytes
            if file is not None:
                self.bytes_by_file[file] = self.bytes_by_file.get(file, 0) + nbytes


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as clients expect of the Hub

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, *, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            hub._count(Served(self.command, self.headers.get("Host", ""), path,
                              self.headers.get("Range"), self.headers.get("Authorization"),
                              self.headers.get("User-Agent", "")))
            if hub.latency_s:
                time.sleep(hub.latency_s)  # the simulated network, not a wait for something
            parts = [p for p in path.split("/") if p]
            if parts[:2] == ["api", "models"] and len(parts) == 4:
                return self._model_api("/".join(parts[2:4]))
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]))
            if len(parts) == 2 and parts[0] == "cdn":
                return self._cdn(parts[1], body=body)
            self._error(404, "EntryNotFound", f"{path} is not a route of this server")

        def _model_api(self, repo: str) -> None:
            names = sorted(f for r, f in hub.files if r == repo)
            if not names:
                return self._error(404, "RepoNotFound", f"Repository {repo} not found")
            license_id = hub.licenses.get(repo, "apache-2.0")
            data = {"id": repo, "modelId": repo, "sha": COMMIT, "gated": repo in hub.gated,
                    "tags": ["gguf", f"license:{license_id}"], "cardData": {"license": license_id},
                    "siblings": [{"rfilename": n} for n in ["README.md", *names]]}
            self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _resolve(self, repo: str, revision: str, file: str) -> None:
            if not any(r == repo for r, _ in hub.files):
                return self._error(404, "RepoNotFound", f"Repository {repo} not found")
            if revision not in ("main", COMMIT):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if repo in hub.gated and self.headers.get("Authorization") != f"Bearer {hub.gated[repo]}":
                return self._error(401, "GatedRepo", f"Access to model {repo} is restricted")
            entry = hub.files.get((repo, file))
            if entry is None:
                return self._error(404, "EntryNotFound", f"{file} does not exist on {revision}")
            if not entry.lfs:
                return self._file((repo, file), entry, body=self.command == "GET",
                                  headers={"ETag": f'"{entry.etag}"', "X-Repo-Commit": COMMIT})
            host, _, port = self.headers.get("Host", "").rpartition(":")
            cdn = "localhost" if host == "127.0.0.1" else "127.0.0.1"  # another host, like the Hub's CDN
            self._send(302, b"", {
                "Location": f"http://{cdn}:{port}/cdn/{entry.etag}",
                "ETag": f'W/"{entry.etag[:40]}"',  # the Hub's ETag for the pointer file
                "X-Linked-Etag": f'"{entry.etag}"', "X-Linked-Size": str(entry.size),
                "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"})

        def _cdn(self, etag: str, *, body: bool) -> None:
            found, entry = next(((k, f) for k, f in hub.files.items() if f.etag == etag), (None, None))
            if found is None or entry is None:
                return self._error(404, "EntryNotFound", "no such object")
            self._file(found, entry, body=body, headers={"ETag": f'"{entry.etag}"'})

        def _file(self, found: tuple[str, str], entry: _File, *, body: bool,
                  headers: dict[str, str]) -> None:
            if body and hub._gone(found):
                return self._error(404, "EntryNotFound", f"{found[1]} was deleted")
            headers = headers | {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            start, stop, status = 0, entry.size, 200
            wanted = self.headers.get("Range")
            if wanted:
                match = _RANGE.match(wanted.strip())
                if match is None or int(match.group(1)) >= entry.size:
                    headers["Content-Range"] = f"bytes */{entry.size}"
                    return self._send(416, b"", headers)
                start = int(match.group(1))
                stop = min(int(match.group(2)) + 1 if match.group(2) else entry.size, entry.size)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{entry.size}"
            headers["Content-Length"] = str(stop - start)
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if not body:
                return
            cut = hub._cut()
            if cut is not None:
                stop = min(stop, start + cut)
                self.close_connection = True  # fewer bytes than Content-Length, then hang up
            stalled = hub.stall_after is not None and start + hub.stall_after < stop
            if stalled:
                stop = start + (hub.stall_after or 0)
                self.close_connection = True
            try:
                with open(entry.path, "rb") as handle:
                    handle.seek(start)
                    while start < stop:
                        chunk = handle.read(min(CHUNK, stop - start))
                        self.wfile.write(chunk)
                        hub._count(None, len(chunk), found)
                        start += len(chunk)
                if stalled:
                    hub.unstalled.wait()  # the stalled server: nothing more until stop
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped reading

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, json.dumps({"error": message}).encode(),
                       {"Content-Type": "application/json", "X-Error-Code": code,
                        "X-Error-Message": message})

        def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD" and payload:
                self.wfile.write(payload)
                hub._count(None, len(payload))

    return Handler


def clear_hub_environment(monkeypatch: Any) -> None:
    """No HF_ENDPOINT, offline flag or token from the machine running the tests."""
    for key in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(key, raising=False)


def main() -> None:
    """``python tests/hub_server.py REPO FILE PATH``: serve one file (with its real sha256)
    from a process of its own, print the server's URL, and stop when stdin closes. A
    benchmark's client then shares no GIL and no core with the server's Python."""
    import sys

    repo, file, path = sys.argv[1:4]
    with HubServer() as server:
        server.add(repo, file, Path(path), sha256=True)
        print(server.url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
