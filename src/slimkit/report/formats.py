"""How each kind of figure reads, in the terminal summary, the Markdown and the HTML alike.

One function per kind of number, so two views of one run can never round differently or
disagree on units: a megabyte is 10^6 bytes everywhere.
"""

from __future__ import annotations

import math
from typing import Any

DASH = "—"
MB = 1_000_000  # bytes; the unit people compare against download and disk sizes


def number(value: Any) -> float | None:
    """Failed or partial measurements arrive as None, NaN or text; all of them are missing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_ratio(value: Any) -> str:
    x = number(value)
    return DASH if x is None else f"{x:.2f}×"


def format_latency(value: Any) -> str:
    """Milliseconds: two decimals below 10 ms, where they still mean something."""
    x = number(value)
    return DASH if x is None else f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}"


def format_rate(value: Any) -> str:
    """Items per second, with the latency's precision rule."""
    return format_latency(value)


def format_size(nbytes: Any) -> str:
    """Bytes in MB (10^6 bytes); the unit goes in the column title."""
    x = number(nbytes)
    return DASH if x is None else f"{x / MB:.1f}"


def format_megabytes(value: Any) -> str:
    """A figure already recorded in MB, such as peak resident memory."""
    x = number(value)
    return DASH if x is None else f"{x:.1f}"


def format_seconds(value: Any) -> str:
    x = number(value)
    return DASH if x is None else f"{x:.2f}"


def format_quality(key: str, value: Any) -> str:
    """Each metric family is read differently, so each gets the precision people expect."""
    x = number(value)
    if x is None:
        return DASH
    name = key.lower()
    if name.endswith("_delta"):
        return f"{x:+.2f} pt"
    if "accuracy" in name or "agreement" in name:
        # Fractions (0..1) are shown as percentages; values already in percent pass through.
        return f"{x * 100 if abs(x) <= 1 else x:.2f}%"
    if "cosine" in name:
        return f"{x:.4f}"
    if name.endswith("_db"):
        return f"{x:.1f} dB"
    return f"{x:.4g}"


def format_cell(value: Any) -> str:
    """A value of a technique's own table, whose type only the technique knows."""
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def shorten(text: Any, limit: int) -> str:
    """Tracebacks would wreck a table row; the lineage section keeps the full message."""
    text = " ".join(str(text).split())
    return text[: limit - 1] + "…" if len(text) > limit else text
