"""text-generation-webui's characters, for the local models that stand in for it.

A host written for Oobabooga (Z-WAIF) sends no persona: it names a character
(``"character": "Aria", "mode": "chat"``) and text-generation-webui puts that character's
``context`` before the chat, as a system message, with ``{{char}}`` and ``{{user}}``
replaced by the two names. A local model that answered the bare messages would drop the
persona in the middle of a conversation. ``persona_messages`` gives the local models the
chat as text-generation-webui would have built it, from the same character file, found in
``characters_dir`` (the folder of text-generation-webui, or its characters folder).

The primary is sent the host's request as it came: it is the text-generation-webui the
host names the character to, and reads it itself. A remote may be any server (LM Studio,
Ollama), so it gets the persona too (``with_persona``), and so does a primary that speaks
Ollama's API; a text-generation-webui among the remotes ignores a system message in chat
mode and reads the character as the primary does (in chat-instruct mode it reads both).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .files import expanded, read_text

__all__ = ["CHAT_MODES", "find_character", "persona", "persona_messages", "with_persona"]

log = logging.getLogger(__name__)

#: text-generation-webui's modes that put a character's context before the chat (its
#: ``instruct`` mode uses the request's own system message instead).
CHAT_MODES = frozenset({"chat", "chat-instruct"})
#: Where a text-generation-webui install keeps its characters, newest layout first.
_LAYOUTS = ("", "user_data/characters", "characters")
_EXTENSIONS = ("yml", "yaml", "json")
_DEFAULT_USER = "You"  # text-generation-webui's default name1
_NAME = re.compile(r"^[^/\\:*?\"<>|\x00-\x1f]{1,200}$")  # one file name, no path
_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()
_parsed_cache: dict[tuple[str, int, int], Any] = {}  # (path, mtime, size) -> data (see _parsed)
_parsed_lock = threading.Lock()


def find_character(folder: Path, name: str) -> Path | None:
    """The file of character ``name`` under ``folder`` (a characters folder, or a
    text-generation-webui install), or None."""
    if not _NAME.match(name) or name.strip(". ") == "":
        return None
    for layout in _LAYOUTS:
        for extension in _EXTENSIONS:
            path = folder / layout / f"{name}.{extension}"
            if path.is_file():
                return path
    return None


def persona(request: Mapping[str, Any], folder: str | Path | None) -> str | None:
    """The system text text-generation-webui would put before the chat of ``request``, or
    None: not a chat-mode request, no character named, or its file not found (logged once
    per character, with what to do)."""
    mode = request.get("mode")
    if not isinstance(mode, str) or mode not in CHAT_MODES:  # a list is not hashable: no ``in``
        return None
    given = request.get("context")
    name = request.get("character")
    data: Mapping[str, Any] = {}
    if isinstance(name, str) and name not in ("", "None"):  # read even for a given context: the names
        data = _load(expanded(folder) if folder else None, name) or {}
    context = given if isinstance(given, str) and given else data.get("context")
    if not isinstance(context, str) or not context.strip():
        return None
    user = _first(request, ("user_name",)) or _first(data, ("your_name", "user", "<|user|>")) or _DEFAULT_USER
    bot = _first(request, ("bot_name",)) or _first(data, ("name", "bot", "<|bot|>", "char_name")) \
        or (name if isinstance(name, str) else "")
    text = context.strip()
    for marks, value in ((("{{user}}", "<USER>"), user), (("{{char}}", "<BOT>"), bot)):
        for mark in marks:
            text = text.replace(mark, value)
    return text


def persona_messages(messages: list[dict[str, Any]], request: Mapping[str, Any],
                     folder: str | Path | None) -> list[dict[str, Any]]:
    """``messages`` with the request's character before them, as a system message (joined
    to a leading system message the host sent, which stays), or unchanged."""
    text = persona(request, folder)
    return messages if text is None else with_persona(messages, text)


def with_persona(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``messages`` with the persona ``text`` before them, as a system message: joined to a
    leading system message the host sent, which stays (many chat templates refuse a second
    system message, or one that is not first)."""
    first = messages[0] if messages else {}
    if first.get("role") == "system":
        content = first.get("content")
        if isinstance(content, str):
            return [{**first, "content": f"{text}\n\n{content}"}, *messages[1:]]
        if isinstance(content, list):  # OpenAI's content parts
            return [{**first, "content": [{"type": "text", "text": f"{text}\n\n"}, *content]}, *messages[1:]]
        if content is None:
            return [{**first, "content": text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _load(folder: Path | None, name: str) -> Mapping[str, Any] | None:
    if folder is None:
        _warn_once(name, "", f"the request names the character {name!r}, but characters_dir is not set: "
                             "the fallback answers without its persona. Set characters_dir "
                             "(FALLBACK_CHARACTERS_DIR) to text-generation-webui's folder")
        return None
    path = find_character(folder, name)
    if path is None:
        _warn_once(name, str(folder), f"no character {name!r} in {folder} (looked for {name}.yaml, "
                                      ".yml and .json, also under user_data/characters and characters): "
                                      "the fallback answers without its persona")
        return None
    try:
        data = _parsed(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _warn_once(name, str(path), f"cannot read the character file {path}: {exc}; "
                                    "the fallback answers without its persona")
        return None
    if not isinstance(data, Mapping):
        _warn_once(name, str(path), f"the character file {path} is not a mapping of fields "
                                    "(name, context, ...); the fallback answers without its persona")
        return None
    return data


def _parsed(path: Path) -> Any:
    """The file's data, parsed again only when the file changed: every chat of a host names
    its character, and PyYAML takes about half a millisecond for a small one."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _parsed_lock:
        if key in _parsed_cache:
            return _parsed_cache[key]
    text = read_text(path)  # a card saved by a Windows editor may begin with a BOM
    data = json.loads(text) if path.suffix == ".json" else _yaml(text)
    with _parsed_lock:
        if len(_parsed_cache) >= 16:  # a host names a few characters; old versions go too
            _parsed_cache.clear()
        _parsed_cache[key] = data
    return data


def _yaml(text: str) -> Any:
    import yaml  # PyYAML, which huggingface_hub requires; loaded only for a character

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).replace("\n", " ")) from None


def _first(data: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def _warn_once(name: str, where: str, message: str) -> None:
    with _warned_lock:
        if (name, where) in _warned:
            return
        _warned.add((name, where))
    log.warning(message)
