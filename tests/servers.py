"""Real servers for failover tests, all on loopback.

* ``LlamaServer``: llama-cpp-python's OpenAI-compatible server in its own process.
* ``FaultProxy``: a real HTTP proxy in front of it that can pass, answer 500,
  cut the stream after N events, or stall after N events.
* ``HangServer``: a socket that accepts connections and never answers.
* ``DripServer``: begins an HTTP answer and sends it a byte at a time, never ending it.
* ``ScriptedServer``: an OpenAI-compatible server that streams a fixed answer, with
  usage when asked, or refuses ``stream_options`` as servers that predate it do.
* ``SlowServer``: streams a piece at a time, slowly, and notes when a client hangs up.
* ``Served``: our own API (``build_api``) served by uvicorn in a thread, as ``run`` serves it.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from zwaif_fallback.server import build_api, front, listen, serving


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, *, timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        threading.Event().wait(interval_s)


class LlamaServer:
    """``python -m llama_cpp.server`` serving one GGUF on a free loopback port.

    ``interrupt_requests``: its default stops the answer it streams when a newer request
    arrives; False queues requests instead, as Oobabooga does. ``embedding``: it makes
    embeddings (``/v1/embeddings``); without it, it answers them with a 500.
    """

    def __init__(self, model: Path, *, n_ctx: int = 1024, interrupt_requests: bool = True,
                 embedding: bool = False) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self.interrupt_requests = interrupt_requests
        self.embedding = embedding
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaServer:
        """Start it (again, after ``stop`` or ``kill``: on the same port)."""
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"llama-server-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host",
             "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
             "--interrupt_requests", str(self.interrupt_requests), "--embedding", str(self.embedding)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()  # the child has its own copy
        wait_until(self._ready, timeout_s=60, what="the llama.cpp server to start")
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"llama.cpp server exited with {self.process.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
            conn.request("GET", "/v1/models")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def kill(self) -> None:
        """Stop it as a crash does: at once, cutting the answers it is streaming
        (``stop`` lets uvicorn wait for them)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)


class FaultProxy:
    """Forwards to ``upstream`` (host, port) unless told to misbehave.

    mode: "pass", "500", "400", "cut" (close after ``after`` pieces of content), "stall"
    (stop sending after ``after`` pieces but keep the socket open). ``fail_first``
    makes the first K requests answer 500 whatever the mode.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.after = 3
        self.fail_first = 0
        self.requests = 0
        self.forwarded: list[str] = []  # the content pieces sent downstream, last request
        self.last_body: bytes | None = None  # the last request's body, as the client sent it
        self._release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._forward(body)

            def _forward(self, body: bytes | None) -> None:
                proxy.requests += 1
                proxy.forwarded = []
                proxy.last_body = body
                if proxy.fail_first > 0 or proxy.mode in ("500", "400"):
                    status = 400 if proxy.mode == "400" else 500
                    proxy.fail_first = max(proxy.fail_first - 1, 0)
                    self._error(status)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=120)
                upstream.request(self.command, self.path, body=body,
                                 headers={"Content-Type": "application/json"})
                response = upstream.getresponse()
                self.send_response(response.status)
                self.send_header("Content-Type", response.getheader("Content-Type", "text/plain"))
                self.end_headers()
                events = 0
                while True:
                    line = response.readline()
                    if not line:
                        break
                    if line.startswith(b"data:") and b"[DONE]" not in line:
                        if proxy._record(line):
                            events += 1
                        if proxy.mode in ("cut", "stall") and events > proxy.after:
                            if proxy.mode == "stall":
                                proxy._release.wait(120)
                            break
                    self.wfile.write(line)
                    self.wfile.flush()
                upstream.close()

            def _error(self, status: int) -> None:
                payload = json.dumps({"error": {"message": f"injected {status}"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _record(self, line: bytes) -> bool:
        """Note the content an event carries; True when it carries some."""
        try:
            event = json.loads(line[5:])
            piece = event["choices"][0]["delta"].get("content")
        except (ValueError, KeyError, IndexError):
            return False
        if piece and len(self.forwarded) < self.after or self.mode not in ("cut", "stall"):
            if piece:
                self.forwarded.append(piece)
        return bool(piece)

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


class HangServer:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)  # before it is counted: a test that saw the count may close it
            self.accepted += 1
            if self._closed:
                conn.close()
                return
            self._took(conn)

    def _took(self, conn: socket.socket) -> None:
        """What is done with a connection taken: nothing."""

    def close(self) -> None:
        self._closed = True
        try:  # wakes the accepting thread, which would keep the port listening
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self._held:
            conn.close()


class DripServer(HangServer):
    """Answers every connection with the start of an HTTP answer, then a byte of a header
    every ``interval_s``, never ending it: each read comes in time, so a client's read
    timeout never fires. After ``lasts_s`` it hangs up, so that a client with no deadline
    of its own fails a test rather than hanging it."""

    def __init__(self, *, interval_s: float = 0.1, lasts_s: float = 10.0) -> None:
        self.interval_s, self.lasts_s = interval_s, lasts_s
        super().__init__()

    def _took(self, conn: socket.socket) -> None:
        threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        until = time.monotonic() + self.lasts_s
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
            while not self._closed and time.monotonic() < until:
                conn.sendall(b"a")
                threading.Event().wait(self.interval_s)
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:  # the client hung up, or close() closed it
            return


class _Background:
    """An HTTP server on a free loopback port, answering from a daemon thread."""

    server: ThreadingHTTPServer

    def _serve(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    """A quiet handler that sends whole bodies, and reads JSON ones."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> Any:
        return json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _send(self, status: int, content_type: str, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class BodyServer(_Background):
    """Answers every POST with one ``status``, ``content_type`` and ``body``, whatever was asked."""

    def __init__(self, body: bytes, *, status: int = 200, content_type: str = "application/json") -> None:
        self.requests = 0
        server = self

        class Handler(_Handler):
            def do_POST(self) -> None:  # noqa: N802
                self._body()
                server.requests += 1
                self._send(status, content_type, body)

        self._serve(Handler)


class ScriptedServer(_Background):
    """Streams ``pieces`` for every chat completion; records each request's body and headers.

    ``interrupted``: end with ``[DONE]`` and no finish reason, as llama.cpp's server ends an
    answer it stops for a newer request. ``tool_calls`` (``{"id", "name", "arguments"}``
    each) follow the text as OpenAI streams them: the id and name first, then the arguments
    in two halves, then ``finish_reason: "tool_calls"``; ``cut_in_tool_call`` closes the
    connection after the first half of the first call's arguments. A request's
    ``max_tokens`` stops the pieces there and, once reached, ends with
    ``finish_reason: "length"``, as a server does. ``model``: the name every event gives
    for the model (none by default); ``finish_reason`` replaces the reason the answer ends
    with. ``chats_only``: ``/v1/completions`` answers 404, as OpenAI's chat models do.
    ``listed``: the model ids ``GET /v1/models`` answers (none: it answers 501); any other
    GET answers 404. ``key``: a request without ``Authorization: Bearer <key>`` is refused
    with 401, as text-generation-webui started with ``--api-key`` refuses it.
    ``/v1/embeddings`` gives each input the vector [its length, 0.5], and refuses an input
    that is not text with a 422, as FastAPI's servers do.
    """

    def __init__(self, pieces: list[str], *, prompt_tokens: int = 11,
                 refuse_stream_options: bool = False, interrupted: bool = False,
                 tool_calls: list[dict[str, str]] | None = None,
                 cut_in_tool_call: bool = False, model: str | None = None,
                 finish_reason: str | None = None, chats_only: bool = False, port: int = 0,
                 listed: list[str] | None = None, key: str | None = None) -> None:
        self.bodies: list[dict[str, object]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []  # each request's, names lower-cased
        server = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                if self._refused():
                    return
                if self.path != "/v1/models":
                    self._send(404, "application/json", b'{"detail": "Not Found"}')
                    return
                if listed is None:
                    self._send(501, "text/plain", b"not here")
                    return
                self._send(200, "application/json", json.dumps({"object": "list", "data": [
                    {"id": name, "object": "model"} for name in listed]}).encode())

            def _refused(self) -> bool:
                if key is None or self.headers.get("Authorization") == f"Bearer {key}":
                    return False
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._send(401, "application/json", b'{"error": {"message": "Invalid API key"}}')
                return True

            def _embeddings(self, body: dict[str, Any]) -> None:
                texts = [body.get("input")] if isinstance(body.get("input"), str) else body.get("input")
                if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                    self._send(422, "application/json", json.dumps({"detail": [{
                        "loc": ["body", "input"], "msg": "Input should be a valid string"}]}).encode())
                    return
                self._send(200, "application/json", json.dumps({"object": "list", "model": body.get("model"),
                    "data": [{"object": "embedding", "index": i, "embedding": [float(len(t)), 0.5]}
                             for i, t in enumerate(texts)]}).encode())

            def do_POST(self) -> None:
                if self._refused():
                    return
                body = self._body()
                server.bodies.append(body)
                server.paths.append(self.path)
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
                if chats_only and self.path.endswith("/v1/completions"):  # as OpenAI's chat models
                    self._send(404, "application/json", b'{"error": {"message": "not a chat model"}}')
                    return
                if self.path.endswith("/v1/embeddings"):
                    self._embeddings(body)
                    return
                if refuse_stream_options and "stream_options" in body:
                    self._send(400, "application/json", json.dumps({"error": {
                        "message": "Unrecognized request argument supplied: stream_options"}}).encode())
                    return
                limit = body.get("max_tokens")
                said = pieces[:limit] if isinstance(limit, int) else pieces
                events = [{"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
                          for p in said]
                for index, call in enumerate(tool_calls or []):
                    half = len(call["arguments"]) // 2
                    for delta in ({"index": index, "id": call["id"], "type": "function",
                                   "function": {"name": call["name"], "arguments": ""}},
                                  {"index": index, "function": {"arguments": call["arguments"][:half]}},
                                  {"index": index, "function": {"arguments": call["arguments"][half:]}}):
                        events.append({"choices": [{"index": 0, "delta": {"tool_calls": [delta]},
                                                    "finish_reason": None}]})
                if cut_in_tool_call:
                    stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events[:len(said) + 2])
                    self._send(200, "text/event-stream", stream.encode())
                    return
                if not interrupted:
                    reached = isinstance(limit, int) and len(said) >= limit
                    finish = finish_reason or ("tool_calls" if tool_calls else
                                               "length" if reached else "stop")
                    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
                if (body.get("stream_options") or {}).get("include_usage") and not interrupted:
                    events.append({"choices": [], "usage": {
                        "prompt_tokens": prompt_tokens, "completion_tokens": len(said),
                        "total_tokens": prompt_tokens + len(said)}})
                if model is not None:
                    events = [{"model": model, **e} for e in events]
                if self.path.endswith("/v1/completions"):  # a text completion's choices have text
                    for e in events:
                        for choice in e["choices"]:
                            choice["text"] = choice.pop("delta").get("content", "")
                stream = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
                self._send(200, "text/event-stream", stream.encode())

        self._serve(Handler, port)


class ScriptedOllama(_Background):
    """Ollama's own API (``/api/chat``, ``/api/tags``) answering ``pieces`` to every chat, as
    one JSON object a line (or one object for ``"stream": false``); records each body.

    ``options.num_predict`` stops the pieces there, with ``done_reason: "length"``.
    ``tool_calls`` (``{"name", "arguments"}``, the arguments an object) come whole on the
    last line, as Ollama gives them. ``cut_after`` closes the connection after that many
    pieces, with no ``done`` line. ``think_s``: first stream lines of ``thinking`` alone for
    that long, as a model that thinks before it answers. ``/api/embed`` gives each input the
    vector [its length, 0.5]. ``url`` is the server's root, as Ollama's own is given
    (``primary_api = "ollama"``).
    """

    def __init__(self, pieces: list[str], *, model: str = "llama3:latest", prompt_tokens: int = 11,
                 tool_calls: list[dict[str, Any]] | None = None, cut_after: int | None = None,
                 think_s: float = 0.0, port: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        server = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                if self.path != "/api/tags":
                    self._send(404, "text/plain", b"404 page not found")
                    return
                self._send(200, "application/json", json.dumps({"models": [
                    {"name": model, "model": model, "size": 1, "digest": "0", "details": {}}]}).encode())

            def do_POST(self) -> None:
                if self.path == "/api/show":
                    asked = self._body().get("model")
                    card = {"parameters": "num_ctx 8192", "details": {"family": "llama"}, "model_info": {}}
                    self._send(*((200, "application/json", json.dumps(card).encode()) if asked == model else
                                 (404, "application/json", b'{"error": "model not found"}')))
                    return
                if self.path == "/api/embed":
                    server.bodies.append(body := self._body())
                    inputs = [body["input"]] if isinstance(body["input"], str) else body["input"]
                    self._send(200, "application/json", json.dumps({"model": model, "embeddings": [
                        [float(len(text)), 0.5] for text in inputs]}).encode())
                    return
                if self.path not in ("/api/chat", "/api/generate"):
                    self._send(404, "text/plain", b"404 page not found")
                    return
                body = self._body()
                server.bodies.append(body)
                limit = (body.get("options") or {}).get("num_predict")
                said = pieces[:limit] if isinstance(limit, int) and limit >= 0 else pieces
                lines = [{"model": model, "created_at": "2026-12-06T00:00:00Z",
                          "message": {"role": "assistant", "content": p}, "done": False} for p in said]
                if cut_after is not None:
                    lines = lines[:cut_after]
                else:
                    message: dict[str, Any] = {"role": "assistant", "content": ""}
                    if tool_calls:
                        message["tool_calls"] = [{"function": call} for call in tool_calls]
                    reason = "length" if len(said) < len(pieces) else "stop"
                    lines.append({"model": model, "created_at": "2026-12-06T00:00:01Z",
                                  "message": message, "done": True, "done_reason": reason,
                                  "prompt_eval_count": prompt_tokens, "eval_count": len(said)})
                if self.path == "/api/generate":  # a generation's lines say ``response``
                    lines = [{**{k: v for k, v in line.items() if k != "message"},
                              "response": line["message"]["content"]} for line in lines]
                if body.get("stream") is False:
                    whole = {**lines[-1], "message": {**lines[-1]["message"], "content": "".join(said)}}
                    self._send(200, "application/json", json.dumps(whole).encode())
                    return
                ndjson = "".join(json.dumps(line) + "\n" for line in lines)
                if not think_s:
                    self._send(200, "application/x-ndjson", ndjson.encode())
                    return
                self.send_response(200)  # streamed as it comes; the body ends with the connection
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                thinking = {"model": model, "created_at": "2026-12-06T00:00:00Z", "done": False,
                            "message": {"role": "assistant", "content": "", "thinking": "Hmm. "}}
                until = time.monotonic() + think_s
                while time.monotonic() < until:
                    self.wfile.write(json.dumps(thinking).encode() + b"\n")
                    self.wfile.flush()
                    time.sleep(0.25)
                self.wfile.write(ndjson.encode())

        self._serve(Handler, port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


class SlowServer(_Background):
    """Streams ``word `` every ``interval_s``, ``pieces`` times, for every chat completion.

    ``closed_at`` gets the ``time.monotonic()`` at which each client hung up mid-stream
    (seen as the end of its socket, within ``interval_s``); ``GET /models`` answers too.
    """

    def __init__(self, *, pieces: int = 400, interval_s: float = 0.02) -> None:
        self.closed_at: list[float] = []
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                payload = json.dumps({"object": "list", "data": [{"id": "slow"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for _ in range(pieces):
                    if not self._send({"choices": [{"index": 0, "delta": {"content": "word "},
                                                    "finish_reason": None}]}) or self._hung_up():
                        server.closed_at.append(time.monotonic())
                        return
                self._send({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
                self.wfile.write(b"data: [DONE]\n\n")

            def _send(self, event: dict[str, Any]) -> bool:
                try:
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                    return True
                except OSError:
                    return False

            def _hung_up(self) -> bool:
                """The whole request was read: anything readable now is the client's end."""
                readable, _, _ = select.select([self.connection], [], [], interval_s)
                if not readable:
                    return False
                try:
                    return self.connection.recv(1) == b""
                except OSError:
                    return True

        self._serve(Handler)


def serve_settings(root: Path, primary_url: str, **settings: Any) -> Any:
    """FallbackSettings for a ``serve`` test under ``root``: a short deadline, no system stores,
    the bundled SmolLM2 preferred, ``settings`` on top."""
    from zwaif_fallback import FallbackSettings

    models = root / "models"
    models.mkdir(exist_ok=True)
    defaults: dict[str, Any] = dict(
        timeout=5, max_retries=2, models_dir=models, scan_system_stores=False, keep_alive=0,
        preferred_model="SmolLM2-135M-Instruct.Q4_1", settings_file=root / "settings.json",
        data_dir=root / "data")
    return FallbackSettings(**{**defaults, **settings, "primary_url": primary_url})


class Served:
    """Our API app (``build_api`` over ``manager``, ``front``) on a free loopback port, in a
    uvicorn thread, on the server and socket that ``run`` makes. ``writes``: each part of a
    response body the app handed to uvicorn, in order, as one write each."""

    def __init__(self, manager: Any, api_key: str | None = None) -> None:
        listener = listen("127.0.0.1", 0)
        self.writes: list[bytes] = []
        app = front(build_api(manager, api_key=api_key))

        async def recorded(scope: Any, receive: Any, send: Any) -> None:
            async def write(message: Any) -> None:
                if message["type"] == "http.response.body" and message.get("body"):
                    self.writes.append(message["body"])
                await send(message)

            await app(scope, receive, write)

        self.server = serving(recorded)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [listener]},
                                       daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, timeout_s=20, what="uvicorn to start")
        self.url = f"http://127.0.0.1:{listener.getsockname()[1]}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@contextmanager
def serve_in_process(root: Path, primary_url: str, **settings: Any) -> Iterator[tuple[Served, Any]]:
    """The API in this process, over a manager of its own (``serve_settings``)."""
    from zwaif_fallback import FallbackManager

    with FallbackManager(serve_settings(root, primary_url, **settings), background=False) as manager:
        served = Served(manager)
        try:
            yield served, manager
        finally:
            served.close()


def refused_url() -> str:
    """A loopback URL where nothing listens: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}/v1"
