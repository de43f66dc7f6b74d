"""Pure reductions behind the min/max observers, per tensor or per channel."""

from __future__ import annotations

import numpy as np


def other_axes(ndim: int, axis: int | None) -> tuple[int, ...] | None:
    """The axes to reduce over: all of them (None) for one value per tensor, or all but the
    channel axis for one value per channel."""
    if axis is None:
        return None
    keep = axis % ndim
    return tuple(i for i in range(ndim) if i != keep)


def batch_min_max(x: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    over = other_axes(x.ndim, axis)
    return (np.min(x, axis=over).astype(np.float64),
            np.max(x, axis=over).astype(np.float64))


def batch_max_abs(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.max(np.abs(x), axis=other_axes(x.ndim, axis)).astype(np.float64)
