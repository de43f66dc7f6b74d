"""The int8 weight grids of the runtimes' quantizers, reproduced bit for bit in torch.

Techniques that decide rounding in torch (bias correction, AdaRound) are only worth anything if
the quantizer that runs after export keeps their decisions. ONNX Runtime's `quantize_static`
takes symmetric per-output-channel weights with scale = absmax / qmax (qmax 127, or 64 with
`reduce_range`, the 7-bit grid used on CPUs without VNNI). A weight already on the grid, with
its channel's largest element at +-qmax, is quantized again to the very same integers and scale,
provided the scale is a fixed point of "absmax -> scale" in float32; `weight_scale` makes sure
it is (about 1 % of channels need the extra step).

NNCF (`nncf_int8`) uses the same int8 grid with two differences, both kept by the `nncf` grid:
a channel's range is at least 1 % of the layer's largest one (and at least 8e-5), so a channel
of small weights gets a coarser scale than ONNX Runtime's; and its overflow fix (on by default,
whatever the CPU) gives the first convolution after each input a half-range grid, scale =
2 absmax / 127, on which the largest element sits half-way between two integers. No rounding
decided in torch keeps that scale with every element on the grid, so there each channel's
largest elements stay as they are (NNCF rounds them) and the rest go on the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch loads when a grid is used: technique configs import this module
    import torch

WeightGrid = Literal["auto", "int8", "int7", "nncf"]
QMAX = {"int8": 127, "int7": 64, "nncf": 127}
# NNCF's floor on a channel's range (fix_zero_filters_symmetric): a share of the layer's
# largest range, and an absolute minimum.
_FLOOR_SHARE, _FLOOR_MIN = 0.01, 8e-5


def resolve_grid(grid: str) -> str:
    """`auto`: the grid `static_int8` picks on this CPU (7-bit weights without VNNI)."""
    if grid != "auto":
        return grid
    from slimkit.techniques.quantize.ort_kernels import resolve_mode

    return "int7" if resolve_mode("auto") == "reduce_range" else "int8"


def _absmax(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().flatten(1).abs().amax(1).float()


def _divide(value: torch.Tensor, by: float) -> torch.Tensor:
    # ONNX Runtime divides in float64, OpenVINO in float32; both give the float32 nearest to
    # the exact quotient.
    return (value.double() / by).float()


def _fixed_point(scale: torch.Tensor, qmax: int) -> torch.Tensor:
    import torch

    for _ in range(4):
        again = _divide(scale * qmax, qmax)
        if torch.equal(again, scale):
            break
        scale = again
    return scale


def weight_scale(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """ONNX Runtime's per-output-channel scale [out], chosen so that the quantizer computes it
    again from weights snapped to it (their absmax is then scale * qmax, rounded)."""
    import torch

    scale = _fixed_point(_divide(_absmax(weight), qmax), qmax)
    # ONNX Runtime quantizes an all-zero channel with scale 1; its weights stay zero anyway.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def fake_quant_weight(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """The weights rounded to the nearest point of ONNX Runtime's grid, as float32 values."""
    return Grid(qmax).nearest(weight)


@dataclass
class Plan:
    """How one weight tensor may be rounded, each field broadcasting against the weight."""

    scale: torch.Tensor  # per output channel
    limit: torch.Tensor  # largest integer magnitude a rounded element may take
    pinned: torch.Tensor  # elements rounding must not move: they hold the channel's range
    pinned_value: torch.Tensor  # what those elements are set to


@dataclass(frozen=True)
class Grid:
    """One layer's grid: ONNX Runtime's (`floor` and `half_range` off) or NNCF's."""

    qmax: int
    floor: bool = False
    half_range: bool = False

    def plan(self, weight: torch.Tensor) -> Plan:
        import torch

        w = weight.detach().float()
        shape = (-1, *[1] * (w.dim() - 1))
        amax = _absmax(w)
        pinned = w.abs() == amax.reshape(shape)
        if self.half_range:  # the extremes keep their value, so NNCF sees the same absmax
            seen, top, value = amax, self.qmax // 2, w
        else:  # the extremes go to +-qmax, so the quantizer sees scale * qmax
            scale = _fixed_point(_divide(amax, self.qmax), self.qmax)
            seen, top = scale * self.qmax, self.qmax
            value = torch.sign(w) * scale.reshape(shape) * self.qmax
        floored = torch.zeros_like(amax, dtype=torch.bool)
        if self.floor:
            least = torch.clamp(seen.max() * _FLOOR_SHARE, min=_FLOOR_MIN)
            floored = seen < least
            seen = torch.where(floored, least, seen)
        scale = _divide(2 * seen if self.half_range else seen, self.qmax)
        if not self.half_range:
            scale = torch.where(floored, scale, _fixed_point(scale, self.qmax))
        # A floored channel's range is the floor, not its weights: staying a step below it
        # keeps it so, and nothing there needs pinning but an all-zero channel's zeros.
        limit = torch.where(floored, torch.tensor(top - 1.0), torch.tensor(float(top)))
        pinned = pinned & ~floored.reshape(shape) | (amax == 0).reshape(shape)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return Plan(scale.reshape(shape), limit.reshape(shape), pinned, value)

    def nearest(self, weight: torch.Tensor) -> torch.Tensor:
        import torch

        p = self.plan(weight)
        q = torch.clamp(torch.round(weight.detach().float() / p.scale), -p.limit, p.limit)
        return torch.where(p.pinned, p.pinned_value, p.scale * q)


def layer_grid(grid: str, first_conv: bool) -> Grid:
    """The grid of one layer under a resolved grid name (`first_conv`: NNCF's overflow fix)."""
    nncf = grid == "nncf"
    return Grid(QMAX[grid], floor=nncf, half_range=nncf and first_conv)
