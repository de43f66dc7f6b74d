"""A value histogram kept in fixed memory, read by slimkit's range methods.

By default the grid starts on the first batch's range and grows by merging bins (see
`binning`), with `resolution` times more bins than asked so that, after growing, the
histogram handed to the range methods (`bins` bins on exactly [min, max]) still has several
grid bins per bin. Given a fixed range (a first pass that found the exact min/max), it counts
on exactly the edges `calibrate.Histogram.of` would use, values outside clipped to the ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from slimkit.observe import binning
from slimkit.observe.base import Observer

if TYPE_CHECKING:
    from slimkit.techniques.quantize.calibrate import Histogram


class HistogramObserver(Observer):
    def __init__(self, bins: int = 2048, lo: float | None = None, hi: float | None = None,
                 resolution: int = 4) -> None:
        super().__init__()
        self.bins = bins
        self.minimum = np.inf
        self.maximum = -np.inf
        self.fixed = lo is not None and hi is not None
        self.counts = np.zeros(bins if self.fixed else bins * resolution)
        self.origin, self.width = 0.0, 0.0
        self.edges: np.ndarray | None = None
        if lo is not None and hi is not None:
            self.edges = np.linspace(lo, hi if hi > lo else lo + binning.DEGENERATE_SPAN,
                                     bins + 1)

    def _update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64).ravel()
        lo, hi = float(x.min()), float(x.max())
        self.minimum, self.maximum = min(self.minimum, lo), max(self.maximum, hi)
        if self.edges is not None:
            lo, hi = self.edges[0], self.edges[-1]
            # bins and range, not the edges: numpy's uniform-bin path, 3x faster, same counts
            self.counts += np.histogram(np.clip(x, lo, hi), bins=len(self.counts),
                                        range=(lo, hi))[0]
            return
        n = len(self.counts)
        if self.width == 0.0:
            self.origin, self.width = binning.initial_grid(lo, hi, n)
        else:
            self.counts, self.origin, self.width = binning.grow(self.counts, self.origin,
                                                                self.width, lo, hi)
        self.counts += binning.bin_counts(x, self.origin, self.width, n)

    def counts_and_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """`bins` counts on [min, max] (or on the fixed range)."""
        if self.count == 0:
            raise ValueError("HistogramObserver saw no data")
        if self.edges is not None:
            return self.counts.copy(), self.edges.copy()
        return binning.resample(self.counts, self.origin, self.width, self.minimum,
                                self.maximum, self.bins)

    def histogram(self) -> Histogram:
        from slimkit.techniques.quantize.calibrate import Histogram

        counts, edges = self.counts_and_edges()
        return Histogram(counts, edges, float(self.minimum), float(self.maximum))

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of every value seen, to within a grid bin."""
        if self.count == 0:
            raise ValueError("HistogramObserver saw no data")
        if self.edges is not None:
            counts, edges = self.counts, self.edges
        else:
            edges = np.clip(self.origin + self.width * np.arange(len(self.counts) + 1),
                            self.minimum, self.maximum)
            counts = self.counts
        return float(np.clip(binning.percentile(counts, edges, q), self.minimum, self.maximum))
