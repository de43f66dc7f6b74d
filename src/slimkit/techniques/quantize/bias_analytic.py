"""Expected layer inputs from BatchNorm statistics, for data-free bias correction.

After a BatchNorm a channel is roughly normal with mean beta and standard deviation |gamma|;
through ReLU or ReLU6 its mean is that of a clipped normal. A layer whose input comes straight
from conv-BN-activation (through pooling, flattening or dropout, which keep channel means)
therefore has a known E[x] per input channel without any data. Other inputs (a residual sum,
the model's input) have no such estimate and are left alone. Zero padding, which lowers what
a convolution's border taps see on average, is counted from the input's size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import fx, nn
from torch.nn import functional as F

from slimkit.techniques.quantize.weight_layers import zero_padding

# Operations that keep each channel's mean (or, flattening, repeat it per position).
_KEEP_MODULES = (nn.Dropout, nn.Identity, nn.Flatten, nn.AdaptiveAvgPool2d)
_KEEP_CALLS = {torch.flatten, F.adaptive_avg_pool2d, F.dropout}
_KEEP_METHODS = {"flatten"}
_ACT_MODULES = {nn.ReLU: 6e36, nn.ReLU6: 6.0}  # activation -> upper clip
_ACT_CALLS = {F.relu: 6e36, torch.relu: 6e36, F.relu6: 6.0}


def _normal_relu_mean(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[max(z, 0)] for z ~ N(mu, sigma^2), per channel."""
    z = mu / sigma
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return mu * cdf + sigma * pdf


def clipped_normal_mean(mu: torch.Tensor, sigma: torch.Tensor, top: float) -> torch.Tensor:
    """E[clip(z, 0, top)] for z ~ N(mu, sigma^2): clip(z, 0, t) = relu(z) - relu(z - t)."""
    sigma = sigma.clamp(min=1e-12).double()
    mu = mu.double()
    mean = _normal_relu_mean(mu, sigma)
    if top < 1e30:
        mean = mean - _normal_relu_mean(mu - top, sigma)
    return mean.float()


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> nn.Module | None:
    return modules.get(str(node.target)) if node.op == "call_module" else None


def _activation_top(node: fx.Node, modules: dict[str, nn.Module]) -> float | None:
    found = _kind(node, modules)
    if found is not None:
        return _ACT_MODULES.get(type(found))
    if node.op == "call_function":
        return _ACT_CALLS.get(node.target)  # type: ignore[arg-type]
    return 6e36 if node.op == "call_method" and node.target == "relu" else None


def _keeps_means(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    found = _kind(node, modules)
    if found is not None:
        return isinstance(found, _KEEP_MODULES)
    if node.op == "call_function":
        return node.target in _KEEP_CALLS
    return node.op == "call_method" and node.target in _KEEP_METHODS


def input_means(module: nn.Module, layers: list[str]) -> tuple[dict[str, torch.Tensor], str]:
    """E[x] per input channel of each layer in `layers` fed by conv-BN-ReLU/ReLU6, from the
    unfolded model's BatchNorm parameters; and why none were found when tracing fails."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception as e:  # any model code torch.fx cannot follow
        return {}, f"torch.fx cannot trace the model ({type(e).__name__})"
    modules = dict(module.named_modules())
    found: dict[str, torch.Tensor] = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers or not node.args:
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and _keeps_means(source, modules) and source.args:
            source = source.args[0]
        if not isinstance(source, fx.Node):
            continue
        top = _activation_top(source, modules)
        bn_node = source.args[0] if top is not None and source.args else None
        bn = _kind(bn_node, modules) if isinstance(bn_node, fx.Node) else None
        if not isinstance(bn, nn.BatchNorm2d) or not isinstance(
                _kind(bn_node.args[0], modules), nn.Conv2d):  # type: ignore[union-attr]
            continue
        gamma = bn.weight.detach() if bn.affine else torch.ones(bn.num_features)
        beta = bn.bias.detach() if bn.affine else torch.zeros(bn.num_features)
        found[str(node.target)] = clipped_normal_mean(beta, gamma.abs(), top)  # type: ignore[arg-type]
    return found, ""


def _coverage(layer: nn.Conv2d, shape: tuple[int, ...]) -> torch.Tensor:
    """For each kernel tap [kh, kw], the share of output positions where it reads the input
    rather than zero padding: E[x] there is the channel's mean times that share. Other
    padding modes repeat input values, which keep the mean."""
    if layer.padding_mode != "zeros":
        return torch.ones(layer.kernel_size, dtype=torch.float64)
    left, right, top, bottom = zero_padding(layer)
    axes = []
    for size, k, s, d, (before, after) in zip(shape[2:], layer.kernel_size, layer.stride,
                                              layer.dilation, [(top, bottom), (left, right)],
                                              strict=True):
        out = (size + before + after - d * (k - 1) - 1) // s + 1
        at = torch.arange(out)[:, None] * s - before + torch.arange(k)[None, :] * d
        axes.append(((at >= 0) & (at < size)).double().mean(0))
    return axes[0][:, None] * axes[1][None, :]


def shift_of(delta: torch.Tensor, mean: torch.Tensor, layer: nn.Module,
             shape: tuple[int, ...]) -> torch.Tensor | None:
    """E[delta x] per output channel for inputs of shape `shape` whose channels have mean
    `mean`; None when the means do not fit the layer's inputs."""
    if isinstance(layer, nn.Linear):
        width = delta.shape[1]
        if width % len(mean):
            return None
        return delta.double() @ mean.double().repeat_interleave(width // len(mean))
    assert isinstance(layer, nn.Conv2d)
    groups, out = layer.groups, delta.shape[0]
    per_group = delta.shape[1]
    if per_group * groups != len(mean):
        return None
    summed = (delta.double() * _coverage(layer, shape)).sum((2, 3))
    summed = summed.reshape(groups, out // groups, per_group)
    return (summed * mean.double().reshape(groups, 1, per_group)).sum(2).reshape(out)


def correct(layers: dict[str, nn.Module], rounded: dict[str, torch.Tensor],
            means: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]],
            why: str) -> dict[str, Any]:
    """Subtract each layer's estimated shift from its bias, where `means` has its inputs."""
    rows = []
    for n, layer in layers.items():
        shift = None if n not in means else \
            shift_of(rounded[n] - layer.weight.detach(), means[n], layer, shapes[n])
        if shift is None:
            continue
        with torch.no_grad():
            layer.bias.sub_(shift.to(layer.bias.dtype))
        rows.append({"layer": n, "shift_before": float(shift.abs().mean()), "shift_after": 0.0})
    report: dict[str, Any] = {"layers": rows, "corrected": len(rows),
                              "left": len(layers) - len(rows),
                              "measured_on": "BatchNorm statistics (an estimate)"}
    if why:
        report["why_none"] = why
    return report
