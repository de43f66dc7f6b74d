"""The common face of every observer: fed batch by batch, never holding a batch after."""

from __future__ import annotations

import numpy as np


class Observer:
    """Statistics of one tensor, updated from each batch in memory that does not grow with the
    data. `count` says whether the tensor was seen at all (a layer the data never reaches);
    `ndim` is the rank of the last batch, which some quantizers record with their scales."""

    def __init__(self) -> None:
        self.count = 0
        self.ndim = 0

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size == 0:
            return
        self.count += int(x.size)
        self.ndim = x.ndim
        self._update(x)

    def _update(self, x: np.ndarray) -> None:
        raise NotImplementedError
