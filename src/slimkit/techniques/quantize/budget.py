"""The accuracy-aware search that keeps sensitive layers in float until a quality budget holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slimkit.evaluate.fidelity import Budget, Fidelity, accuracy_targets, score
from slimkit.progress import progress_bar

__all__ = ["Budget", "SearchResult", "keep_sensitive_in_float", "search_report"]


@dataclass
class SearchResult:
    kept_float: list[str]
    quality: Fidelity
    layers: list[dict[str, Any]] = field(default_factory=list)
    tried: int = 0


def _ranked(layers: list[str], sensitivity: dict[str, float]) -> list[str]:
    """Most error removed per layer kept in float first: the allocator's order when every
    layer costs the same, which is a sort."""
    return sorted(layers, key=lambda n: -sensitivity[n])


def keep_sensitive_in_float(layers: list[str], budget: Budget,
                            evaluate: Callable[[list[str] | None, list[str]], Fidelity],
                            ) -> SearchResult:
    """Quantize everything; if the budget fails, rank layers by the error each causes when
    quantized alone, then keep the worst in float, fewest first, until the budget holds.

    Layers' errors do not add up (two layers' noise may cancel or compound), so the walk down
    the ranking stops on the measured model, not on summed sensitivities.
    `evaluate(only, exclude)` quantizes the layers in `only` (all when None) except `exclude`
    and returns the quality against the float model.
    """
    full = evaluate(None, [])
    if full.within(budget):
        rows = [{"layer": n, "sensitivity": None, "precision": "int8"} for n in layers]
        return SearchResult([], full, rows, 1)
    sensitivity: dict[str, float] = {}
    with progress_bar("layer sensitivity", total=len(layers)) as advance:
        for name in layers:
            sensitivity[name] = evaluate([name], []).error(budget)
            advance(1, name[-40:])
    ranked = _ranked(layers, sensitivity)
    kept: list[str] = []
    quality = full
    tried = 1 + len(layers)
    with progress_bar("keeping layers in float", total=len(layers)) as advance:
        for name in ranked:
            kept.append(name)
            quality = evaluate(None, kept)
            tried += 1
            advance(1, f"{len(kept)} in float, error {quality.error(budget):.4g}")
            if quality.within(budget):
                break
    rows = [{"layer": n, "sensitivity": sensitivity[n],
             "precision": "float" if n in kept else "int8"} for n in ranked]
    return SearchResult(kept, quality, rows, tried)


def search_report(layers: list[str], budget: Budget, reference: np.ndarray,
                  labels: np.ndarray | None,
                  outputs: Callable[[list[str] | None, list[str]], np.ndarray],
                  ) -> dict[str, Any]:
    """Run the search with every trial scored against the float model's `reference` outputs;
    `outputs(only, exclude)` quantizes as `evaluate` above and runs the check data."""
    targets = accuracy_targets(budget, reference, labels)
    result = keep_sensitive_in_float(
        layers, budget, lambda only, exclude: score(outputs(only, exclude), reference, targets))
    return {"kept_float": result.kept_float, "budget": budget.model_dump(),
            "cosine": result.quality.cosine, "accuracy_drop": result.quality.accuracy_drop,
            "trials": result.tried, "layers": result.layers, "checked_on": len(reference)}
