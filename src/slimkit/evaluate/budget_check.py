"""Whether a step's quality budget, met on calibration data, still holds on the evaluation data.

An accuracy-aware step checks its budget on calibration rows (the rows it searched on and rows
held out from the search). The run then measures the candidate on its own evaluation data,
which is what a reader compares the budget with; where the two disagree, the run says so in
one line rather than leave a budget that held only where it was fitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def evaluation_level(kind: str, quality: Mapping[str, Any]) -> float | None:
    """The run's own figure in the budget's unit: accuracy points lost against the baseline
    (against its labels, or without labels, disagreement with its top-1), or mean cosine."""
    if kind == "max_drop":
        if quality.get("accuracy_delta") is not None:
            return -float(quality["accuracy_delta"])
        if quality.get("agreement") is not None:
            return 100.0 * (1.0 - float(quality["agreement"]))
        return None
    for key in ("cosine", "mean_cosine"):
        if quality.get(key) is not None:
            return float(quality[key])
    return None


def budget_warnings(candidate: str, details: Mapping[str, Mapping[str, Any]],
                    quality: Mapping[str, Any] | None) -> list[str]:
    """One line per budgeted step whose budget the evaluation figure exceeds."""
    lines = []
    for label, report in details.items():
        budget = report.get("budget")
        if not isinstance(budget, Mapping):
            continue
        kind = "max_drop" if budget.get("max_drop") is not None else "min_cosine"
        bound = budget.get(kind)
        measured = evaluation_level(kind, quality or {})
        if bound is None or measured is None:
            continue
        exceeded = measured > bound if kind == "max_drop" else measured < bound
        if exceeded:
            lines.append(_line(candidate, label, kind, float(bound), measured, report))
    return lines


def _line(candidate: str, label: str, kind: str, bound: float, measured: float,
          report: Mapping[str, Any]) -> str:
    key = "accuracy_drop" if kind == "max_drop" else "cosine"
    search, held = report.get(key), report.get(f"heldout_{key}")
    figures = [f"{_fmt(search, kind)} search"] if search is not None else []
    if held is not None:
        figures.append(f"{_fmt(held, kind)} held out")
    met = report.get("within_budget") is not False \
        and report.get("within_budget_heldout") is not False
    where = f"{'held' if met else 'did not hold'} on calibration"
    if figures:
        where += f" ({' / '.join(figures)})"
    step = label.rpartition(":")[2]
    figure = (f"the evaluation drop is {_fmt(measured, kind)} points" if kind == "max_drop"
              else f"the evaluation cosine is {_fmt(measured, kind)}")
    return f"{candidate}: {step} budget {kind} {bound:g} {where} but {figure}"


def _fmt(value: float, kind: str) -> str:
    return f"{value:.2f}" if kind == "max_drop" else f"{value:.5f}"
