"""Observers against numpy on random data; batch by batch equals all at once."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.observe import HistogramObserver, MaxAbs, MinMax, RowSample, binning
from slimkit.techniques.quantize.calibrate import Histogram, compute_range


def batches(seed: int = 0, n: int = 6) -> list[np.ndarray]:
    """Activations whose range grows from batch to batch, one outlier late."""
    rng = np.random.default_rng(seed)
    out = [(rng.standard_normal((4, 10, 24)) * (0.2 + i)).astype(np.float32) for i in range(n)]
    out[-2][1, 3, 5] = 40.0
    return out


def feed(obs: object, parts: list[np.ndarray]) -> object:
    for p in parts:
        obs.update(p)  # type: ignore[attr-defined]
    return obs


@pytest.mark.parametrize("axis", [None, -1, 1])
def test_min_max_matches_numpy(axis: int | None) -> None:
    parts = batches()
    every = np.concatenate(parts)
    obs = feed(MinMax(axis), parts)
    over = None if axis is None else tuple(i for i in range(3) if i != axis % 3)
    np.testing.assert_array_equal(obs.low, every.min(axis=over))  # type: ignore[attr-defined]
    np.testing.assert_array_equal(obs.high, every.max(axis=over))  # type: ignore[attr-defined]


def test_channel_max_abs_matches_numpy() -> None:
    parts = batches()
    every = np.concatenate(parts).reshape(-1, 24)
    obs = feed(MaxAbs(-1), parts)
    np.testing.assert_array_equal(obs.values, np.abs(every).max(0))  # type: ignore[attr-defined]
    assert obs.count == every.size and obs.ndim == 3  # type: ignore[attr-defined]


def test_row_sample_streamed_equals_one_shot_and_is_bounded() -> None:
    parts = batches()
    every = np.concatenate(parts)
    streamed = feed(RowSample(50, seed=3), parts).values()  # type: ignore[attr-defined]
    one_shot = feed(RowSample(50, seed=3), [every]).values()  # type: ignore[attr-defined]
    np.testing.assert_array_equal(streamed, one_shot)
    assert streamed.shape == (50, 24)
    rows = {r.tobytes() for r in every.reshape(-1, 24)}
    assert all(r.tobytes() in rows for r in streamed)  # real rows, not mixtures
    small = feed(RowSample(10_000), parts).values()  # type: ignore[attr-defined]
    np.testing.assert_array_equal(small, every.reshape(-1, 24))  # all rows, in order


def test_histogram_of_one_batch_is_the_one_shot_histogram() -> None:
    every = np.concatenate(batches()).ravel()
    ref = Histogram.of(every)
    h = feed(HistogramObserver(), [every]).histogram()  # type: ignore[attr-defined]
    np.testing.assert_allclose(h.counts, ref.counts, atol=1e-6)
    np.testing.assert_array_equal(h.edges, ref.edges)
    assert (h.minimum, h.maximum) == (ref.minimum, ref.maximum)


def test_fixed_range_histogram_equals_the_one_shot_histogram_exactly() -> None:
    parts = batches()
    every = np.concatenate(parts).ravel()
    ref = Histogram.of(every)
    fixed = HistogramObserver(2048, float(every.min()), float(every.max()))
    h = feed(fixed, parts).histogram()  # type: ignore[attr-defined]
    np.testing.assert_array_equal(h.counts, ref.counts)
    np.testing.assert_array_equal(h.edges, ref.edges)


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_growing_histogram_ranges_stay_close_to_one_shot(method: str) -> None:
    parts = batches()
    every = np.concatenate(parts).ravel()
    obs = feed(HistogramObserver(), parts)
    h = obs.histogram()  # type: ignore[attr-defined]
    assert h.counts.sum() == pytest.approx(every.size)
    lo, hi = compute_range(h, method, percentile=99.9)  # type: ignore[arg-type]
    rlo, rhi = compute_range(Histogram.of(every), method, percentile=99.9)  # type: ignore
    bin_width = (every.max() - every.min()) / 2048
    tol = 0.0 if method == "minmax" else 3 * bin_width
    assert abs(lo - rlo) <= tol and abs(hi - rhi) <= tol


def test_percentile_query_after_growth_from_a_constant() -> None:
    rng = np.random.default_rng(1)
    parts = [np.zeros(100, np.float32), *(rng.standard_normal(5000) * 3 for _ in range(5))]
    every = np.concatenate(parts)
    obs = feed(HistogramObserver(), parts)
    ref = Histogram.of(every)
    step = (every.max() - every.min()) / 2048
    for q in (1.0, 5.0, 50.0, 99.0):  # where samples are dense, close to numpy's
        assert obs.percentile(q) == pytest.approx(np.percentile(every, q), abs=2 * step)  # type: ignore
    for q in (0.01, 0.1, 99.9, 99.99):  # in sparse tails, close to the one-shot histogram's
        assert obs.percentile(q) == pytest.approx(  # type: ignore[attr-defined]
            binning.percentile(ref.counts, ref.edges, q), abs=2 * step)
    assert obs.percentile(100) == every.max()  # type: ignore[attr-defined]


def test_memory_does_not_grow_with_the_data() -> None:
    obs = HistogramObserver(bins=256)
    sample = RowSample(32)
    rng = np.random.default_rng(2)
    for i in range(20):
        x = rng.standard_normal((64, 8)) * (i + 1)
        obs.update(x)
        sample.update(x)
    assert obs.counts.size == 256 * 4 and sample.values().shape == (32, 8)


def test_an_unfed_observer_says_so() -> None:
    with pytest.raises(ValueError, match="no data"):
        HistogramObserver().histogram()
    with pytest.raises(ValueError, match="no data"):
        MinMax().range()
