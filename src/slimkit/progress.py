"""Progress bars for long work (calibration, training, evaluation, benchmarks).

Bars go to stderr and vanish when output is not a terminal, so logs and CI stay readable.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def stdout_console() -> Console:
    """Tables go to stdout; off a terminal (logs, CI) they get room so no column is cut."""
    out = Console()
    return out if out.is_terminal else Console(width=200)


@contextlib.contextmanager
def progress_bar(title: str, total: float | None) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, note="")`; the note shows beside the bar (a loss, a candidate)."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[note]}")]
    with Progress(*columns, console=console, transient=False,
                  disable=not sys.stderr.isatty()) as prog:
        task = prog.add_task(title, total=total, note="")

        def advance(n: float = 1, note: str = "") -> None:
            prog.update(task, advance=n, note=note)

        yield advance
