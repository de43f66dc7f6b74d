"""A report section: facts, a table and a curve, rendered alike by the Markdown and HTML
reports."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DetailSection:
    title: str
    facts: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    numeric: list[bool] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)  # training loss per epoch
