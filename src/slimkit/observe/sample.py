"""A bounded, seeded uniform sample of rows, for statistics no summary can give (SmoothQuant
scores each candidate strength on real rows through the layer's int8 matmul).

Each row gets a random key from a seeded generator in arrival order and the sample is the
`rows` rows with the smallest keys (bottom-k sampling). Keys depend only on a row's position
in the stream, so the sample does not depend on how the stream was cut into batches.
"""

from __future__ import annotations

import numpy as np

from slimkit.observe.base import Observer


def bottom_k(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k smallest keys, in ascending position order."""
    if len(keys) <= k:
        return np.arange(len(keys))
    return np.sort(np.argpartition(keys, k - 1)[:k])


def as_rows(x: np.ndarray, axis: int) -> np.ndarray:
    """Channels along `axis` become columns; every other axis flattens into rows."""
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


class RowSample(Observer):
    def __init__(self, rows: int = 2048, seed: int = 0, axis: int = -1) -> None:
        super().__init__()
        self.rows = rows
        self.axis = axis
        self.rng = np.random.default_rng(seed)
        self.keys = np.empty(0)
        self.sample: np.ndarray | None = None

    def _update(self, x: np.ndarray) -> None:
        new = as_rows(x, self.axis)
        keys = self.rng.random(len(new))
        if self.sample is not None and len(self.keys) >= self.rows:
            wanted = keys < self.keys.max()  # only rows that can enter the sample are copied
            new, keys = new[wanted], keys[wanted]
        pool = new if self.sample is None else np.concatenate([self.sample, new])
        pool_keys = np.concatenate([self.keys, keys])
        keep = bottom_k(pool_keys, self.rows)
        self.sample, self.keys = pool[keep], pool_keys[keep]

    def values(self) -> np.ndarray:
        if self.sample is None:
            raise ValueError("RowSample saw no data")
        return self.sample
