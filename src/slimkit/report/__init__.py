"""Human-readable reports of a run, built from results.json alone so they can be re-rendered
later, on another machine, without the models."""

from __future__ import annotations

from pathlib import Path

from slimkit.io import atomic_write_text
from slimkit.report.html import render_html
from slimkit.report.markdown import render_markdown
from slimkit.results import RunResults

__all__ = ["render_html", "render_markdown", "write_reports"]


def write_reports(folder: Path, results: RunResults) -> None:
    """report.md and report.html beside a run's results.json."""
    atomic_write_text(folder / "report.md", render_markdown(results))
    atomic_write_text(folder / "report.html", render_html(results))
