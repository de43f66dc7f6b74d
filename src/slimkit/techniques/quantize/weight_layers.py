"""The Conv2d and Linear layers a weight-rounding step works on, and their activations on data.

Layers are taken in the order a forward pass runs them, because each one's inputs depend on
the layers before it. A pass that only needs one layer's activations stops as soon as that
layer has run, so walking every layer costs about half a pass per layer rather than a full one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import TechniqueError
from slimkit.hooks import forward_hooks

if TYPE_CHECKING:
    from slimkit.dataset import Dataset
    from slimkit.model import TorchModel

KINDS = (nn.Conv2d, nn.Linear)


@dataclass
class Feed:
    """The model's calibration inputs, batch by batch, as the module takes them."""

    data: Dataset
    names: list[str]
    batch_size: int = 16

    @classmethod
    def of(cls, model: TorchModel, data: Dataset, samples: int, batch_size: int = 16) -> Feed:
        return cls(data.head(min(samples, len(data))), [i.name for i in model.inputs],
                   batch_size)

    def batches(self) -> Iterator[list[torch.Tensor]]:
        for batch in self.data.batches(self.batch_size):
            yield [torch.from_numpy(np.ascontiguousarray(batch[n])) for n in self.names]


@dataclass
class Walk:
    """What one forward pass showed: layers in the order they ran, those that ran more than
    once (their inputs are not one tensor), and the first convolution(s) after the input."""

    order: list[str] = field(default_factory=list)
    repeated: set[str] = field(default_factory=set)
    first_convs: set[str] = field(default_factory=set)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # each layer's input


def walk(module: nn.Module, feed: Feed) -> Walk:
    """Run one example and note which Conv2d/Linear layers run, in order."""
    seen = Walk()
    first_input: list[torch.Tensor] = []

    def note(name: str, layer: nn.Module, x: torch.Tensor) -> None:
        if name in seen.order:
            seen.repeated.add(name)
            return
        seen.order.append(name)
        seen.shapes[name] = tuple(x.shape)
        if isinstance(layer, nn.Conv2d):
            if not first_input:
                first_input.append(x)
            if x is first_input[0]:  # NNCF's overflow fix takes every conv fed by the input
                seen.first_convs.add(name)

    layers = {n: m for n, m in module.named_modules() if isinstance(m, KINDS)}
    hooks = [m.register_forward_pre_hook(lambda m, args, n=n: note(n, m, args[0]))
             for n, m in layers.items()]
    try:
        with torch.no_grad():
            module(*[t[:1] for t in next(iter(feed.batches()))])
    finally:
        for h in hooks:
            h.remove()
    return seen


class _Stop(Exception):
    """Raised from a hook once the layer of interest has run: the rest of the pass is waste."""


def run_to(module: nn.Module, feed: Feed, layer: nn.Module,
           on_call: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
    """Run the data up to `layer` and hand each batch's input and output of it to `on_call`."""

    def hook(_m: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        on_call(args[0], out)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for batch in feed.batches():
                try:
                    module(*batch)
                except _Stop:
                    continue
                raise TechniqueError(f"the layer {type(layer).__name__} did not run on the "
                                     f"calibration data")
    finally:
        handle.remove()


def inputs_at(module: nn.Module, feed: Feed, layer: nn.Module) -> Iterator[torch.Tensor]:
    """The layer's input, batch by batch; each pass stops once the layer has it."""
    got: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        got.append(args[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        for batch in feed.batches():
            got.clear()
            with torch.no_grad(), contextlib.suppress(_Stop):
                module(*batch)
            if not got:
                raise TechniqueError(f"the layer {type(layer).__name__} did not run on the "
                                     f"calibration data")
            yield got[0]
    finally:
        handle.remove()


def run_with(module: nn.Module, feed: Feed,
             hooks: dict[nn.Module, Callable[[torch.Tensor], None]]) -> None:
    """One full pass over the data, handing each layer's input to its hook."""
    pre = [(m, lambda _m, args, f=f: f(args[0])) for m, f in hooks.items()]
    with forward_hooks(pre, pre=True), torch.no_grad():
        for batch in feed.batches():
            module(*batch)


def output_means(module: nn.Module, feed: Feed,
                 layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Each layer's output averaged per output channel over the data, in one full pass."""
    sums: dict[str, ChannelMean] = {n: ChannelMean() for n in layers}
    hooks = [(m, lambda m, _a, out, n=n: sums[n].add(out, m)) for n, m in layers.items()]
    with forward_hooks(hooks), torch.no_grad():
        for batch in feed.batches():
            module(*batch)
    return {n: s.mean() for n, s in sums.items()}


class ChannelMean:
    """A running per-output-channel mean of a layer's outputs (channels second for a
    convolution, last for a Linear)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, out: torch.Tensor, layer: nn.Module) -> None:
        y = out.detach().double()
        flat = y.transpose(0, 1).flatten(1) if isinstance(layer, nn.Conv2d) \
            else y.reshape(-1, y.shape[-1]).T
        self.total = flat.sum(1) if self.total is None else self.total + flat.sum(1)
        self.count += flat.shape[1]

    def mean(self) -> torch.Tensor:
        if self.total is None:
            raise TechniqueError("a layer did not run on the calibration data")
        return self.total / self.count


def fold(module: nn.Module) -> tuple[int, int]:
    """Fold each BatchNorm into the convolution before it, as the ONNX export would anyway:
    rounding decided on unfolded weights would not be the rounding that runs. Returns how
    many were folded and how many BatchNorms are left."""
    from slimkit.techniques.quantize.fold import fold_batchnorms

    folded = fold_batchnorms(module)
    return folded, sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def zero_padding(layer: nn.Conv2d) -> list[int]:
    """[left, right, top, bottom] as the convolution pads, 'same' and 'valid' included."""
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return [0, 0, 0, 0]
        pads = []
        for k, d in zip(reversed(layer.kernel_size), reversed(layer.dilation), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return pads
    ph, pw = layer.padding
    return [pw, pw, ph, ph]


def ensure_bias(layer: nn.Module) -> bool:
    """Give `layer` a zero bias if it has none; whether it had to."""
    if layer.bias is not None:
        return False
    out = layer.weight.shape[0]
    layer.bias = nn.Parameter(torch.zeros(out, dtype=layer.weight.dtype))
    return True
