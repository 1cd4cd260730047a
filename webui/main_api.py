"""The "Main API" section of the Management tab: the server the fallback stands in front of.

A host pointed at ``zwaif-fallback serve`` (``make run``) sends its chats there, and serve
forwards them to the main API; until now that address could be set only in the environment
or with ``zwaif-fallback settings --set``. Here a person sets it, with what the server
speaks, the model it is asked for, more servers to try before a local model,
text-generation-webui's folder (the characters a host names), and the web pages that may call
serve from a browser (``cors_origins``). A save is checked and written like the Advanced
Settings', and the next chat uses it. A host that passes its own API call
as the primary (``manager.chat(messages, primary=call)``) calls that first instead.

The status says whether each server answers: it is asked for its model list (``probe_all``,
a few seconds at most) when the page loads, the tab is shown, after a save and on "Check
again", so that a wrong URL, port or key shows before a chat fails on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import gradio as gr
from pydantic import SecretStr

from zwaif_fallback import FallbackError, FallbackManager, FallbackSettings
from zwaif_fallback.breaker import SEVERITY
from zwaif_fallback.files import expanded
from zwaif_fallback.net import is_loopback
from zwaif_fallback.routing import HOST_PREFIX, USUAL_MAIN_APIS, chain_text, primary_breakers
from zwaif_fallback.settings_fields import unquoted
from zwaif_fallback.upstream_probe import UpstreamProbe, probe_all

from . import compat
from . import format as fmt

__all__ = ["MAIN_API_FIELDS", "MainApiHandlers", "MainApiSection", "build_main_api_section",
           "main_api_markdown"]

#: The settings shown as they are, in the order of the section's controls; the API key's
#: control comes at ``KEY_AT`` among them (``MainApiHandlers.save`` takes them all in order).
MAIN_API_FIELDS = ("primary_url", "primary_api", "primary_model", "remote_urls", "characters_dir",
                   "cors_origins")
KEY_AT = 3
API_CHOICES = [("OpenAI-compatible (a /v1 URL: Oobabooga, LM Studio, llama.cpp)", "openai"),
               ("Ollama's own API (its root URL: Z-WAIF's API_TYPE = Ollama)", "ollama")]
_URL_SEPARATORS = re.compile(r"[,\s]+")
#: The most model names a server's line shows.
SHOWN_MODELS = 8


class MainApiHandlers:
    """The section's event handlers: each calls the manager and formats what it returns."""

    def __init__(self, manager: FallbackManager) -> None:
        self.manager = manager

    def load(self) -> tuple[Any, ...]:
        """Where the main API stands now, and each control as the settings say (on page load)."""
        return (self.status(), *self._updates())

    def status(self) -> str:
        """Where chats go, and whether they skip the main API now."""
        return main_api_markdown(self.manager.settings, self.manager.breaker_states())

    def check(self) -> str:
        """``status``, and whether each server answers now: a short request each, all at once
        (after the page loads, when the tab is shown, after a save, on "Check again")."""
        settings = self.manager.settings
        return main_api_markdown(settings, self.manager.breaker_states(), probe_all(settings))

    def save(self, primary_url: str, primary_api: str, primary_model: str, api_key: str,
             remote_urls: str, characters_dir: str, cors_origins: str | None = None, *,
             page_host: str | None = None) -> tuple[Any, ...]:
        """Save the values that changed (an empty API key keeps the saved one); a refused value
        is explained and nothing is written. ``cors_origins``: None leaves them as they are.
        ``page_host``: the host:port the page was loaded from, which no server may be (it is
        serve itself, or the tabs alone)."""
        settings = self.manager.settings
        values: dict[str, Any] = {
            "primary_url": _typed(primary_url), "primary_api": _typed(primary_api) or "openai",
            "primary_model": _typed(primary_model), "characters_dir": _typed(characters_dir),
            "remote_urls": _listed(remote_urls),
        }
        if cors_origins is not None:
            values["cors_origins"] = _listed(cors_origins)
        # Only what changed: an unchanged value pinned by the environment must not refuse the rest.
        changes = {f: v for f, v in values.items() if getattr(settings, f) != v}
        key, saved_key = _typed(api_key), settings.primary_api_key.get_secret_value()
        key_pinned = fmt.pinned(settings, "primary_api_key")
        if key and key != saved_key and not key_pinned:
            changes["primary_api_key"] = key
        # a saved key goes with its server: never to another one the key was not given for
        drop_key = bool(not key and saved_key and not key_pinned and "primary_url" in changes
                        and _endpoint(changes["primary_url"]) != _endpoint(settings.primary_url))
        if drop_key:
            changes["primary_api_key"] = ""
        refused = _refusal(changes, page_host)
        if refused:
            gr.Warning(refused)
            return (self.status(), f"❌ Not saved: {refused}", *self._infos())
        if not changes:
            return (self.status(), "Nothing to save: the values are the saved ones.", *self._infos())
        try:
            self.manager.update_settings(**changes)
        except FallbackError as exc:
            return (self.status(), fmt.failure(exc, "Saving the main API") + "  \nNothing was saved.",
                    *self._infos())
        settings = self.manager.settings
        message = "✅ Saved " + ", ".join(f"{f} = {_shown(getattr(settings, f))}" for f in changes) + \
            "; the next chat uses it."
        if "cors_origins" in changes:
            message += ("  \nA serve started with these tabs lets those pages in at once; a serve "
                        "started apart reads them when it starts again.")
        if drop_key:
            message += ("  \nThe saved API key was for the server before: it is forgotten, so that it "
                        "is not sent to this one. Type this server's key if it needs one.")
        if key and key_pinned:
            message += (f"  \nThe API key typed is not saved: {settings.env_name('primary_api_key')} sets "
                        "the one in use.")
        if settings.primary_url and settings.primary_api == "ollama" and not settings.primary_model:
            message += ("  \n⚠️ Ollama answers only a request that names one of its models: a chat "
                        "that names none (Try the fallback, Z-WAIF's Oobabooga mode) is sent as "
                        "\"default\" and refused. Give the model to ask for (`ollama list` names them).")
        return (self.status(), message, *self._updates())

    def forget_key(self) -> tuple[Any, ...]:
        """Forget the saved API key (one pinned by the environment stays)."""
        settings = self.manager.settings
        if fmt.pinned(settings, "primary_api_key"):
            return (self.status(), f"The API key in use is set by {settings.env_name('primary_api_key')} "
                    "(or the host program), not saved here: unset it to change it.", *self._updates())
        try:
            self.manager.reset_settings(fields=["primary_api_key"])
        except FallbackError as exc:
            return (self.status(), fmt.failure(exc, "Forgetting the API key"), *self._infos())
        return (self.status(), "✅ The saved API key is forgotten.", *self._updates())

    def _updates(self) -> list[dict[str, Any]]:
        """Each control's value and note, in the controls' order; the API key's value is never
        sent to the page, only whether one is saved."""
        settings = self.manager.settings
        updates = fmt.setting_updates(settings, MAIN_API_FIELDS)
        updates.insert(KEY_AT, gr.update(value="", info=_key_note(settings),
                                         interactive=not fmt.pinned(settings, "primary_api_key")))
        return updates

    def _infos(self) -> list[dict[str, Any]]:
        """The controls' notes only: a refused save leaves what the person typed in place."""
        return [gr.update(info=u["info"]) for u in self._updates()]


def main_api_markdown(settings: FallbackSettings, breakers: dict[str, dict[str, Any]],
                      probes: Sequence[UpstreamProbe] = ()) -> str:
    """Where chats go (``chain_text``), whether they skip the main API now, and what each
    server's probe found; ``breakers``: each target's, by name (a host's own API call shows
    there as ``host:<name>``)."""
    found = "".join(f"  \n{_probe_line(p)}" for p in probes)
    return _chain_markdown(settings, breakers) + found


def _chain_markdown(settings: FallbackSettings, breakers: dict[str, dict[str, Any]]) -> str:
    line = chain_text(settings)
    line = line[0].upper() + line[1:] + "."
    calls = sorted(name for name in breakers if name.startswith(HOST_PREFIX))
    if calls:  # a host that embeds the tabs: its own call is the primary of its chats
        named = ", ".join(f"`{c}`" + (f": {_trouble(breakers[c])}" if _trouble(breakers[c]) else "")
                          for c in calls)
        line = (f"This host's own API call ({named}) answers its chats first. Chats without it "
                f"(serve, Try the fallback): {line[0].lower()}{line[1:]}")
    if not settings.primary_url:
        return (f"{line} To run serve in front of your main API, give the URL the host used before "
                f"({USUAL_MAIN_APIS}) and point the host at serve.")
    # a host may only chat, or only complete text (Z-WAIF's pre-release, alpaca): either breaker
    theirs = [breakers[name] for name in primary_breakers(breakers, settings.primary_url)]
    worst = max(theirs, key=lambda b: SEVERITY.index(b["state"]), default=None)
    trouble = _trouble(worst) if worst else ""
    return f"{line}  \nThe main API {trouble}" if trouble else line


def _probe_line(found: UpstreamProbe) -> str:
    """One server's probe: whether it answers, its models, and what to do about a problem."""
    who = "The main API" if found.server.source == "primary" else found.server.url
    if not found.answered:
        return f"{who} 🔴 {found.problem} — {found.advice}."
    more = len(found.models) - SHOWN_MODELS
    names = ", ".join(f"`{m}`" for m in found.models[:SHOWN_MODELS])
    names += f" and {more} more" if more > 0 else ""
    listed = f"models: {names}" if found.models else "no models listed"
    warning = f"  \n⚠️ It {found.problem}: {found.advice}." if found.problem else ""
    return f"{who} ✅ answers ({listed}).{warning}"


def _trouble(breaker: dict[str, Any]) -> str:
    """What a breaker's state means for the chats, or "" when its target answers."""
    if breaker.get("state") == "open":
        checking = "it is being checked now" if breaker.get("probing") else \
            f"it is tried again in {float(breaker.get('retry_in_s') or 0.0):.0f} s"
        return (f"🔴 failed {breaker.get('failures', 0)} times in a row: chats skip it and the fallback "
                f"answers; {checking}.")
    if breaker.get("state") == "half_open":
        return "🟡 failed before: the next chat tries it again."
    return ""


def _refusal(changes: dict[str, Any], page_host: str | None) -> str | None:
    """Why ``changes`` cannot be saved, or None."""
    here = _endpoint(f"//{page_host}") if page_host else None
    own = [u for u in [changes.get("primary_url", ""), *changes.get("remote_urls", [])]
           if u and here and _endpoint(u) == here]
    if own:
        return (f"{own[0]} is this page's own address, so each chat would be sent back here. Give the "
                f"server your host used before ({USUAL_MAIN_APIS}), and point the host at this address.")
    folder = unquoted(changes.get("characters_dir"))
    if folder and not expanded(folder).is_dir():
        return (f"the characters folder {folder} does not exist. Give text-generation-webui's folder "
                "(or its characters folder), or leave it empty.")
    return None


def _key_note(settings: FallbackSettings) -> str:
    if fmt.pinned(settings, "primary_api_key"):
        return fmt.setting_note(settings, "primary_api_key")
    if settings.primary_api_key.get_secret_value():
        return "a key is saved: type another to replace it, or forget it"
    return "none saved (most servers on this PC need none; TabbyAPI and --api-key servers do)"


def _endpoint(url: str) -> tuple[str, int | None]:
    """Whom a URL (or ``//host:port``) reaches: its host, "loopback" for any name of this
    machine ("localhost" and "127.0.0.1" are one), and its port."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # not a number: the URL's own check refuses it
        port = None
    return ("loopback" if is_loopback(host) else host, port)


def _listed(value: Any) -> list[str]:
    """A text field's comma- or space-separated values."""
    return [v for v in map(_typed, _URL_SEPARATORS.split(fmt.text(value))) if v]


def _typed(value: Any) -> str:
    """A text field's value, without the quotes Windows' "Copy as path" puts around it."""
    return fmt.text(value).strip("\"'").strip()


def _shown(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value) if value else "(none)"
    if isinstance(value, SecretStr):
        return "********" if value.get_secret_value() else "(none)"
    return str(value) if value != "" else "(empty)"


@dataclass
class MainApiSection:
    """The section's components, and how to bind them once the tab exists."""

    status: gr.Markdown
    controls: list[gr.components.Component]
    save: gr.Button
    forget_key: gr.Button
    check: gr.Button
    message: gr.Markdown

    def bind(self, manager: FallbackManager, tab: gr.Tab) -> None:
        """Bind the events; the servers are checked again whenever ``tab`` (the section's) is
        shown. The page's controls come first, and the status with the probes a moment later."""
        h = MainApiHandlers(manager)
        compat.on_page_load(h.load, [self.status, *self.controls]).then(h.check, outputs=self.status,
                                                                         **compat.PRIVATE)
        compat.on_show(tab, h.check, [self.status])
        self.check.click(h.check, outputs=self.status, api_name="fallback_check_main_api")
        outputs = [self.status, self.message, *self.controls]

        def save(primary_url: str, primary_api: str, primary_model: str, api_key: str, remote_urls: str,
                 characters_dir: str, cors_origins: str, request: gr.Request) -> tuple[Any, ...]:
            page_host = request.headers.get("host") if request is not None else None
            return h.save(primary_url, primary_api, primary_model, api_key, remote_urls, characters_dir,
                          cors_origins, page_host=page_host)

        self.save.click(save, inputs=self.controls, outputs=outputs, api_name="fallback_save_main_api"
                        ).then(h.check, outputs=self.status, **compat.PRIVATE)
        self.forget_key.click(h.forget_key, outputs=outputs, **compat.PRIVATE
                              ).then(h.check, outputs=self.status, **compat.PRIVATE)


def build_main_api_section(eid: Callable[[str], str]) -> MainApiSection:
    """Build the section inside the caller's tab; ``eid`` names its elements."""
    gr.Markdown("## Main API")
    status = gr.Markdown(elem_id=eid("api-status"))
    with gr.Row():
        url = gr.Textbox(label="Main API URL", placeholder="http://127.0.0.1:5000/v1", scale=2,
                         elem_id=eid("api-url"))
        speaks = gr.Dropdown(API_CHOICES, value="openai", label="It speaks", scale=2,
                             elem_id=eid("api-speaks"))
        model = gr.Textbox(label="Model to ask it for (blank: the one the host names)", scale=1,
                           elem_id=eid("api-model"))
    with gr.Row():
        key = gr.Textbox(label="Its API key (blank: keep the saved one)", type="password", scale=1,
                         elem_id=eid("api-key"))
        remotes = gr.Textbox(label="More servers to try before a local model (comma-separated URLs)",
                             placeholder="http://192.168.1.20:1234/v1", scale=1, elem_id=eid("api-remotes"))
        characters = gr.Textbox(label="text-generation-webui's folder (the characters a host names)",
                                placeholder="C:/text-generation-webui", scale=1,
                                elem_id=eid("api-characters"))
    origins = gr.Textbox(label="Web pages that may call serve from a browser (origins, comma-separated; this "
                               "PC's own pages always may)", placeholder="https://amica.arbius.ai",
                         elem_id=eid("api-origins"))
    with gr.Row():
        save = gr.Button("💾 Save Main API", variant="primary", scale=3, elem_id=eid("api-save"))
        forget_key = gr.Button("Forget the API key", scale=1, elem_id=eid("api-forget-key"))
        check = gr.Button("🔄 Check again", scale=1, elem_id=eid("api-check"))
    message = gr.Markdown(elem_id=eid("api-message"))
    return MainApiSection(status=status, controls=[url, speaks, model, key, remotes, characters, origins],
                          save=save, forget_key=forget_key, check=check, message=message)
