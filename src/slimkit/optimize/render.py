"""What a search prints at the end: the front, the chosen model, and what the trials did."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.table import Table

from slimkit.progress import stdout_console
from slimkit.report.formats import number
from slimkit.results import Candidate, RunResults


def _objective_cell(c: Candidate, objective: str) -> str:
    r = c.ratios
    if objective == "size":
        return f"{(c.size_bytes or 0) / 1e6:.2f} MB"
    if objective == "memory":
        return f"{c.bench.peak_rss_mb:.0f} MB" if c.bench and c.bench.peak_rss_mb else "n/a"
    value = getattr(r, objective, None) if r else None
    return f"{value:.2f}×" if value is not None else "n/a"


def front_rows(results: RunResults) -> list[list[str]]:
    """One row per candidate on the front, best first: name, runtime, chain, quality,
    objective, size ratio."""
    s = results.search
    if s is None:
        return []
    metric = results.primary_metric or ""
    rows = []
    by_name = {c.name: c for c in results.candidates}
    for name in sorted(s.front, key=lambda n: n != s.best):
        c = by_name[name]
        chain = " → ".join(st.step for st in c.steps if not st.step.startswith("export_")
                           and st.step != "save") or "as is"
        q = number((c.quality or {}).get(metric))
        size = c.ratios.size if c.ratios else None
        rows.append([name + (" (best)" if name == s.best else ""), c.runtime, chain,
                     f"{q:.4f}" if q is not None else "n/a", _objective_cell(c, s.objective),
                     f"{size:.2f}×" if size is not None else "n/a"])
    return rows


def trial_counts(results: RunResults) -> dict[str, int]:
    s = results.search
    return dict(Counter(t.state for t in s.trials)) if s else {}


def print_search(results: RunResults, console: Any = None) -> None:
    s = results.search
    if s is None:
        return
    out = console or stdout_console()
    metric = results.primary_metric or "quality"
    table = Table(title=f"Pareto front: {metric} × {s.objective} × size, within "
                        f"{', '.join(f'{k}={v}' for k, v in s.budget.items() if v is not None)}")
    for head in ("candidate", "runtime", "steps", metric, s.objective, "size"):
        table.add_column(head)
    for row in front_rows(results):
        table.add_row(*row)
    out.print(table)
    counts = ", ".join(f"{n} {k}" for k, n in sorted(trial_counts(results).items()))
    minutes = f" in {s.minutes:.1f} min" if s.minutes is not None else ""
    out.print(f"{len(s.trials)} trials ({counts}){minutes}, {s.runs} run(s), workers: "
              f"{s.workers}", highlight=False)
    if s.best:
        out.print(f"best: {s.best} → {s.best_dir}/ (MODEL_CARD.md beside the model)",
                  highlight=False)
    else:
        out.print("no finalist met the budget; nothing written to best/", highlight=False)


def print_advice(profile: Any, advice: Any, console: Any = None) -> None:
    from slimkit.optimize.profile_render import print_profile

    out = console or stdout_console()
    print_profile(profile, out)
    for idea in advice.ideas:
        out.print(f"[bold]try[/bold] {idea.id} on {', '.join(idea.runtimes)}")
        for reason in idea.reasons:
            out.print(f"  - {reason}", highlight=False)
    for note in advice.notes:
        out.print(f"[bold]note[/bold] {note}", highlight=False)
    for skip in advice.skipped:
        out.print(f"[bold]left out[/bold] {skip}", highlight=False)
