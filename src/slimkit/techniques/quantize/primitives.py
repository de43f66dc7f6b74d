"""Quantization arithmetic as pure numpy functions.

The affine map is q = clip(round(r / S + Z), qmin, qmax) and back r = S (q - Z), with S and Z
taken from a real range [rmin, rmax] that always contains 0, so zero is exactly representable
(padding and ReLU outputs stay exact). Granularity is per tensor, per channel (one range per
slice along an axis) or per group (blocks of `group_size` along the reduction axis), which is
what weight-only int4 needs. Non-uniform codebooks (NF4, data quantiles) map each value to its
nearest code after scaling by the block's absolute maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

Granularity = Literal["tensor", "channel", "group"]
_EPS = np.float32(1e-12)


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def affine_params(rmin: np.ndarray | float, rmax: np.ndarray | float, bits: int = 8,
                  symmetric: bool = True, signed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point for the range [rmin, rmax] (arrays broadcast per channel)."""
    qmin, qmax = qrange(bits, signed)
    lo = np.minimum(np.asarray(rmin, dtype=np.float64), 0.0)
    hi = np.maximum(np.asarray(rmax, dtype=np.float64), 0.0)
    if symmetric:
        amax = np.maximum(-lo, hi)
        scale = np.maximum(amax / ((qmax - qmin) / 2), _EPS)
        zero = np.zeros_like(scale) if signed else np.full_like(scale, (qmin + qmax + 1) // 2)
    else:
        scale = np.maximum((hi - lo) / (qmax - qmin), _EPS)
        zero = np.clip(np.round(qmin - lo / scale), qmin, qmax)
    return scale.astype(np.float32), zero.astype(np.int32)


def quantize(r: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int = 8,
             signed: bool = True) -> np.ndarray:
    qmin, qmax = qrange(bits, signed)
    return np.clip(np.round(r / scale + zero), qmin, qmax).astype(np.int32)


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    return (scale * (q.astype(np.float32) - zero)).astype(np.float32)


def fake_quantize(r: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int = 8,
                  signed: bool = True) -> np.ndarray:
    return dequantize(quantize(r, scale, zero, bits, signed), scale, zero)


@dataclass
class QTensor:
    """Integer values with the parameters to map them back to reals."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    bits: int
    granularity: Granularity
    axis: int = 0
    group_size: int | None = None

    def dequantize(self) -> np.ndarray:
        if self.granularity != "group":
            return dequantize(self.q, self.scale, self.zero)
        return _ungroup(dequantize(_group(self.q, self.axis, self.group_size or 0),
                                   self.scale, self.zero), self.q.shape, self.axis)


def _group(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Reshape so that axis becomes (n_groups, size), moved last: [..., n_groups, size]."""
    x = np.moveaxis(x, axis, -1)
    if x.shape[-1] % size:
        raise ValueError(f"axis of length {x.shape[-1]} does not split into groups of {size}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // size, size)


def _ungroup(g: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    moved = list(shape)
    moved.append(moved.pop(axis))
    return np.moveaxis(g.reshape(moved), -1, axis)


def quantize_tensor(w: np.ndarray, bits: int = 8, symmetric: bool = True,
                    granularity: Granularity = "channel", axis: int = 0,
                    group_size: int | None = None, signed: bool = True) -> QTensor:
    """Quantize a weight tensor with ranges from its own min/max at the chosen granularity.

    `axis` is the output-channel axis for per-channel, the reduction axis for per-group.
    """
    w = np.asarray(w, dtype=np.float32)
    if granularity == "tensor":
        scale, zero = affine_params(w.min(), w.max(), bits, symmetric, signed)
        return QTensor(quantize(w, scale, zero, bits, signed), scale, zero, bits, "tensor")
    if granularity == "channel":
        other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        scale, zero = affine_params(w.min(axis=other, keepdims=True),
                                    w.max(axis=other, keepdims=True), bits, symmetric, signed)
        return QTensor(quantize(w, scale, zero, bits, signed), scale, zero, bits, "channel", axis)
    if not group_size:
        raise ValueError("per-group quantization needs group_size")
    g = _group(w, axis, group_size)
    scale, zero = affine_params(g.min(-1, keepdims=True), g.max(-1, keepdims=True), bits,
                                symmetric, signed)
    q = _ungroup(quantize(g, scale, zero, bits, signed), w.shape, axis)
    return QTensor(q, scale, zero, bits, "group", axis, group_size)


def nf4_codebook() -> np.ndarray:
    """The 16 NormalFloat-4 levels (QLoRA): quantiles of N(0, 1) scaled to [-1, 1], with an
    exact zero; 8 levels on the positive side and 7 on the negative side."""
    offset = 0.9677083
    nd = NormalDist()
    pos = [nd.inv_cdf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-nd.inv_cdf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    values = np.array(sorted([*pos, 0.0, *neg]), dtype=np.float64)
    return (values / np.abs(values).max()).astype(np.float32)


def quantile_codebook(x: np.ndarray, bits: int = 4) -> np.ndarray:
    """A non-uniform codebook fitted to data: 2^bits levels at evenly spaced quantiles of
    x / max|x|, so dense regions of the distribution get more levels."""
    x = np.asarray(x, dtype=np.float64).ravel()
    x = x / max(float(np.abs(x).max()), 1e-12)
    n = 2**bits
    return np.quantile(x, (np.arange(n) + 0.5) / n).astype(np.float32)


def codebook_quantize(x: np.ndarray, codebook: np.ndarray,
                      block_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the nearest code after scaling each block of the flattened tensor by its
    absolute maximum; returns (indices shaped like x, one absmax per block)."""
    flat = np.asarray(x, dtype=np.float32).ravel()
    pad = (-len(flat)) % block_size
    blocks = np.pad(flat, (0, pad)).reshape(-1, block_size)
    absmax = np.maximum(np.abs(blocks).max(1, keepdims=True), _EPS)
    idx = np.abs((blocks / absmax)[..., None] - codebook).argmin(-1)
    return idx.ravel()[: len(flat)].reshape(np.shape(x)).astype(np.uint8), absmax.ravel()


def codebook_dequantize(idx: np.ndarray, absmax: np.ndarray, codebook: np.ndarray,
                        block_size: int = 64) -> np.ndarray:
    flat = codebook[idx.ravel()]
    pad = (-len(flat)) % block_size
    blocks = np.pad(flat, (0, pad)).reshape(-1, block_size) * absmax[:, None]
    return blocks.ravel()[: len(flat)].reshape(idx.shape).astype(np.float32)
