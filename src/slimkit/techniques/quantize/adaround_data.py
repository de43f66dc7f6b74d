"""What AdaRound fits one layer's rounding on: its inputs as matrix rows, or their moments.

A convolution's output at one position needs only the input patch under its kernel, so inputs
are taken as patches at sampled positions (`layer_rows`): the same loss in expectation as whole
feature maps, at a fraction of the memory. With rows x (of the layer's inputs, quantized or
float) and the error d = x - x_float they carry from earlier layers, the output error of
weights W + delta is delta x + W d, and its mean square is a quadratic in delta:

    sum over outputs of  delta E[x x^T] delta^T + 2 delta E[x d^T] W^T + W E[d d^T] W^T

`Moments` keeps those expectations, so every step sees all rows at a cost that depends on the
layer's width alone (a depthwise channel's 9 weights need a 9 x 9 matrix); `Rows` keeps the
rows for layers wider than a step's rows, where minibatches are cheaper than the moments.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from slimkit.errors import TechniqueError
from slimkit.techniques.quantize.weight_layers import zero_padding

POSITIONS = 64  # output positions sampled per example and convolution (tokens per sequence)
ROW_FLOATS = 2**25  # at most this many floats of stored rows per layer (128 MB)
CHUNK = 4096  # rows evaluated at once outside training


def shape_of(layer: nn.Module) -> tuple[int, int]:
    """(groups, inputs per group and output) of the layer's weight as a matrix."""
    groups = layer.groups if isinstance(layer, nn.Conv2d) else 1
    return groups, layer.weight[0].numel()


def positions(layer: nn.Module, examples: int, moments: bool) -> int:
    """Positions to sample per example: POSITIONS, fewer where stored rows would outgrow
    ROW_FLOATS (moments are not stored rows)."""
    if moments:
        return POSITIONS
    groups, k = shape_of(layer)
    return max(1, min(POSITIONS, ROW_FLOATS // max(1, examples * groups * k)))


def _patches(layer: nn.Conv2d, x: torch.Tensor, gen: torch.Generator,
             count: int) -> torch.Tensor:
    """Input patches [B * P, groups, K] of P sampled output positions per example, laid out
    as the weight [out, in/groups, kh, kw] flattens."""
    if layer.padding_mode != "zeros":
        x = F.pad(x, layer._reversed_padding_repeated_twice, mode=layer.padding_mode)
    else:
        x = F.pad(x, zero_padding(layer))
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    out_h = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    total = out_h * out_w
    pick = torch.randperm(total, generator=gen)[:count] if total > count \
        else torch.arange(total)
    oh, ow = pick // out_w * sh, pick % out_w * sw
    taps = [x[:, :, oh + i * dh, ow + j * dw] for i in range(kh) for j in range(kw)]
    patches = torch.stack(taps, 3)  # [B, C, P, kh * kw]
    b, c, p, kk = patches.shape
    g = layer.groups
    return patches.permute(0, 2, 1, 3).reshape(b * p, g, c // g * kk)


def layer_rows(layer: nn.Module, x: torch.Tensor, gen: torch.Generator,
               count: int) -> torch.Tensor:
    """One batch of a layer's input as matrix rows [N, groups, K], `count` positions (or
    tokens) per example."""
    x = x.detach().float()
    if isinstance(layer, nn.Conv2d):
        return _patches(layer, x, gen, count)
    flat = x.reshape(len(x), -1, x.shape[-1])  # examples, tokens, features
    if flat.shape[1] > count:
        flat = flat[:, torch.randperm(flat.shape[1], generator=gen)[:count]]
    return flat.reshape(-1, 1, x.shape[-1])


def apply_rows(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's output [N, out] at the rows, bias aside."""
    n, g, k = rows.shape
    w = weight.reshape(g, weight.shape[0] // g, k)
    if g == 1:
        return rows[:, 0] @ w[0].T
    if w.shape[1] == 1:  # depthwise: one output per group
        return (rows * w[:, 0]).sum(2)
    return torch.einsum("ngk,gok->ngo", rows, w).reshape(n, -1)


class Moments:
    """E[x x^T], E[x d^T] and E[d d^T] per group, accumulated in float64."""

    def __init__(self, layer: nn.Module) -> None:
        groups, k = shape_of(layer)
        self.weight = layer.weight.detach().float().reshape(groups, -1, k)
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.xx = torch.zeros(())
        self.cross: torch.Tensor | None = None
        self.const = 0.0

    def _add(self, key: str, a: torch.Tensor, b: torch.Tensor) -> None:
        term = torch.einsum("ngk,ngl->gkl", a.double(), b.double())
        self.sums[key] = self.sums[key] + term if key in self.sums else term

    def add(self, rows: torch.Tensor, float_rows: torch.Tensor | None) -> None:
        self._add("xx", rows, rows)
        if float_rows is not None:
            drift = rows - float_rows
            self._add("xd", rows, drift)
            self._add("dd", drift, drift)
        self.count += len(rows)

    def finish(self, seed: int) -> None:
        """Means from sums, and what the loss needs of them in float32."""
        _check_ran(self.count)
        mean = {k: v / max(1, self.count) for k, v in self.sums.items()}
        self.xx = mean["xx"].float()
        w = self.weight.double()
        self.cross = (w @ mean["xd"].transpose(1, 2)).float() if "xd" in mean else None
        self.const = float(((w @ mean["dd"]) * w).sum()) if "dd" in mean else 0.0
        self.sums = {}

    def loss(self, delta: torch.Tensor, step: int) -> torch.Tensor:
        """Mean over rows of the squared output error, summed over outputs (all rows)."""
        d = delta.reshape(self.weight.shape)
        total = ((d @ self.xx) * d).sum()
        return total if self.cross is None else total + 2 * (d * self.cross).sum()

    def mse(self, delta: torch.Tensor) -> float:
        """Mean squared error per output element."""
        with torch.no_grad():
            d = delta.double().reshape(self.weight.shape)
            total = float(((d @ self.xx.double()) * d).sum()) + self.const
            if self.cross is not None:
                total += 2 * float((d * self.cross.double()).sum())
        return max(total, 0.0) / (self.weight.shape[0] * self.weight.shape[1])


class Rows:
    """The rows themselves and the output error they carry, fitted in minibatches."""

    def __init__(self, layer: nn.Module, batch_size: int) -> None:
        self.weight = layer.weight.detach().float()
        self.batch_size = batch_size
        self.parts: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.rows = torch.zeros(0)
        self.carried: torch.Tensor | None = None
        self.size, self.starts = 0, [0]

    def add(self, rows: torch.Tensor, float_rows: torch.Tensor | None) -> None:
        carried = None if float_rows is None else apply_rows(rows - float_rows, self.weight)
        self.parts.append((rows, carried))

    def finish(self, seed: int) -> None:
        """One shuffle, then steps take the rows in turn: slices are views, where a random
        draw per step would copy its rows every time."""
        _check_ran(len(self.parts))
        self.rows = torch.cat([r for r, _ in self.parts])
        carried = [c for _, c in self.parts if c is not None]
        self.carried = torch.cat(carried) if carried else None
        self.parts = []
        order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(seed))
        self.rows = self.rows[order]
        self.carried = None if self.carried is None else self.carried[order]
        self.size = min(self.batch_size, len(self.rows))
        self.starts = list(range(0, len(self.rows) - self.size + 1, self.size))

    def _error(self, delta: torch.Tensor, at: int, size: int) -> torch.Tensor:
        out = apply_rows(self.rows[at:at + size], delta)
        return out if self.carried is None else out + self.carried[at:at + size]

    def loss(self, delta: torch.Tensor, step: int) -> torch.Tensor:
        at = self.starts[step % len(self.starts)]
        return (self._error(delta, at, self.size) ** 2).sum(1).mean()

    def mse(self, delta: torch.Tensor) -> float:
        total = 0.0
        with torch.no_grad():
            for at in range(0, len(self.rows), CHUNK):
                total += float((self._error(delta, at, CHUNK).double() ** 2).sum())
        return total / max(1, len(self.rows) * self.weight.shape[0])


def _check_ran(count: int) -> None:
    if not count:
        raise TechniqueError("adaround: a layer did not run on the calibration data")


def layer_data(layer: nn.Module, batch_size: int) -> Moments | Rows:
    """Moments where a step over them costs less than one over `batch_size` rows."""
    return Moments(layer) if shape_of(layer)[1] <= batch_size else Rows(layer, batch_size)
