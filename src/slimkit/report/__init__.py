"""Human-readable reports of a run, built from results.json alone so they can be re-rendered
later, on another machine, without the models."""

from __future__ import annotations

from slimkit.report.html import render_html
from slimkit.report.markdown import render_markdown

__all__ = ["render_html", "render_markdown"]
