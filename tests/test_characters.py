"""text-generation-webui's characters: the persona a host names by ``character`` reaches
the local models as text-generation-webui would have put it before the chat."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from zwaif_fallback import characters
from zwaif_fallback.characters import find_character, persona, persona_messages, with_persona

CHAT = {"mode": "chat", "character": "Waifu"}
ASK = [{"role": "user", "content": "Hello!"}]


def install(root: Path, layout: str = "user_data/characters", name: str = "Waifu",
            text: str = "name: Aria\ncontext: |-\n  {{char}} is a fox spirit who teases {{user}}.\n"
                        "  <BOT> never admits being an AI to <USER>.\n") -> Path:
    folder = root / layout
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("layout", ["user_data/characters", "characters", ""])
def test_a_characters_file_is_found_in_each_text_generation_webui_layout(tmp_path: Path, layout: str):
    path = install(tmp_path, layout, "Waifu.yaml")
    assert find_character(tmp_path, "Waifu") == path
    assert persona(CHAT, tmp_path) == ("Aria is a fox spirit who teases You.\n"
                                       "Aria never admits being an AI to You.")


def test_the_requests_names_and_context_win_over_the_files(tmp_path: Path):
    install(tmp_path, name="Waifu.yml")
    assert persona({**CHAT, "user_name": "Sam", "bot_name": "Kit"}, tmp_path) == (
        "Kit is a fox spirit who teases Sam.\nKit never admits being an AI to Sam.")
    assert persona({**CHAT, "context": "{{char}} helps {{user}}."}, tmp_path) == "Aria helps You."
    # with no name in the file, the character's own name is the bot's
    install(tmp_path, name="Nameless.json", text=json.dumps({"context": "{{char}} and {{user}}"}))
    assert persona({"mode": "chat", "character": "Nameless"}, tmp_path) == "Nameless and You"


def test_a_json_card_saved_with_a_bom_is_read(tmp_path: Path):
    # Windows editors and PowerShell 5.1 save UTF-8 with a BOM, which json.loads refuses
    card = json.dumps({"name": "Aria", "context": "{{char}} hums."})
    install(tmp_path, name="Waifu.json", text="\ufeff" + card)
    assert persona(CHAT, tmp_path) == "Aria hums."


def test_the_persona_goes_before_the_chat_and_keeps_the_hosts_system_message(tmp_path: Path):
    install(tmp_path, name="Waifu.yaml", text="context: Be Aria.\n")
    assert persona_messages(ASK, CHAT, tmp_path) == [{"role": "system", "content": "Be Aria."}, *ASK]
    own = [{"role": "system", "content": "It is night."}, *ASK]
    assert persona_messages(own, CHAT, str(tmp_path)) == [
        {"role": "system", "content": "Be Aria.\n\nIt is night."}, *ASK]


@pytest.mark.parametrize("content, joined", [
    ([{"type": "text", "text": "It is night."}],
     [{"type": "text", "text": "Be Aria.\n\n"}, {"type": "text", "text": "It is night."}]),
    (None, "Be Aria."),
])
def test_a_host_s_system_message_in_any_form_stays_the_one_system_message(content: object, joined: object):
    # a remote is sent the host's own messages: a second system message, or one not first,
    # is refused by many chat templates (Mistral's, Gemma's)
    own = [{"role": "system", "content": content}, *ASK]
    assert with_persona(own, "Be Aria.") == [{"role": "system", "content": joined}, *ASK]


@pytest.mark.parametrize("request_", [
    {"character": "Waifu"},                        # text-generation-webui's API defaults to instruct
    {"mode": "instruct", "character": "Waifu"},    # which reads the request's system message
    {"mode": "chat"},                              # no character
    {"mode": "chat", "character": "None"},         # Z-WAIF's "no task character"
    {"mode": "chat", "character": "../Waifu"},     # a path, not a name
    {"mode": ["chat"], "character": ["Waifu"]},    # not text at all
], ids=["no-mode", "instruct", "no-character", "None", "path", "lists"])
def test_requests_that_name_no_usable_character_are_left_as_they_are(tmp_path: Path, request_: dict):
    install(tmp_path / "inner", name="Waifu.yaml")
    install(tmp_path / "inner" / "sub", layout="", name="Waifu.yaml")
    assert persona_messages(ASK, request_, tmp_path / "inner" / "sub") == ASK


@pytest.mark.parametrize("folder, file, says", [
    (None, None, "characters_dir is not set"),
    ("chars", None, "no character 'Waifu' in"),
    ("chars", "context: [unclosed\n", "cannot read the character file"),
    ("chars", "- a list\n", "is not a mapping of fields"),
    ("chars", b"\xff\xfe\x00", "cannot read the character file"),
], ids=["no-folder", "missing", "bad-yaml", "not-a-mapping", "not-utf8"])
def test_a_character_that_cannot_be_read_is_answered_without_saying_why_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
        folder: str | None, file: str | bytes | None, says: str):
    monkeypatch.setattr(characters, "_warned", set())  # another test may have said it already
    where = None if folder is None else tmp_path / folder
    if where is not None:
        where.mkdir()
        if isinstance(file, bytes):
            (where / "Waifu.yaml").write_bytes(file)
        elif file is not None:
            (where / "Waifu.yaml").write_text(file, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="zwaif_fallback.characters"):
        assert persona_messages(ASK, CHAT, where) == ASK
        assert persona_messages(ASK, CHAT, where) == ASK
    said = [r.getMessage() for r in caplog.records if says in r.getMessage()]
    assert len(said) == 1 and "without its persona" in said[0], caplog.text


def test_an_edited_character_file_is_read_again(tmp_path: Path):
    path = install(tmp_path, name="Waifu.yaml", text="context: Be Aria.\n")
    assert persona(CHAT, tmp_path) == "Be Aria."
    assert persona(CHAT, tmp_path) == "Be Aria."  # parsed once, from the cache
    path.write_text("context: Be Aria, the fox spirit.\n", encoding="utf-8")
    assert persona(CHAT, tmp_path) == "Be Aria, the fox spirit."
