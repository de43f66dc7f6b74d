"""Quality budgets and the accuracy-aware search that keeps sensitive layers in float."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimkit.progress import progress_bar


class Budget(BaseModel):
    """How much quality a quantized model may lose against the float model it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cosine: float | None = Field(None, gt=0, le=1, description="mean output cosine")
    max_drop: float | None = Field(None, ge=0, description="accuracy points (needs labels)")

    @model_validator(mode="after")
    def _one_bound(self) -> Budget:
        if (self.min_cosine is None) == (self.max_drop is None):
            raise ValueError("give exactly one of min_cosine, max_drop")
        return self


@dataclass
class Quality:
    cosine: float
    accuracy_drop: float | None = None

    def error(self, budget: Budget) -> float:
        """Larger is worse; in the budget's own unit."""
        if budget.max_drop is not None:
            return float(self.accuracy_drop or 0.0)
        return 1.0 - self.cosine

    def within(self, budget: Budget) -> bool:
        if budget.max_drop is not None:
            return (self.accuracy_drop or 0.0) <= budget.max_drop
        return self.cosine >= (budget.min_cosine or 0.0)


def measure(outputs: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Quality:
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1),
                                      1e-12)
    drop = None
    if labels is not None and outputs.ndim == 2:
        drop = 100.0 * float((reference.argmax(1) == labels).mean()
                             - (outputs.argmax(1) == labels).mean())
    return Quality(float(cos.mean()), drop)


@dataclass
class SearchResult:
    kept_float: list[str]
    quality: Quality
    layers: list[dict[str, Any]] = field(default_factory=list)
    tried: int = 0


def keep_sensitive_in_float(layers: list[str], budget: Budget,
                            evaluate: Callable[[list[str] | None, list[str]], Quality],
                            ) -> SearchResult:
    """Quantize everything; if the budget fails, rank layers by the error each causes when
    quantized alone, then keep the worst in float, fewest first, until the budget holds.

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
    ranked = sorted(layers, key=lambda n: -sensitivity[n])
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
