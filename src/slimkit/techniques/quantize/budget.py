"""The accuracy-aware search that keeps sensitive layers in float until a quality budget holds,
on the rows it chose them with and on rows it never looked at (`heldout`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from slimkit.evaluate.fidelity import Budget, Fidelity, accuracy_targets, score
from slimkit.progress import progress_bar
from slimkit.techniques.allocate import greedy
from slimkit.techniques.quantize.layer_costs import LayerCosts, equal

__all__ = ["Budget", "Fallback", "Outputs", "Rows", "SearchResult", "float_order",
           "keep_sensitive_in_float", "search_report"]

Fallback = Literal["latency", "sensitivity"]
# (quantize only these, or all when None; keep these in float) -> what the trial measured
Outputs = Callable[[list[str] | None, list[str]], np.ndarray]
Evaluate = Callable[[list[str] | None, list[str]], Fidelity]


@dataclass
class SearchResult:
    kept_float: list[str]
    quality: Fidelity  # on the search rows
    layers: list[dict[str, Any]] = field(default_factory=list)
    tried: int = 0
    heldout: Fidelity | None = None  # the final choice on the held-out rows, when checked
    costs: LayerCosts | None = None  # what ranked the layers, when they had to be ranked


@dataclass(frozen=True)
class Rows:
    """Check rows: the float model's outputs there, their labels, and the trial's outputs."""

    reference: np.ndarray
    labels: np.ndarray | None
    outputs: Outputs


def float_order(layers: list[str], sensitivity: dict[str, float],
                shares: dict[str, float]) -> list[str]:
    """The order layers go back to float: most error removed per share of run time first,
    by the allocator every budgeted search shares. With equal shares this is a sort by
    sensitivity, ties in the layers' order."""
    damage = {n: {"int8": sensitivity[n], "float": 0.0} for n in layers}
    # a layer the profile timed at zero still costs something, or it could never be bought
    cost = {n: {"int8": 0.0, "float": max(shares[n], 1e-9)} for n in layers}
    start = dict.fromkeys(layers, "int8")
    return [step.unit for step in greedy(damage, start, cost, buy=True)]


def keep_sensitive_in_float(layers: list[str], budget: Budget, evaluate: Evaluate, *,
                            heldout: Callable[[list[str]], Fidelity] | None = None,
                            costs: Callable[[], LayerCosts] | None = None) -> SearchResult:
    """Quantize everything; if the budget fails, rank layers by the error each causes when
    quantized alone (per share of run time when `costs` measures it), then keep them in
    float in that order until the budget holds on the search rows and, given `heldout`
    (quantize all but these, score on held-out rows), on the held-out rows too.

    Layers' errors do not add up (two layers' noise may cancel or compound), so the walk down
    the ranking stops on the measured model, not on summed sensitivities.
    `evaluate(only, exclude)` quantizes the layers in `only` (all when None) except `exclude`
    and returns the quality against the float model on the search rows.
    """
    full = evaluate(None, [])
    held = heldout([]) if heldout is not None and full.within(budget) else None
    if full.within(budget) and (held is None or held.within(budget)):
        rows = [{"layer": n, "sensitivity": None, "precision": "int8"} for n in layers]
        return SearchResult([], full, rows, 1 + (held is not None), held)
    sensitivity: dict[str, float] = {}
    with progress_bar("layer sensitivity", total=len(layers)) as advance:
        for name in layers:
            sensitivity[name] = evaluate([name], []).error(budget)
            advance(1, name[-40:])
    ranking = costs() if costs is not None else equal(layers, "ranked by sensitivity alone")
    order = float_order(layers, sensitivity, ranking.shares)
    failed = {order[0]: "search" if held is None else "held-out"} if order else {}
    kept: list[str] = []
    quality = full
    tried = 1 + (held is not None) + len(layers)
    with progress_bar("keeping layers in float", total=len(layers)) as advance:
        for name in order:
            kept.append(name)
            quality, held = evaluate(None, kept), None
            tried += 1
            if quality.within(budget) and heldout is not None:
                held = heldout(kept)
                tried += 1
            advance(1, f"{len(kept)} in float, error {quality.error(budget):.4g}")
            if quality.within(budget) and (held is None or held.within(budget)):
                break
            if len(kept) < len(order):
                failed[order[len(kept)]] = "search" if held is None else "held-out"
    if heldout is not None and held is None:  # the walk ended with the search rows failing
        held = heldout(kept)
        tried += 1
    rows = _layer_rows(order, sensitivity, ranking, kept, failed)
    return SearchResult(kept, quality, rows, tried, held, ranking)


def _layer_rows(order: list[str], sensitivity: dict[str, float], costs: LayerCosts,
                kept: list[str], failed: dict[str, str]) -> list[dict[str, Any]]:
    """Per layer, most sensitive first: its error, its time share, and why it is where."""
    rule = "error per share of run time" if costs.measured else "error"
    rows = []
    for rank, name in enumerate(order, 1):
        if name in kept:
            why = (f"#{rank} by {rule}; the budget failed on the {failed[name]} rows "
                   "before it")
        else:
            why = f"#{rank} by {rule}; the budget held before its turn"
        rows.append({"layer": name, "sensitivity": sensitivity[name],
                     "time_share": costs.shares[name] if costs.measured else None,
                     "precision": "float" if name in kept else "int8", "float_rank": rank,
                     "why": why})
    return sorted(rows, key=lambda r: -r["sensitivity"])


def _checker(rows: Rows, budget: Budget) -> Callable[[list[str]], Fidelity]:
    """Quantize all but the given layers and score the held-out rows."""
    targets = accuracy_targets(budget, rows.reference, rows.labels)
    return lambda exclude: score(rows.outputs(None, exclude), rows.reference, targets)


def search_report(layers: list[str], budget: Budget, reference: np.ndarray,
                  labels: np.ndarray | None, outputs: Outputs, *, heldout: Rows | None = None,
                  costs: Callable[[], LayerCosts] | None = None) -> dict[str, Any]:
    """Run the search with every trial scored against the float model's `reference` outputs
    on the search rows (`outputs(only, exclude)` quantizes as `evaluate` above and runs
    them), and the final choice checked on the `heldout` rows."""
    targets = accuracy_targets(budget, reference, labels)
    check = None if heldout is None else _checker(heldout, budget)
    result = keep_sensitive_in_float(
        layers, budget, lambda only, exclude: score(outputs(only, exclude), reference, targets),
        heldout=check, costs=costs)
    held_rows = 0 if heldout is None else len(heldout.reference)
    report: dict[str, Any] = {
        "kept_float": result.kept_float, "budget": budget.model_dump(),
        "cosine": result.quality.cosine, "accuracy_drop": result.quality.accuracy_drop,
        "within_budget": result.quality.within(budget), "trials": result.tried,
        "layers": result.layers, "checked_on": len(reference) + held_rows,
        "search_rows": len(reference), "heldout_rows": held_rows,
        "all_float": bool(layers) and len(result.kept_float) == len(layers)}
    if result.quality.accuracy_drop is not None:
        report["drop_against"] = "labels" if labels is not None else "float top-1"
    if result.heldout is not None:
        report.update(heldout_cosine=result.heldout.cosine,
                      heldout_accuracy_drop=result.heldout.accuracy_drop,
                      within_budget_heldout=result.heldout.within(budget))
    if result.costs is not None:
        report["fallback"] = "latency" if costs is not None else "sensitivity"
        report["layer_costs"] = result.costs.source
    return report
