"""Calibration: activation statistics collected once, ranges computed by several methods.

Statistics are histograms (plus exact min/max) of every tensor a quantizer needs. Collecting
them runs the model over the calibration data; every range method (min-max, percentile,
entropy, MSE) and every algorithm that asks (the accuracy-aware search tries several) then
reads the same histograms instead of running the model again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from slimkit.techniques.quantize.primitives import affine_params, fake_quantize

Method = Literal["minmax", "percentile", "entropy", "mse"]


@dataclass
class Histogram:
    counts: np.ndarray  # float64, one per bin
    edges: np.ndarray  # len(counts) + 1
    minimum: float
    maximum: float

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    @classmethod
    def of(cls, x: np.ndarray, bins: int = 2048, lo: float | None = None,
           hi: float | None = None) -> Histogram:
        x = np.asarray(x, dtype=np.float64).ravel()
        lo = float(x.min()) if lo is None else lo
        hi = float(x.max()) if hi is None else hi
        if hi <= lo:
            hi = lo + 1e-6
        counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
        return cls(counts.astype(np.float64), edges, float(x.min()), float(x.max()))

    def add(self, x: np.ndarray) -> None:
        """Accumulate more samples inside the fixed edges (values outside land at the ends)."""
        x = np.asarray(x, dtype=np.float64).ravel()
        self.minimum = min(self.minimum, float(x.min()))
        self.maximum = max(self.maximum, float(x.max()))
        lo, hi = self.edges[0], self.edges[-1]
        self.counts += np.histogram(np.clip(x, lo, hi), bins=len(self.counts), range=(lo, hi))[0]


def minmax_range(h: Histogram) -> tuple[float, float]:
    return h.minimum, h.maximum


def percentile_range(h: Histogram, percentile: float = 99.99) -> tuple[float, float]:
    """Clip the (100 - p)/2 % tails on each side."""
    cdf = np.cumsum(h.counts) / max(h.counts.sum(), 1.0)
    tail = (100.0 - percentile) / 200.0
    lo = h.edges[int(np.searchsorted(cdf, tail, side="left"))]
    hi = h.edges[int(np.searchsorted(cdf, 1.0 - tail, side="left")) + 1]
    return float(max(lo, h.minimum)), float(min(hi, h.maximum))


def mse_range(h: Histogram, bits: int = 8, symmetric: bool = False,
              steps: int = 100) -> tuple[float, float]:
    """The clipping range with the least expected squared error (rounding and clipping),
    evaluated on the histogram's bin centres for ranges shrunk from min-max."""
    centers, weights = h.centers, h.counts
    best, best_err = (h.minimum, h.maximum), np.inf
    for frac in np.linspace(1.0, 0.05, steps):
        lo, hi = h.minimum * frac, h.maximum * frac
        scale, zero = affine_params(lo, hi, bits, symmetric, signed=symmetric)
        approx = fake_quantize(centers, scale, zero, bits, signed=symmetric)
        err = float((weights * (centers - approx) ** 2).sum())
        if err < best_err:
            best, best_err = (lo, hi), err
    return float(best[0]), float(best[1])


def entropy_range(h: Histogram, bits: int = 8) -> tuple[float, float]:
    """Symmetric threshold minimising KL(P || Q) between the clipped distribution of |x| and
    its quantized version (the TensorRT calibration method)."""
    amax = max(abs(h.minimum), abs(h.maximum))
    nbins = len(h.counts)
    absh = Histogram.of(np.abs(h.centers), bins=nbins, lo=0.0, hi=amax)
    absh.counts = np.histogram(np.abs(h.centers), bins=absh.edges, weights=h.counts)[0]
    hist = absh.counts
    levels = 2 ** (bits - 1)
    best_i, best_kl = nbins, np.inf
    for i in range(levels, nbins + 1, max(1, (nbins - levels) // 256)):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        chunks = np.array_split(hist[:i], levels)
        q = np.concatenate([
            np.where(c > 0, c.sum() / max((c > 0).sum(), 1), 0.0) for c in chunks
        ])
        kl = _kl(p, q)
        if kl < best_kl:
            best_i, best_kl = i, kl
    t = float(absh.edges[best_i])
    return (-t if h.minimum < 0 else 0.0), t


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / max(p.sum(), 1e-12)
    q = q / max(q.sum(), 1e-12)
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float((p[mask] * np.log(p[mask] / q[mask])).sum())


def compute_range(h: Histogram, method: Method, *, bits: int = 8, percentile: float = 99.99,
                  symmetric: bool = False) -> tuple[float, float]:
    if method == "minmax":
        return minmax_range(h)
    if method == "percentile":
        return percentile_range(h, percentile)
    if method == "entropy":
        return entropy_range(h, bits)
    return mse_range(h, bits, symmetric)
