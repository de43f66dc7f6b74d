"""Messages that quote what a user wrote: one line, bounded, without pydantic's internal tags.

The CLI promises one short line per error; values echoed from a recipe may be a megabyte long or
span lines, so every message that quotes one goes through these.
"""

from __future__ import annotations

import re
from typing import Any

# How pydantic names the member of a union (or a validator) it tried, inside a location:
# `alpha.constrained-float`, `steps.0.function-before[parse_step()]`. Not the user's words.
_TAG = re.compile(r"(constrained-\w+|function-[\w-]+\[.*\]|[\w-]+\[.*\]|float|int|str|bool|"
                  r"bytes|none)")


def field_path(loc: tuple[Any, ...] | list[Any]) -> list[Any]:
    """A pydantic error location as the recipe spells it, without union and validator tags."""
    return [p for p in loc if isinstance(p, int) or not _TAG.fullmatch(str(p))]


# Messages quote what the user wrote; a value may be a megabyte or span lines, and the CLI
# promises one short line.
MESSAGE_LIMIT = 400
# Everything str.splitlines() breaks at, and NUL, which terminals and logs mangle.
_BREAKS = str.maketrans(dict.fromkeys("\r\n\v\f\x1c\x1d\x1e\x85\u2028\u2029\x00", " "))


def clip(value: Any, limit: int = 80) -> str:
    """`str(value)` on one line, cut to `limit` characters."""
    try:
        text = value if isinstance(value, str) else str(value)
    except ValueError:  # an int with more digits than Python converts
        text = f"<{type(value).__name__} too long to show>"
    text = text.translate(_BREAKS)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters (repr escapes newlines, so it stays one line)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__} too long to show>"
    return clip(text, limit)


def one_line(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """A whole message as one line of at most `limit` characters."""
    return clip(text, limit)
