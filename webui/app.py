"""Embedding the three tabs in a host's UI, and serving them on their own.

``build_tabs(manager)`` adds the tabs inside whatever gr.Blocks/gr.Tab context the caller
has open; ``build_app(manager)`` is the standalone page; ``launch(manager)`` serves it (or a
host's own Blocks), with the Prometheus metrics at ``/metrics`` on the same server.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
from gradio.context import Context
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from zwaif_fallback import FallbackManager, InvalidSettings, PortUnavailable
from zwaif_fallback.cors import HostCheck
from zwaif_fallback.net import is_loopback

from . import compat
from .diagnostics import DiagnosticsTab, build_diagnostics_tab
from .health_monitor import HealthTab, build_health_tab
from .management import ManagementTab, build_management_tab

__all__ = ["AUTH_ENV", "FallbackTabs", "build_app", "build_tabs", "launch", "mount_tabs", "wait_for_ctrl_c"]

log = logging.getLogger(__name__)

AUTH_ENV = "FALLBACK_UI_AUTH"
TITLE = "zwaif-fallback"
#: How often the mounted tabs' queue looks for work when it has none (see ``_poll_gently``).
QUEUE_POLL_S = 0.05
PROGRESS_POLL_S = 0.1


@dataclass
class FallbackTabs:
    diagnostics: DiagnosticsTab
    management: ManagementTab
    health: HealthTab


def build_tabs(manager: FallbackManager | None = None, *, prefix: str = "fallback") -> FallbackTabs:
    """Add the three tabs inside the caller's open gr.Blocks (or gr.Tab) context.

    Args:
        manager: the manager every handler calls; the tabs hold no other state. None: the
            process's default manager, the one ``try_fallbacks`` answers on, so that a main
            API or model chosen in the tabs is the one the host's chats use.
        prefix: starts every element id of the tabs (``fallback-diag-status``...): give a
            second copy on the same page another one (a prefix used twice is logged).

    Returns:
        The tabs and their main components, for a host that wants to wire more events.
    """
    if manager is None:
        from zwaif_fallback import default_manager

        manager = default_manager()
    root = Context.root_block
    if root is not None and any(b.elem_id == f"{prefix}-tabs" for b in root.blocks.values()):
        log.warning("build_tabs: this page already has tabs with the prefix %r, so their element ids "
                    "repeat; give this copy another one: build_tabs(manager, prefix=...)", prefix)
    with gr.Tabs(elem_id=f"{prefix}-tabs"):
        return FallbackTabs(diagnostics=build_diagnostics_tab(manager, prefix),
                            management=build_management_tab(manager, prefix),
                            health=build_health_tab(manager, prefix))


def build_app(manager: FallbackManager) -> gr.Blocks:
    """The standalone page: a title and the three tabs."""
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"# {TITLE}\nKeep the chatbot answering when its main LLM API fails.")
        build_tabs(manager)
    return app


def launch(manager: FallbackManager, *, host: str = "127.0.0.1", port: int = 7860,
           auth: tuple[str, str] | str | None = None, block: bool = True,
           blocks: gr.Blocks | None = None) -> str:
    """Serve the UI, and the manager's Prometheus metrics at ``/metrics``, on one server. On
    loopback it answers only requests for this machine's names (``cors.HostCheck``).

    Args:
        host: the address to listen on; anything but loopback needs a login.
        port: the TCP port; 0 takes a free one (the URL returned names it).
        auth: ``(user, password)`` or ``"user:password"``; None reads FALLBACK_UI_AUTH.
            With a login, ``/metrics`` asks for the same credentials (HTTP Basic).
        block: wait here until the server stops (Ctrl+C); False returns at once.
        blocks: serve this gr.Blocks (a host's UI built with ``build_tabs``) instead of
            ``build_app(manager)``; the caller can then stop it with ``blocks.close()``.

    Returns:
        The local URL the UI is served at.

    Raises:
        InvalidSettings: a non-loopback host without a login, or a malformed login.
        PortUnavailable: the port cannot be listened on.
    """
    credentials = _login_for(host, auth)
    app = blocks if blocks is not None else build_app(manager)
    metrics = Route("/metrics", _metrics_endpoint(manager, credentials), methods=["GET"])
    port = port or _free_port(host)  # Gradio given 0 checks its start-up at port 0, and fails
    try:
        served = {"routes": [metrics], "middleware": [Middleware(HostCheck)] if is_loopback(host) else []}
        app.queue().launch(server_name=host, server_port=port, auth=credentials, prevent_thread_lock=True,
                           quiet=True, app_kwargs=served, **compat.LAUNCH_KWARGS)
    except OSError as exc:
        raise PortUnavailable(f"cannot serve the UI on {host}:{port}: {exc}; choose another port") from exc
    url = str(app.local_url)
    if block:
        app.block_thread()
    return url


def wait_for_ctrl_c() -> None:
    """Block until Ctrl+C, which raises KeyboardInterrupt here.

    A sleep, not ``threading.Event().wait()``: on Windows, Ctrl+C cannot interrupt a wait on a
    lock before Python 3.14 (CPython issue #80116), and the process could only be killed, its
    models never unloaded; a sleep there waits on the console's interrupt event too.
    """
    while True:
        time.sleep(3600)


def _free_port(host: str) -> int:
    """A port free on ``host`` now, as the system picks one for port 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            return int(probe.getsockname()[1])
    except OSError as exc:
        raise PortUnavailable(f"cannot serve the UI on {host}: {exc}") from exc


def mount_tabs(app: Any, manager: FallbackManager, *, host: str = "127.0.0.1",
               auth: tuple[str, str] | str | None = None) -> None:
    """Serve the standalone page at ``/`` of ``app``, a FastAPI app (``zwaif-fallback serve``
    puts its OpenAI-compatible API there; routes added before this one keep their paths).

    Args:
        host: the address the server listens on: anything but loopback needs a login.
        auth: as in ``launch``; None reads FALLBACK_UI_AUTH.

    Raises:
        InvalidSettings: a non-loopback host without a login, or a malformed login.
    """
    blocks = build_app(manager)
    _poll_gently(blocks)
    gr.mount_gradio_app(app, blocks, path="/", auth=_login_for(host, auth))


def _poll_gently(blocks: gr.Blocks) -> None:
    """Slow the idle polling of Gradio's queue to Gradio 4's pace (as Gradio 5+ keeps on Windows).

    Gradio 5+ looks for work every 1 ms (progress every 10 ms) on Linux and macOS. On the
    event loop that ``serve`` shares with the API, that was ~730 wakeups a second and 6% of a
    core with nothing to do, taken from the model answering on the same cores (+13 ms to the
    first token, -4% decode). A click on a tab now starts up to 50 ms later.
    """
    queue = getattr(blocks, "_queue", None)
    for name, period_s in (("sleep_when_free", QUEUE_POLL_S),
                           ("progress_update_sleep_when_free", PROGRESS_POLL_S)):
        current = getattr(queue, name, None)
        if isinstance(current, (int, float)) and current < period_s:
            setattr(queue, name, period_s)


def _login_for(host: str, auth: tuple[str, str] | str | None) -> tuple[str, str] | None:
    """The login the UI needs on ``host``, from ``auth`` or FALLBACK_UI_AUTH; loopback may have none."""
    credentials = _credentials(auth if auth is not None else os.environ.get(AUTH_ENV) or None)
    if credentials is None and not is_loopback(host):
        raise InvalidSettings(
            f"refusing to serve the UI on {host!r} without a login: anyone on the network could "
            f"switch models and change settings. Set {AUTH_ENV}=user:password (or pass auth=), "
            "or listen on 127.0.0.1")
    return credentials


def _credentials(auth: tuple[str, str] | str | None) -> tuple[str, str] | None:
    if auth is None:
        return None
    if isinstance(auth, str):
        user, sep, password = auth.partition(":")
        auth = (user, password) if sep else ("", "")
    user, password = auth
    if not user or not password:
        raise InvalidSettings(f"a login must be 'user:password' with both parts non-empty (as in {AUTH_ENV})")
    return user, password


def _metrics_endpoint(manager: FallbackManager,
                      credentials: tuple[str, str] | None) -> Callable[[Request], Response]:
    """``GET /metrics``: the manager's metrics, behind the UI's login when there is one."""

    def metrics(request: Request) -> Response:
        if credentials is not None and not _authorized(request.headers.get("authorization"), credentials):
            return Response("login required", status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="zwaif-fallback metrics"'})
        body, content_type = manager.metrics.render()
        return Response(body, media_type=content_type)

    return metrics


def _authorized(header: str | None, credentials: tuple[str, str]) -> bool:
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return secrets.compare_digest(user.encode(), credentials[0].encode()) & secrets.compare_digest(
        password.encode(), credentials[1].encode())
