"""How close a compressed model stays to the model it came from, and whether that is enough.

Every search that trades quality for size or speed (layers kept in float, bits per layer,
channels per layer, NNCF's accuracy control) scores its trials here, with the evaluator's own
metric functions, so a budget means the same in a search as in the final report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from slimkit.errors import TechniqueError
from slimkit.evaluate import metrics


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


@dataclass(frozen=True)
class Fidelity:
    cosine: float
    accuracy_drop: float | None = None

    def error(self, budget: Budget) -> float:
        """Larger is worse, in the budget's own unit. Outputs that are not finite have no
        cosine (NaN), and NaN would sort anywhere in a ranking: they are the worst error."""
        if budget.max_drop is not None:
            value = float(self.accuracy_drop or 0.0)
        else:
            value = 1.0 - self.cosine
        return math.inf if math.isnan(value) else value

    def within(self, budget: Budget) -> bool:
        if budget.max_drop is not None:
            return (self.accuracy_drop or 0.0) <= budget.max_drop
        return self.cosine >= (budget.min_cosine or 0.0)


def accuracy_targets(budget: Budget, reference: np.ndarray, labels: np.ndarray | None,
                     ) -> np.ndarray | None:
    """What accuracy is counted against: the labels, or without them the float model's own
    top-1 (a drop is then disagreement with it). A cosine budget needs neither, and counts a
    drop only where labels exist."""
    if budget.max_drop is None:
        return labels
    if reference.ndim != 2:
        raise TechniqueError(f"a max_drop budget needs class scores [batch, classes], the "
                             f"model's first output has shape {list(reference.shape)}; "
                             "use min_cosine")
    return labels if labels is not None else reference.argmax(1)


def score(outputs: np.ndarray, reference: np.ndarray, targets: np.ndarray | None) -> Fidelity:
    """Mean cosine to the reference outputs and, for class scores with targets, the accuracy
    points lost against them."""
    cosine = float(metrics.cosine_rows(outputs, reference).mean())
    drop = None
    if targets is not None and outputs.ndim == 2:
        drop = 100.0 * (metrics.accuracy(reference, targets) - metrics.accuracy(outputs, targets))
    return Fidelity(cosine, drop)


def level(budget: Budget, outputs: np.ndarray, reference: np.ndarray,
          targets: np.ndarray | None) -> float:
    """The budget's metric itself, higher better: accuracy in points, or mean cosine. For
    searches (NNCF's) that subtract a float score from a quantized one."""
    if budget.max_drop is not None:
        assert targets is not None
        return 100.0 * metrics.accuracy(outputs, targets)
    return score(outputs, reference, None).cosine


def relative_error(outputs: Any, reference: Any) -> float:
    """Mean squared error over the reference's mean power: the smooth, finer-grained damage a
    sensitivity scan ranks by. Takes numpy arrays or torch tensors alike (only `-`, `**` and
    `.mean()`), so a scan on torch outputs neither copies nor changes precision."""
    power = float((reference**2).mean()) or 1.0
    return float(((outputs - reference) ** 2).mean()) / power
