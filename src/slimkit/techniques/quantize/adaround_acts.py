"""The runtime's activation quantization, simulated on the inputs of the layers AdaRound rounds.

After export every Conv/Linear input becomes a uint8 tensor with one scale and zero point
(ONNX Runtime's QDQ and OpenVINO both quantize them; the chain between convolutions only
changes where the rounding happens, not that it happens). With these hooks on the model being
rounded, each layer is fitted on inputs that carry the activation error of everything before it
and its own input rounding, against the float model's output, so the learned rounding makes up
for activation error too (AdaRound's paper and AIMET fit with activations quantized in the same
way). Ranges come from the float model's inputs by the same histogram methods `static_int8` uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.techniques.quantize.calibrate import Histogram, Method, compute_range
from slimkit.techniques.quantize.primitives import affine_params
from slimkit.techniques.quantize.weight_layers import Feed, run_with

BINS = 2048


def input_ranges(module: nn.Module, feed: Feed, layers: dict[str, nn.Module],
                 method: Method, percentile: float) -> dict[str, tuple[float, float]]:
    """Each layer's input range on the calibration data: one pass for the extremes, one for
    histograms inside them."""
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def extremes(name: str) -> Callable[[torch.Tensor], None]:
        def note(x: torch.Tensor) -> None:
            lo[name] = min(lo.get(name, np.inf), float(x.min()))
            hi[name] = max(hi.get(name, -np.inf), float(x.max()))
        return note

    run_with(module, feed, {layer: extremes(n) for n, layer in layers.items()})
    hists = {n: Histogram(np.zeros(BINS), np.linspace(lo[n], max(hi[n], lo[n] + 1e-6), BINS + 1),
                          lo[n], hi[n]) for n in layers}

    def count(name: str) -> Callable[[torch.Tensor], None]:
        return lambda x: hists[name].add(x.detach().float().numpy())

    run_with(module, feed, {layer: count(n) for n, layer in layers.items()})
    return {n: compute_range(h, method, percentile=percentile) for n, h in hists.items()}


def quantize_inputs(layers: dict[str, nn.Module],
                    ranges: dict[str, tuple[float, float]]) -> list[Any]:
    """Hooks that round each layer's input to uint8 on its range; remove them when done."""
    handles = []
    for name, layer in layers.items():
        lo, hi = ranges[name]
        scale, zero = affine_params(min(lo, 0.0), max(hi, 0.0), 8, False, signed=False)
        s, z = float(scale), int(zero)

        def hook(_m: nn.Module, args: tuple[Any, ...], s: float = s,
                 z: int = z) -> tuple[Any, ...]:
            x = torch.fake_quantize_per_tensor_affine(args[0].float(), s, z, 0, 255)
            return (x, *args[1:])

        handles.append(layer.register_forward_pre_hook(hook))
    return handles
