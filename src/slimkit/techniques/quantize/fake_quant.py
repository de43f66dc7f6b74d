"""Fake quantization for training: learned step sizes, straight-through rounding.

Forward computes s * (clamp(round(x / s) + z, qmin, qmax) - z), so the network trains against
the exact values the integer kernels will see; rounding passes gradients straight through, and
the step size s learns from the task loss (LSQ). Under ONNX export the same modules emit
QuantizeLinear / DequantizeLinear, so the runtime receives the learned scales and runs int8
kernels. Weights narrower than 8 bits are exported as int8 values confined to their grid.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from slimkit.techniques.quantize.primitives import qrange


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class FakeQuant(nn.Module):
    def __init__(self, bits: int, signed: bool, shape: tuple[int, ...] = (1,),
                 learn: bool = True) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.scale = nn.Parameter(torch.ones(shape), requires_grad=learn)
        self.register_buffer("zero_point", torch.zeros(shape, dtype=torch.int32))

    def init(self, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            self.scale.copy_(scale.reshape(self.scale.shape).clamp_min(1e-8))
            if zero_point is not None:
                self.zero_point.copy_(zero_point.reshape(self.zero_point.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qmin, qmax = qrange(self.bits, self.signed)
        s = self.scale.abs().clamp_min(1e-8)
        z = self.zero_point.to(x.dtype)
        if torch.onnx.is_in_onnx_export():
            return self._export(x, s, qmin, qmax)
        return s * (torch.clamp(_round_ste(x / s) + z, qmin, qmax) - z)

    def _export(self, x: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
        """QuantizeLinear / DequantizeLinear on constants the runtime can fold: the scale must
        be a plain initializer, and weights must already lie on their (maybe narrow) grid,
        which `finalize` guarantees."""
        wide = (0, 255) if not self.signed else (-128, 127)
        if self.scale.numel() == 1:
            return torch.fake_quantize_per_tensor_affine(
                x, self.scale.detach().reshape(()), self.zero_point.reshape(()), *wide)
        return torch.fake_quantize_per_channel_affine(
            x, self.scale.detach().reshape(-1), self.zero_point.reshape(-1), 0, *wide)

    @torch.no_grad()
    def finalize(self) -> None:
        """Store the step size as trained (positive) so export needs no arithmetic on it."""
        self.scale.copy_(self.scale.abs().clamp_min(1e-8))


class QuantLayer(nn.Module):
    """A Conv2d or Linear whose input and weight pass through fake quantizers."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, weight_bits: int,
                 activation_bits: int | None, learn: bool) -> None:
        super().__init__()
        self.layer = layer
        out = layer.weight.shape[0]
        shape = (out,) + (1,) * (layer.weight.dim() - 1)
        self.weight_quant = FakeQuant(weight_bits, True, shape, learn)
        self.input_quant = (FakeQuant(activation_bits, False, (1,), learn)
                            if activation_bits else None)
        # Quantizing the output too gives the Q-Conv-Q pattern that ONNX Runtime runs as one
        # integer kernel (QLinearConv / QLinearMatMul); without it the layer stays float.
        self.output_quant = (FakeQuant(activation_bits, False, (1,), learn)
                             if activation_bits else None)

    @torch.no_grad()
    def finalize(self) -> None:
        """Snap the weights onto their grid, so the exported int8 values are exact."""
        for fq in (self.weight_quant, self.input_quant, self.output_quant):
            if fq is not None:
                fq.finalize()
        qmin, qmax = qrange(self.weight_quant.bits, True)
        s = self.weight_quant.scale
        self.layer.weight.copy_(s * torch.clamp(torch.round(self.layer.weight / s), qmin, qmax))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        w = self.weight_quant(self.layer.weight)
        if isinstance(self.layer, nn.Conv2d):
            c = self.layer
            y = F.conv2d(x, w, c.bias, c.stride, c.padding, c.dilation, c.groups)
        else:
            y = F.linear(x, w, self.layer.bias)
        return self.output_quant(y) if self.output_quant is not None else y


def wrap_layers(module: nn.Module, weight_bits: int, activation_bits: int | None,
                learn: bool = True, bits: dict[str, int] | None = None) -> list[QuantLayer]:
    """Replace every Conv2d and Linear in place; returns the wrappers in module order.

    `bits` maps layer names (as in `named_modules`) to weight widths; 16 or more leaves the
    layer in float.
    """
    wrapped = []
    for parent_name, parent in list(module.named_modules()):
        if isinstance(parent, QuantLayer):
            continue
        for name, child in list(parent.named_children()):
            if not isinstance(child, (nn.Conv2d, nn.Linear)):
                continue
            full = f"{parent_name}.{name}" if parent_name else name
            width = (bits or {}).get(full, weight_bits)
            if width >= 16:
                continue
            q = QuantLayer(child, width, activation_bits, learn)
            setattr(parent, name, q)
            wrapped.append(q)
    return wrapped
