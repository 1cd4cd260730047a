"""Web pages that call serve from a browser (``cors``): this machine's pages and the listed
origins are answered, with the headers a browser needs; any other page is refused before
its request runs. The browser's own checks are Chromium's, against a real serve."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from servers import ScriptedServer, Served, refused_url, serve_in_process, serve_settings, wait_until

from zwaif_fallback import FallbackManager, FallbackSettings, InvalidSettings
from zwaif_fallback.cors import Gate, addressed_here, allowed

if TYPE_CHECKING:
    from playwright.sync_api import Browser

FOREIGN = "https://companion.example"
ASK = {"model": "x", "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8,
       "temperature": 0.0, "seed": 1}
#: What a browser host such as Amica sends beside its chat (each needs the preflight's leave).
ASKED_HEADERS = "authorization, content-type, http-referer, x-title"


@pytest.mark.parametrize("origin", [
    "http://localhost:3000", "https://localhost", "http://127.0.0.1:8080", "http://127.0.0.2:5173",
    "http://[::1]:3000", "http://0.0.0.0:3000", "tauri://localhost", "http://tauri.localhost",
    "HTTP://LOCALHOST:3000", "http://localhost.:3000"])
def test_this_machines_own_pages_are_allowed(origin: str):
    assert allowed(origin, [])


@pytest.mark.parametrize("origin", [
    FOREIGN, "http://192.168.1.20:3000", "http://localhost.example.com", "null", "file://", "garbage",
    "http://[::1"])
def test_other_pages_are_not_allowed_unless_listed(origin: str):
    assert not allowed(origin, [])
    assert allowed(origin, ["*"])


def test_a_listed_origin_is_allowed_as_the_browser_sends_it():
    listed = FallbackSettings(cors_origins="https://Amica.Arbius.ai:443/, http://[FE80:0:0:0:0:0:0:1]:3000, "
                                           "https://bücher.example").cors_origins
    assert listed == ["https://amica.arbius.ai", "http://[fe80::1]:3000", "https://xn--bcher-kva.example"]
    assert all(allowed(origin, listed) for origin in listed)
    assert not allowed("https://amica.arbius.ai:8443", listed)


@pytest.mark.parametrize(("given", "says"), [
    ("https://amica.arbius.ai/chat", "without a path (https://amica.arbius.ai)"),
    ("amica.arbius.ai", "give a scheme and a host"),
    ("http://localhost:99999", "is not an origin"),
    ("null", "would let in any website"),  # a sandboxed frame on any site sends it too
])
def test_a_value_that_is_no_origin_is_refused_with_what_to_give(given: str, says: str):
    with pytest.raises(InvalidSettings) as refused:
        FallbackSettings(cors_origins=given)
    assert "cors_origins" in str(refused.value) and says in str(refused.value)


@pytest.fixture
def scripted(isolated: Path) -> Iterator[tuple[Served, Any, ScriptedServer]]:
    primary = ScriptedServer(["Blue", "."])
    try:
        with serve_in_process(isolated, primary.url) as (served, manager):
            yield served, manager, primary
    finally:
        primary.close()


def preflight(base: str, origin: str, path: str = "/v1/chat/completions",
              **more: str) -> httpx.Response:
    """A browser's preflight for a POST from ``origin`` to serve at ``base``."""
    return httpx.options(base + path, timeout=30, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": ASKED_HEADERS, **more})


def test_a_preflight_from_this_machine_lets_the_page_send_its_headers(scripted: Any):
    served, _, primary = scripted
    answer = preflight(served.url, "http://localhost:3000",
                       **{"Access-Control-Request-Private-Network": "true"})
    assert answer.status_code == 204, answer.text
    assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert answer.headers["access-control-allow-headers"] == ASKED_HEADERS
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert answer.headers["access-control-allow-private-network"] == "true"
    assert primary.bodies == []  # a preflight asks nothing of the main API


def test_a_pages_answer_carries_its_origin_and_who_answered(scripted: Any):
    served, _, _ = scripted
    answer = httpx.post(served.url + "/v1/chat/completions", json=ASK, timeout=60,
                        headers={"Origin": "http://127.0.0.1:5173"})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "Blue."
    assert answer.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    assert "X-Fallback-Source" in answer.headers["access-control-expose-headers"]
    assert answer.headers["x-fallback-source"] == "primary"


def test_a_foreign_page_is_refused_before_its_chat_runs_and_the_log_says_how_to_allow_it(
        scripted: Any, caplog: pytest.LogCaptureFixture):
    served, _, primary = scripted
    with caplog.at_level(logging.WARNING, logger="zwaif_fallback.cors"):
        asked = preflight(served.url, FOREIGN)
        chat, ollama = (httpx.post(served.url + path, json=ASK, timeout=60, headers={"Origin": FOREIGN})
                        for path in ("/v1/chat/completions", "/api/chat"))
    assert (asked.status_code, chat.status_code, ollama.status_code) == (403, 403, 403)
    assert "access-control-allow-origin" not in asked.headers
    assert primary.bodies == []  # nothing ran: a page a person merely visits cannot chat
    message = chat.json()["error"]["message"]
    assert f"add {FOREIGN} to \"Web pages that may call serve\"" in message  # the tabs' field
    assert f"FALLBACK_CORS_ORIGINS={FOREIGN}" in message
    assert f"FALLBACK_CORS_ORIGINS={FOREIGN}" in ollama.json()["error"]  # in Ollama's shape on its routes
    warned = [r.getMessage() for r in caplog.records if FOREIGN in r.getMessage()]
    assert len(warned) == 1  # once an origin, however often the page asks


def test_serves_console_says_why_a_page_was_refused(isolated: Path):
    # The browser shows the page no reason, and the person watches serve's console.
    from test_serve_clients import serve_process

    with serve_process(isolated, refused_url()) as (base, process):
        lines: list[str] = []
        threading.Thread(target=lines.extend, args=(process.stdout,), daemon=True).start()
        assert preflight(base, FOREIGN).status_code == 403
        said = wait_until(lambda: [line for line in lines if "refused" in line], timeout_s=10,
                          what="serve to say why it refused the page")
    assert said[0].startswith(f"refused a request: a web page at {FOREIGN} may not call this server")


@pytest.mark.parametrize("listed", [FOREIGN, "*"])
def test_an_origin_listed_while_serve_runs_is_let_in_at_once(scripted: Any, listed: str):
    served, manager, _ = scripted
    assert preflight(served.url, FOREIGN).status_code == 403
    manager.update_settings(cors_origins=[listed])
    answer = preflight(served.url, FOREIGN)
    assert answer.status_code == 204 and answer.headers["access-control-allow-origin"] == FOREIGN


def test_a_page_may_read_why_serve_refused_its_request(isolated: Path):
    # A wrong key or a bad body: the page can show serve's reason instead of "Failed to fetch".
    with FallbackManager(serve_settings(isolated, refused_url()), background=False) as manager:
        served = Served(manager, api_key="right")
        try:
            answers = [httpx.post(served.url + path, content=b"{", timeout=30, headers={
                "Origin": "http://localhost:3000", "Authorization": f"Bearer {key}"})
                for path, key in (("/v1/chat/completions", "wrong"), ("/api/chat", "right"))]
        finally:
            served.close()
    assert [a.status_code for a in answers] == [401, 400]
    assert all(a.headers["access-control-allow-origin"] == "http://localhost:3000" for a in answers)


@pytest.mark.parametrize("host", [
    None, "localhost:5001", "127.0.0.1:5001", "[::1]:5001", "192.168.1.5:5001", "host.docker.internal:5001",
    "mypc.local", "app.localhost:5001", "LOCALHOST.", socket.gethostname()])
def test_a_request_for_this_machine_is_addressed_here(host: str | None):
    assert addressed_here(host)


@pytest.mark.parametrize("host", ["evil.example:5001", "8.8.8.8", "localhost.evil.example", "[::1"])
def test_a_request_for_another_name_is_not(host: str):
    assert not addressed_here(host)


def test_serve_on_a_network_address_does_not_check_names():
    # With an API key on 0.0.0.0, a reverse proxy in front keeps the public name: let it in.
    scope = {"type": "http", "path": "/v1/models", "headers": [(b"host", b"llm.example.com")]}
    assert Gate(listed=tuple, on_loopback=False).refusal(scope, api=True) is None
    assert Gate(listed=tuple).refusal(scope, api=True).status_code == 403


def test_serve_on_loopback_refuses_a_request_for_a_name_not_this_machines(scripted: Any):
    # DNS rebinding: a page at http://evil.example:PORT whose name now points at 127.0.0.1
    # reads "its own" site, without an Origin, and would see the models, metrics and tabs.
    served, _, _ = scripted
    port = served.url.rsplit(":", 1)[1]
    refused = [httpx.get(served.url + path, headers={"Host": f"evil.example:{port}"}, timeout=30)
               for path in ("/v1/models", "/metrics", "/")]
    here = httpx.get(served.url + "/v1/models", headers={"Host": f"localhost:{port}"}, timeout=30)
    assert [r.status_code for r in refused] == [403, 403, 403] and here.status_code == 200
    assert "not for 'evil.example:" in refused[0].json()["error"]["message"]


def test_a_client_without_an_origin_gets_no_cross_origin_headers(scripted: Any):
    served, _, _ = scripted
    answer = httpx.post(served.url + "/v1/chat/completions", json=ASK, timeout=60)
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


@pytest.mark.parametrize(("path", "shape"), [("/v1/models", "openai"), ("/api/tags", "ollama")])
def test_an_error_that_escapes_a_handler_is_a_500_in_the_apis_shape_that_a_page_can_read(
        path: str, shape: str, caplog: pytest.LogCaptureFixture):
    """serve's handlers answer their own errors; for a bug that gets past one, ``front`` sends
    the 500 itself, through the CORS headers, where uvicorn's bare one would be a network error
    to the page."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    from zwaif_fallback.front import front

    async def broken(request: Any) -> Any:
        raise RuntimeError("a bug in a handler")

    app = Starlette()
    app.state.api_routes = [Route(path, broken)]
    app.state.cors_origins = list
    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=front(app), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get(path, headers={"Origin": "http://localhost:3000"})

    with caplog.at_level(logging.ERROR, logger="zwaif_fallback.front"):
        answer = asyncio.run(ask())
    assert answer.status_code == 500
    assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"
    error = answer.json()["error"]
    message = error if shape == "ollama" else error["message"]
    assert "RuntimeError: a bug in a handler" in message and "the log has its traceback" in message
    assert "a bug in a handler" in caplog.text  # with its traceback


# --- in Chromium: the browser decides whether the page may read the answer ---------------

#: The page's script: a streamed chat through serve, read as a browser host reads it.
STREAM_CHAT = """async ([url, body]) => {
    try {
        const response = await fetch(url + '/v1/chat/completions', {method: 'POST', body,
            headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer none',
                      'X-Title': 'a browser host'}});
        const reader = response.body.getReader(), decoder = new TextDecoder();
        let text = '';
        for (;;) {
            const {done, value} = await reader.read();
            if (done) break;
            text += decoder.decode(value);
        }
        const words = text.split('\\n').filter(l => l.startsWith('data: {'))
            .map(l => JSON.parse(l.slice(6)).choices[0]?.delta?.content || '').join('');
        return {status: response.status, source: response.headers.get('X-Fallback-Source'), words};
    } catch (error) {
        return {error: String(error)};
    }
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    playwright_api = pytest.importorskip("playwright.sync_api")
    from test_webui_browser import CHROMIUM, CHROMIUM_ARGS

    with playwright_api.sync_playwright() as p:
        # page.test: a name other than loopback for a page that is still on this machine
        chromium = p.chromium.launch(executable_path=CHROMIUM,
                                     args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP page.test 127.0.0.1"])
        yield chromium
        chromium.close()


@pytest.fixture
def pages(tmp_path: Path) -> Iterator[int]:
    """A plain web server for the host's page, on a port of its own: its port."""
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "index.html").write_text("<!doctype html><title>a browser host</title>")

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path / "pages"), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def chat_from(browser: Browser, page_url: str, served: Served) -> dict[str, Any]:
    page = browser.new_page()
    try:
        page.goto(page_url)
        return page.evaluate(STREAM_CHAT, [served.url, json.dumps({**ASK, "stream": True})])
    finally:
        page.close()


def test_a_page_on_this_machine_streams_the_local_answer_while_the_main_api_is_down(
        isolated: Path, browser: Browser, pages: int):
    # Amica or ChatVRM, run on this PC, with the main API gone: the local model answers it.
    with serve_in_process(isolated, refused_url()) as (served, _):
        got = chat_from(browser, f"http://localhost:{pages}/", served)
    assert got.get("status") == 200, got
    assert got["source"] == "local" and got["words"].strip()


def test_chromium_keeps_the_answer_from_a_foreign_page_until_its_origin_is_listed(
        scripted: Any, browser: Browser, pages: int):
    served, manager, primary = scripted
    origin = f"http://page.test:{pages}"
    refused = chat_from(browser, origin + "/", served)
    manager.update_settings(cors_origins=[origin])
    answered = chat_from(browser, origin + "/", served)
    assert "Failed to fetch" in refused.get("error", ""), refused
    assert len(primary.bodies) == 1  # the refused page's chat never reached the main API
    assert answered == {"status": 200, "source": "primary", "words": "Blue."}


def test_chromium_cannot_read_serve_through_a_name_pointed_at_this_machine(scripted: Any, browser: Browser):
    served, _, _ = scripted
    page = browser.new_page()
    try:  # page.test is 127.0.0.1 to this browser, as a rebinding attacker's name would be
        response = page.goto(served.url.replace("127.0.0.1", "page.test") + "/v1/models")
        assert response is not None
        shown = response.status, page.content()
    finally:
        page.close()
    assert shown[0] == 403 and "answers requests for this machine only" in shown[1]
