"""Each calibrator on distributions whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.techniques.quantize.calibrate import (
    Histogram,
    compute_range,
    entropy_range,
    minmax_range,
    mse_range,
    percentile_range,
)


def test_minmax_is_exact():
    x = np.array([-3.0, 0.5, 7.25])
    assert minmax_range(Histogram.of(x, bins=64)) == (-3.0, 7.25)


def test_histogram_accumulates_inside_fixed_edges():
    h = Histogram.of(np.zeros(10), bins=10, lo=-1, hi=1)
    h.add(np.full(5, 0.95))
    h.add(np.array([5.0]))  # outside: counted in the last bin, max still exact
    assert h.counts.sum() == 16
    assert h.counts[-1] == 6
    assert h.maximum == 5.0


def test_percentile_of_uniform_data():
    x = np.random.default_rng(0).uniform(0, 100, 1_000_000)
    lo, hi = percentile_range(Histogram.of(x, bins=2048), 98.0)
    assert lo == pytest.approx(1.0, abs=0.2)
    assert hi == pytest.approx(99.0, abs=0.2)


def gaussian_with_outliers() -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(400_000)
    x[:4] = [60.0, -60.0, 55.0, -58.0]  # rare, far outliers
    return x


def test_entropy_clips_rare_outliers_of_a_gaussian():
    lo, hi = entropy_range(Histogram.of(gaussian_with_outliers(), bins=2048))
    assert lo == -hi
    assert 2.5 < hi < 12.0  # far below the outliers, above the bulk of N(0, 1)


def test_mse_range_clips_when_it_pays():
    _, hi = mse_range(Histogram.of(gaussian_with_outliers(), bins=2048), bits=8)
    assert hi < 50  # four outliers cost less clipped than the rounding of everything else
    assert hi > 3.0


def test_mse_keeps_the_full_range_when_nothing_is_rare():
    x = np.random.default_rng(2).uniform(-1, 1, 100_000)
    lo, hi = mse_range(Histogram.of(x, bins=2048), bits=8)
    assert hi > 0.95 and lo < -0.95


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_every_method_gives_an_ordered_range_inside_the_data(method: str):
    x = gaussian_with_outliers()
    lo, hi = compute_range(Histogram.of(x, bins=1024), method)  # type: ignore[arg-type]
    assert lo < 0 < hi
    assert lo >= x.min() - 1e-6 and hi <= x.max() + 1e-6
