"""Texts made safe to tokenise: blank, undecodable, control characters, too long."""
from mmcore.data.texts import clean_text, inspect_text

LONG = "word " * 20_000  # 100k characters


def test_texts_are_classified_and_fixed():
    assert [b.kind for b in inspect_text(None, 100)] == ["empty_text"]
    assert [b.kind for b in inspect_text("", 100)] == ["empty_text"]
    assert [b.kind for b in inspect_text(" \n\t", 100)] == ["whitespace_text"]
    assert inspect_text("fine", 100) == []
    broken = b"caf\xe9 \xff!".decode("utf-8", "surrogateescape")
    assert [b.kind for b in inspect_text(broken + LONG, 100)] == ["non_utf8_text", "long_text"]
    fixed = clean_text(broken + LONG, 100)
    assert len(fixed) == 100 and fixed.startswith("caf\ufffd \ufffd!")
    fixed.encode("utf-8")  # what a tokenizer needs
    assert clean_text("\ud800 escaped in JSON", 100).startswith("\ufffd")



def test_control_characters_are_reported_and_removed():
    text = "a cat\0 on a\x07 mat\x1b[0m\tand a dog\n"
    [bad] = inspect_text(text, 100)
    assert bad.kind == "control_text" and "U+0000, U+0007, U+001B" in str(bad)
    assert clean_text(text, 100) == "a cat on a mat[0m\tand a dog\n"  # tab, newline kept
    assert [b.kind for b in inspect_text("\0\0 \x7f", 100)] == ["whitespace_text"]
