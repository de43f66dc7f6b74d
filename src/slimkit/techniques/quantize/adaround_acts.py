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

from typing import Any

import torch
from torch import nn

from slimkit.observe import HistogramObserver, MinMax, Request, collect
from slimkit.techniques.quantize.calibrate import Method, compute_range
from slimkit.techniques.quantize.primitives import affine_params
from slimkit.techniques.quantize.weight_layers import Feed

BINS = 2048


def input_ranges(module: nn.Module, feed: Feed, layers: list[str], method: Method,
                 percentile: float) -> dict[str, tuple[float, float]]:
    """Each named layer's input range on the calibration data: one pass for the extremes,
    one for histograms on exactly that range (as static_int8 collects on the ONNX graph)."""

    def pass_(requests: list[Request]) -> dict[str, Any]:
        return collect(module, feed.data, feed.names, requests, batch_size=feed.batch_size,
                       title="activation ranges")

    extremes = pass_([Request(layers, {"range": MinMax})])

    def fixed(name: str) -> Any:
        lo, hi = extremes[name].inputs["range"].range()
        return lambda: HistogramObserver(BINS, lo, hi)

    hists = pass_([Request([n], {"histogram": fixed(n)}) for n in layers])
    return {n: compute_range(hists[n].inputs["histogram"].histogram(), method,
                             percentile=percentile) for n in layers}


def rounding_hooks(layers: dict[str, nn.Module], ranges: dict[str, tuple[float, float]],
                   ) -> list[tuple[nn.Module, Any]]:
    """Pre-hooks that round each layer's input to uint8 on its range (see `forward_hooks`)."""
    hooks = []
    for name, layer in layers.items():
        lo, hi = ranges[name]
        scale, zero = affine_params(min(lo, 0.0), max(hi, 0.0), 8, False, signed=False)
        s, z = float(scale), int(zero)

        def hook(_m: nn.Module, args: tuple[Any, ...], s: float = s,
                 z: int = z) -> tuple[Any, ...]:
            x = torch.fake_quantize_per_tensor_affine(args[0].float(), s, z, 0, 255)
            return (x, *args[1:])

        hooks.append((layer, hook))
    return hooks
