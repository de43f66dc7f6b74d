"""Pure math of histograms on a uniform grid that grows without a second pass.

A grid is `origin`, bin `width` and a count per bin. When data falls outside it, the grid
widens by doubling the bin width (2, 4, ... old bins merge into one new bin) with its origin
moved by a whole number of old bins. Every old bin then lies inside exactly one new bin, so
growing only coarsens counts: no mass is guessed or split. Queries read the grid between the
exact minimum and maximum: percentiles interpolate inside a bin, and the histogram handed
to the range methods moves each grid bin whole into the requested bin holding its centre.
"""

from __future__ import annotations

import math

import numpy as np

# A constant tensor gets this span, as `calibrate.Histogram.of` gives it.
DEGENERATE_SPAN = 1e-6


def initial_grid(lo: float, hi: float, bins: int) -> tuple[float, float]:
    """Origin and width of a grid spanning [lo, hi] exactly."""
    span = hi - lo if hi > lo else DEGENERATE_SPAN
    return lo, span / bins


def bin_counts(x: np.ndarray, origin: float, width: float, bins: int) -> np.ndarray:
    """Counts of x on the grid; values past either end (float rounding at the edges) land in
    the end bins, and a value on the far edge counts in the last bin as numpy does."""
    idx = np.floor((np.asarray(x, np.float64).ravel() - origin) / width)
    idx = np.clip(idx, 0, bins - 1).astype(np.int64)
    return np.bincount(idx, minlength=bins).astype(np.float64)


def grow(counts: np.ndarray, origin: float, width: float, lo: float,
         hi: float) -> tuple[np.ndarray, float, float]:
    """The smallest doubling of the grid that holds its occupied bins and [lo, hi]."""
    n = len(counts)
    if lo >= origin and hi <= origin + n * width:
        return counts, origin, width
    used = np.flatnonzero(counts)
    if used.size == 0:
        return np.zeros(n), *initial_grid(lo, hi, n)
    first, last = int(used[0]), int(used[-1])
    shift = min(first, math.floor((lo - origin) / width))  # in old bins, may be negative
    new_origin = origin + shift * width
    need = max(hi - new_origin, (last + 1 - shift) * width)
    factor = 2 ** max(0, math.ceil(math.log2(need / (n * width))))
    while hi > new_origin + n * width * factor or (last - shift) // factor >= n:
        factor *= 2
    merged = np.zeros(n)
    np.add.at(merged, (np.arange(first, last + 1) - shift) // factor, counts[first:last + 1])
    return merged, new_origin, width * factor


def resample(counts: np.ndarray, origin: float, width: float, lo: float, hi: float,
             bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges of `bins` equal bins on exactly [lo, hi], the edges numpy would give
    `np.histogram(x, bins, range=(lo, hi))` for the same data. Each grid bin moves whole into
    the bin holding its centre: counts stay whole and a bin with no data stays empty, which
    the entropy method's reading of empty bins relies on."""
    total = float(counts.sum())
    if hi <= lo:
        edges = np.linspace(lo, lo + DEGENERATE_SPAN, bins + 1)
        return np.concatenate([[total], np.zeros(bins - 1)]), edges
    edges = np.linspace(lo, hi, bins + 1)
    centres = np.clip(origin + width * (np.arange(len(counts)) + 0.5), lo, hi)
    idx = np.clip(np.floor((centres - lo) / (hi - lo) * bins), 0, bins - 1).astype(np.int64)
    return np.bincount(idx, weights=counts, minlength=bins), edges


def percentile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """The value below which q percent of the counted data lies, interpolated in its bin."""
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    target = cum[-1] * min(max(q, 0.0), 100.0) / 100.0
    i = int(np.clip(np.searchsorted(cum, target, side="left"), 1, len(counts)))
    inside = counts[i - 1]
    frac = 0.0 if inside <= 0 else (target - cum[i - 1]) / inside
    return float(edges[i - 1] + frac * (edges[i] - edges[i - 1]))
