"""The table printed at the end of a run: a narrower cut of the report's own table, with the
same cells, so the terminal and the reports never show one figure two ways."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from slimkit.progress import stdout_console
from slimkit.report.served import served_section
from slimkit.report.table import Column, columns, quality_keys
from slimkit.results import RunResults, as_results

SHOWN = ("Candidate", "Runtime", "Throughput ×", "Latency ×", "p50 ms", "p99 ms", "Items/s",
         "Size MB", "Size ×")
QUALITY_SHOWN = 3  # a terminal is narrow; the reports have them all
# Shown in the reports, but not worth a terminal column.
QUALITY_HIDDEN = {"max_abs_error"}


def quality_columns(results: RunResults) -> list[str]:
    keys = [k for k in quality_keys(results) if k not in QUALITY_HIDDEN]
    return keys[:QUALITY_SHOWN]


def summary_columns(results: RunResults) -> list[Column]:
    wanted = [*SHOWN, *quality_columns(results)]
    by_title = {col.title: col for col in columns(results)}
    return [by_title[t] for t in wanted if t in by_title]


def summary_table(results: RunResults | Mapping[str, Any]) -> Table:
    results = as_results(results)
    cols = summary_columns(results)
    t = Table(title=f"{results.name}: ratios vs {results.baseline} (measured in one run)",
              title_justify="left")
    for col in cols:
        t.add_column(col.title, justify="right" if col.numeric else "left")
    for c in results.candidates:
        name = c.name + (" (baseline)" if c.name == results.baseline else "")
        if c.failed:
            t.add_row(escape(name), escape(c.runtime), "[red]failed[/red]")
            continue
        cells = [escape(col.cell(c)) for col in cols]
        t.add_row(escape(name), *cells[1:])
    return t


def print_summary(results: RunResults | Mapping[str, Any], console: Console | None = None
                  ) -> None:
    results = as_results(results)
    console = console or stdout_console()
    console.print(summary_table(results))
    served = served_section(results)
    if served is not None:
        t = Table(title=f"{results.name}: served (slimkit serve under load)", title_justify="left")
        for head, num in zip(served.headers, served.numeric, strict=True):
            t.add_column(head, justify="right" if num else "left")
        for row in served.rows:
            t.add_row(*(escape(cell) for cell in row))
        console.print(t)
    for c in results.candidates:
        for note in c.cpu_notes:
            console.print(f"[yellow]* {escape(c.name)}:[/yellow] {escape(note)}", highlight=False)
    caps = results.machine.capabilities if results.machine else None
    if caps and caps.kind:
        console.print(f"CPU: {escape(caps.kind)}", highlight=False)
    for c in results.candidates:
        if c.failed:
            console.print(f"[red]{escape(c.name)} failed:[/red] {escape(c.error or '')}",
                          highlight=False)
