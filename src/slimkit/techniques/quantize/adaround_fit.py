"""Learned rounding of one layer's weights (AdaRound).

Each weight rounds down or up on a fixed grid; rounding to nearest is the best choice per
weight but not per layer, since the errors of one output add up. AdaRound (Nagel et al.,
"Up or Down? Adaptive Rounding for Post-Training Quantization", 2020) relaxes the choice to
floor + h(V), h a rectified sigmoid in [0, 1], and minimises the layer's output error on
calibration inputs (see adaround_data) plus a regulariser that pulls every h to 0 or 1 more
firmly as its exponent anneals from 20 to 2; at the end h is fixed to 0 or 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from slimkit.techniques.quantize.adaround_data import Moments, Rows
from slimkit.techniques.quantize.grid import Grid

ZETA, GAMMA = 1.1, -0.1  # the rectified sigmoid's stretch: h reaches 0 and 1 exactly
BETA_START, BETA_END = 20.0, 2.0
WARMUP = 0.2  # share of iterations with the output error alone
REG_WEIGHT = 0.01


@dataclass
class Fit:
    """How the rounding of one layer is learned."""

    iterations: int
    learning_rate: float


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


@dataclass
class Relaxed:
    """A layer's weights as scale * (floor + h) on the grid, except where rounding has no
    choice (a channel's extremes, elements at the grid's limit), which keep `fixed_value`."""

    scale: torch.Tensor
    floor: torch.Tensor
    fixed: torch.Tensor
    fixed_value: torch.Tensor

    @classmethod
    def of(cls, weight: torch.Tensor, grid: Grid) -> Relaxed:
        w = weight.detach().float()
        plan = grid.plan(w)
        floor = torch.floor(w / plan.scale)
        fixed = plan.pinned | (floor >= plan.limit) | (floor < -plan.limit)
        return cls(plan.scale.expand_as(w), floor, fixed, grid.nearest(w))

    def rounded(self, up: torch.Tensor) -> torch.Tensor:
        """Grid points exactly: the product the quantizer's dequantization computes."""
        return torch.where(self.fixed, self.fixed_value, self.scale * (self.floor + up))


def learn(weight: torch.Tensor, grid: Grid, data: Moments | Rows, fit: Fit,
          note: Callable[[float], None] = lambda _loss: None) -> torch.Tensor:
    """Weights on `grid` whose rounding minimises the output error `data` measures."""
    w = weight.detach().float()
    relaxed = Relaxed.of(w, grid)
    frac = (w / relaxed.scale - relaxed.floor).clamp(0.01, 0.99)
    v = nn.Parameter(-torch.log((ZETA - GAMMA) / (frac - GAMMA) - 1))  # h(v) = frac
    # The weights' error as offset + step * h, small numbers throughout so none lose digits.
    offset = relaxed.rounded(torch.zeros_like(w)) - w
    step = torch.where(relaxed.fixed, torch.zeros_like(w), relaxed.scale)
    opt = torch.optim.Adam([v], lr=fit.learning_rate, fused=True)
    warm = int(WARMUP * fit.iterations)
    for it in range(fit.iterations):
        h = _h(v)
        loss = data.loss(offset + step * h, it)
        if it >= warm:
            progress = (it - warm) / max(1, fit.iterations - warm)
            beta = BETA_END + (BETA_START - BETA_END) * (1 - progress)
            loss = loss + REG_WEIGHT * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it % 100 == 0 or it == fit.iterations - 1:
            note(float(loss.detach()))
    with torch.no_grad():
        return relaxed.rounded((v >= 0).float())


def seed_of(index: int) -> int:
    """A layer's own random stream, so a resumed run draws what an uninterrupted one did."""
    return (0x5EED + 7919 * index) % 2**31
