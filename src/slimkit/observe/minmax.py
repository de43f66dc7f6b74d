"""Running extremes: exact, whatever the batching."""

from __future__ import annotations

import numpy as np

from slimkit.observe.base import Observer
from slimkit.observe.extremes import batch_max_abs, batch_min_max


class MinMax(Observer):
    """Smallest and largest value, of the whole tensor (`axis` None) or of each channel along
    `axis` (a float64 array per side)."""

    def __init__(self, axis: int | None = None) -> None:
        super().__init__()
        self.axis = axis
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None

    def _update(self, x: np.ndarray) -> None:
        lo, hi = batch_min_max(x, self.axis)
        self.low = lo if self.low is None else np.minimum(self.low, lo)
        self.high = hi if self.high is None else np.maximum(self.high, hi)

    def range(self) -> tuple[float, float]:
        """Per-tensor range; per-channel observers give the range over all channels."""
        if self.low is None or self.high is None:
            raise ValueError("MinMax saw no data")
        return float(np.min(self.low)), float(np.max(self.high))


class MaxAbs(Observer):
    """Largest magnitude per channel along `axis` (SmoothQuant's max|X_j|), or per tensor."""

    def __init__(self, axis: int | None = -1) -> None:
        super().__init__()
        self.axis = axis
        self.values: np.ndarray | None = None

    def _update(self, x: np.ndarray) -> None:
        m = batch_max_abs(x, self.axis)
        self.values = m if self.values is None else np.maximum(self.values, m)
