from __future__ import annotations

from zwaif_fallback.model_info import displayable


def test_a_byte_that_is_not_utf8_is_shown_as_its_escape():
    # how a Linux name from a cp1252 zip reaches Python: the byte 0xE9 as the surrogate \udce9
    assert displayable("mod\udce9le") == "mod\\xe9le"
    assert displayable("Modèle-7B") == "Modèle-7B"


def test_a_surrogate_that_stands_for_no_byte_is_escaped_too():
    # Windows names are UTF-16 and may hold a lone surrogate, which stands for no byte
    assert displayable("a\ud800b") == "a\\ud800b"
