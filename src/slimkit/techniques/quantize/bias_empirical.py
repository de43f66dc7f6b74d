"""Empirical bias correction: each layer's output mean shift measured on calibration data.

Layers are corrected in the order they run, each fed by the model whose earlier layers are
already rounded and corrected, so a layer's correction is E[W_q x_q] - E[W x]: the shift its
own rounding causes and the drift it inherits. That costs a pass up to each layer (about half
a pass per layer in all), since no layer's inputs are known before the ones before it are done.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from slimkit.techniques.quantize.weight_layers import ChannelMean, Feed, output_means, run_to


def _swap(layers: dict[str, nn.Module], weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for n, w in weights.items():
            layers[n].weight.copy_(w)


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, float]:
    return {n: float((a[n] - b[n]).abs().mean()) for n in a}


def correct(module: nn.Module, feed: Feed, layers: dict[str, nn.Module],
            rounded: dict[str, torch.Tensor], check_feed: Feed,
            measured_on: str) -> dict[str, Any]:
    """Correct the biases of `layers` (in the order they run) for weights `rounded`, leaving
    the float weights in place; the report's rows give each layer's mean |E[y_q] - E[y]| over
    output channels on `check_feed`, all layers rounded, before and after."""
    from slimkit.progress import progress_bar

    floats = {n: m.weight.detach().clone() for n, m in layers.items()}
    target = output_means(module, feed, layers)
    check_target = target if measured_on == "calibration rows" else \
        output_means(module, check_feed, layers)
    try:
        _swap(layers, rounded)
        before = _gap(output_means(module, check_feed, layers), check_target)
        with progress_bar("bias correction", total=len(layers)) as advance:
            for n, layer in layers.items():  # earlier layers are already rounded and corrected
                mean = ChannelMean()
                run_to(module, feed, layer, lambda _x, out, m=mean, la=layer: m.add(out, la))
                with torch.no_grad():
                    layer.bias.sub_((mean.mean() - target[n]).to(layer.bias.dtype))
                advance(1, n)
        after = _gap(output_means(module, check_feed, layers), check_target)
    finally:
        _swap(layers, floats)
    rows = [{"layer": n, "shift_before": before[n], "shift_after": after[n]} for n in layers]
    return {"layers": rows, "corrected": len(rows), "left": 0, "measured_on": measured_on}
