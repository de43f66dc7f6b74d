"""Quantization arithmetic against the formulas, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from slimkit.techniques.quantize.primitives import (
    affine_params,
    codebook_dequantize,
    codebook_quantize,
    dequantize,
    fake_quantize,
    nf4_codebook,
    qrange,
    quantile_codebook,
    quantize,
    quantize_tensor,
)


def test_ranges_of_integer_types():
    assert qrange(8, True) == (-128, 127)
    assert qrange(8, False) == (0, 255)
    assert qrange(4, True) == (-8, 7)


def test_asymmetric_uint8_matches_the_formula():
    # S = (rmax - rmin) / (qmax - qmin) = 3 / 255; Z = round(qmin - rmin / S) = round(85) = 85
    scale, zero = affine_params(-1.0, 2.0, bits=8, symmetric=False, signed=False)
    assert scale == pytest.approx(3 / 255)
    assert int(zero) == 85
    r = np.array([-1.0, 0.0, 2.0, 0.5], dtype=np.float32)
    q = quantize(r, scale, zero, 8, signed=False)
    assert q.tolist() == [0, 85, 255, round(0.5 / (3 / 255) + 85)]
    assert dequantize(q, scale, zero)[1] == 0.0  # zero is exact


def test_symmetric_int8_has_zero_point_zero_and_covers_the_larger_side():
    scale, zero = affine_params(-0.5, 2.54, bits=8, symmetric=True, signed=True)
    assert int(zero) == 0
    assert scale == pytest.approx(2.54 / 127.5)
    assert quantize(np.array([2.54]), scale, zero).item() == 127
    assert quantize(np.array([-10.0]), scale, zero).item() == -128  # clipped


def test_range_always_contains_zero():
    scale, zero = affine_params(1.0, 3.0, bits=8, symmetric=False, signed=False)
    assert int(zero) == 0 and scale == pytest.approx(3 / 255)


def test_fake_quantize_error_is_at_most_half_a_step_inside_the_range():
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, 10_000).astype(np.float32)
    scale, zero = affine_params(x.min(), x.max(), bits=8, symmetric=False, signed=False)
    err = np.abs(fake_quantize(x, scale, zero, 8, signed=False) - x)
    assert err.max() <= scale / 2 + 1e-6


@pytest.mark.parametrize("bits", [8, 4])
def test_per_channel_beats_per_tensor_on_channels_of_different_scale(bits: int):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 8)).astype(np.float32) * np.array([[0.01], [0.1], [1], [10],
                                                                    [0.5], [2]], np.float32)
    per_t = quantize_tensor(w, bits, granularity="tensor").dequantize()
    per_c = quantize_tensor(w, bits, granularity="channel", axis=0).dequantize()
    assert per_c.shape == w.shape
    assert np.abs(per_c - w)[0].max() < np.abs(per_t - w)[0].max() / 10
    scales = quantize_tensor(w, bits, granularity="channel", axis=0).scale
    assert scales.shape == (6, 1)


def test_per_group_keeps_one_scale_per_block():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 64)).astype(np.float32)
    qt = quantize_tensor(w, 4, granularity="group", axis=1, group_size=16)
    assert qt.scale.shape == (4, 4, 1)
    assert qt.q.shape == w.shape and qt.q.min() >= -8 and qt.q.max() <= 7
    assert np.abs(qt.dequantize() - w).max() <= qt.scale.max() / 2 + 1e-6
    with pytest.raises(ValueError, match="groups of 24"):
        quantize_tensor(w, 4, granularity="group", axis=1, group_size=24)


def test_nf4_codebook():
    cb = nf4_codebook()
    assert len(cb) == 16
    assert cb.min() == -1.0 and cb.max() == 1.0
    assert 0.0 in cb
    assert (cb > 0).sum() == 8 and (cb < 0).sum() == 7
    assert np.all(np.diff(cb) > 0)
    # denser near zero, like the normal distribution it is drawn from
    assert cb[8] - cb[7] < cb[15] - cb[14]


def test_codebook_round_trip_is_nearest_code_times_block_absmax():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(64 * 1000 + 8).astype(np.float32)
    cb = nf4_codebook()
    idx, absmax = codebook_quantize(x, cb, block_size=64)
    assert idx.shape == x.shape and len(absmax) == 1001
    back = codebook_dequantize(idx, absmax, cb, block_size=64)
    # every value maps to its nearest code
    block = np.repeat(absmax, 64)[: len(x)]
    nearest = cb[np.abs(x[:, None] / block[:, None] - cb).argmin(1)] * block
    np.testing.assert_allclose(back, nearest, rtol=1e-6)
    # normally distributed weights: NF4 beats a uniform 4-bit grid on the same blocks
    uniform = np.linspace(-1, 1, 16).astype(np.float32)
    u_back = codebook_dequantize(*codebook_quantize(x, uniform, 64), uniform, 64)
    assert np.mean((back - x) ** 2) < np.mean((u_back - x) ** 2)


def test_quantile_codebook_follows_the_data():
    rng = np.random.default_rng(4)
    x = rng.laplace(size=10_000)
    cb = quantile_codebook(x, bits=4)
    assert len(cb) == 16 and np.all(np.diff(cb) > 0)
    assert abs(np.median(np.abs(np.diff(cb[6:10])))) < np.abs(np.diff(cb[:3])).mean()
