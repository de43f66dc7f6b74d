"""The pure histogram math: growing never splits a bin, resampling keeps every count."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.observe import binning


def test_growing_merges_whole_bins_and_keeps_the_total() -> None:
    origin, width = binning.initial_grid(0.0, 1.0, 8)
    counts = binning.bin_counts(np.array([0.05, 0.3, 0.3, 0.99]), origin, width, 8)
    grown, new_origin, new_width = binning.grow(counts, origin, width, -0.9, 2.5)
    assert grown.sum() == counts.sum() == 4
    assert new_origin <= -0.9 and new_origin + 8 * new_width >= 2.5
    ratio = new_width / width
    assert ratio == 2 ** round(np.log2(ratio))  # a doubling, so old bins nest in new ones
    assert ((origin - new_origin) / width) == pytest.approx(round((origin - new_origin) / width))


def test_a_covered_range_leaves_the_grid_alone() -> None:
    counts = np.arange(4.0)
    assert binning.grow(counts, 0.0, 1.0, 0.5, 4.0) == (counts, 0.0, 1.0)


def test_resample_onto_the_same_grid_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_000)
    origin, width = binning.initial_grid(x.min(), x.max(), 64)
    counts = binning.bin_counts(x, origin, width, 64)
    again, edges = binning.resample(counts, origin, width, x.min(), x.max(), 64)
    np.testing.assert_allclose(again, counts, atol=1e-6)
    np.testing.assert_allclose(edges, np.linspace(x.min(), x.max(), 65))
    ref = np.histogram(x, 64, range=(x.min(), x.max()))[0]
    np.testing.assert_allclose(counts, ref)


def test_resample_of_a_constant_puts_everything_in_the_first_bin() -> None:
    counts, edges = binning.resample(np.array([0.0, 5.0, 0.0]), 0.0, 1.0, 1.5, 1.5, 4)
    assert counts.tolist() == [5.0, 0.0, 0.0, 0.0]
    assert edges[0] == 1.5 and edges[-1] == pytest.approx(1.5 + binning.DEGENERATE_SPAN)


@pytest.mark.parametrize("q", [0.0, 1.0, 25.0, 50.0, 99.0, 100.0])
def test_percentile_interpolates_inside_a_bin(q: float) -> None:
    counts, edges = np.ones(100), np.linspace(0.0, 1.0, 101)
    assert binning.percentile(counts, edges, q) == pytest.approx(q / 100)
