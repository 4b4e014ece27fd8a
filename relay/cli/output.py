"""Text for the operator's terminal: what came from the wire is printed escaped, JSON is indented."""

from __future__ import annotations

from typing import Any

import orjson

# Text from the wire (paths, reasons, partner answers, consumer names) reaches the operator's
# terminal escaped: C0 (tab and newline too: they are the tables' separators), DEL, C1 and the
# bidi/line-separator controls, so nothing printed can move the cursor, retitle the window, or
# hide or reorder text. JSON output gets the same as JSON escapes (orjson escapes C0 itself).
_UNSAFE = (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
_TEXT_ESCAPES = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" for c in _UNSAFE}
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in _UNSAFE if c >= 0x20}


def printable(value: object) -> str:
    """``value`` as text that is safe to print on a terminal (unsafe characters as ``\\x1b`` etc.)."""
    text = value if isinstance(value, str) else str(value)
    return text if text.isprintable() else text.translate(_TEXT_ESCAPES)


def json_safe(text: str) -> str:
    """JSON text with the control characters JSON lets through raw (DEL, C1, ...) as ``\\u`` escapes."""
    return text if text.isascii() and "\x7f" not in text else text.translate(_JSON_ESCAPES)


def json_text(data: Any) -> str:
    """Indented JSON for the operator; every control character is a JSON escape."""
    return json_safe(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=str).decode())
