"""Texts made safe to tokenise: undecodable bytes and control characters repaired, length cut.

``inspect_text`` names what is wrong (kinds of ``mmcore.data.problems.KINDS``) and
``clean_text`` applies the documented fix, so the report and the collator agree.
"""
from __future__ import annotations

import re

from mmcore.data.problems import BadInput

CHARS_PER_TOKEN = 16  # a token covers at least one character, so the cut keeps every token used
# C0 controls and DEL except tab, newline and carriage return (which are whitespace)
CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def max_text_chars(max_text_length: int) -> int:
    """Characters kept of a text: more than ``max_text_length`` tokens can ever use."""
    return CHARS_PER_TOKEN * max_text_length


def has_invalid_utf8(text: str) -> bool:
    """True if ``text`` holds undecodable bytes (lone surrogates, as ``surrogateescape`` reads)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def repair_utf8(text: str) -> str:
    """Each undecodable byte (or lone surrogate) as U+FFFD."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte, e.g. JSON "\\ud800"
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def inspect_text(text: str | None, max_chars: int) -> list[BadInput]:
    """What is wrong with one text: absent, blank, undecodable bytes, controls, too long."""
    if not text:
        return [BadInput("empty_text", "no text")]
    if not CONTROL.sub("", text).strip():
        return [BadInput("whitespace_text", f"text is only whitespace or control characters "
                                            f"({len(text)} characters)")]
    found = []
    if has_invalid_utf8(text):
        found.append(BadInput("non_utf8_text", "bytes that are not UTF-8; replaced by U+FFFD"))
    controls = CONTROL.findall(text)
    if controls:
        shown = ", ".join(sorted({f"U+{ord(c):04X}" for c in controls}))
        found.append(BadInput("control_text", f"{len(controls)} control character(s) "
                                              f"({shown}); removed"))
    if len(text) > max_chars:
        found.append(BadInput("long_text", f"{len(text)} characters; cut to {max_chars}"))
    return found


def clean_text(text: str, max_chars: int) -> str:
    """The ``fix`` of a usable text: bytes repaired, control characters removed, cut."""
    if has_invalid_utf8(text):
        text = repair_utf8(text)
    return CONTROL.sub("", text)[:max_chars]


__all__ = ["CHARS_PER_TOKEN", "clean_text", "has_invalid_utf8", "inspect_text",
           "max_text_chars", "repair_utf8"]
