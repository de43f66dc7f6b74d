"""Cross-layer equalization: which consecutive layers can trade scale, and the trade itself.

Two layers joined by a ReLU (or by nothing) compute the same function when output channel i of
the first is divided by s_i and input channel i of the second multiplied by it, since
ReLU(x / s) = ReLU(x) / s for s > 0. With s_i = sqrt(r1_i / r2_i) both channels get the range
sqrt(r1_i * r2_i) (Nagel et al., ICCV 2019), so one outlier channel no longer takes the whole
int8 grid of a layer. A ReLU6 clips at 6, a bound the scaling moves: it becomes a clip at 6 / s_i
per channel (`ChannelClip`), or a plain ReLU as in the paper, which is not exact.

The scaling must reach nothing but the second layer, so pairs come from the torch.fx graph, where
a residual add or concatenation on the first layer's output is visible and the pair refused.
Where the model does not trace, pairs come from inside nn.Sequential containers, whose children
each feed only the next. The arithmetic runs on float64 copies written back once, so the result
is exact up to one float32 rounding however many sweeps the chains take.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import pairwise
from typing import cast

import torch
from torch import fx, nn
from torch.nn import functional as F

from slimkit.techniques.quantize.fold import fold_conv_bn

Layer = nn.Conv2d | nn.Linear
# Modules an eval-mode forward passes through unchanged.
_PASS = (nn.Identity, nn.Dropout)
_RELU_CALLS = {torch.relu, torch.relu_, F.relu}
# Sweeps stop once no scale moves a channel by more than this factor (as a log).
TOLERANCE = 1e-9
# High-bias absorption keeps what lies below mean - 3 * std of a normal pre-activation.
SIGMAS = 3.0


class ChannelClip(nn.Module):
    """A ReLU6 whose input channels were divided by s_i: it must now clip channel i at 6 / s_i
    for the model to compute what it did. `bound` is shaped to broadcast over the channel axis
    (C, 1, 1 after a convolution, C after a Linear)."""

    def __init__(self, bound: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bound", bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum(torch.relu(x), self.bound)


@dataclass
class Pair:
    layer1: str
    layer2: str
    # relu, relu6, clip (a ChannelClip from an earlier equalization) or none
    activation: str
    # The activation module's name, when it is one: a ReLU6 is replaced there.
    act_name: str | None = None


class _Tracer(fx.Tracer):
    """Keeps ChannelClip a single node, so a model equalized before still shows its pairs."""

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, ChannelClip) or super().is_leaf_module(m, name)


def trace(module: nn.Module) -> tuple[fx.Graph | None, str]:
    """The module's graph, or None, with how pairs will be found (for the report)."""
    try:
        return _Tracer().trace(module), "torch.fx"
    except Exception as e:  # any user forward may refuse symbolic tracing
        return None, f"nn.Sequential children (torch.fx could not trace: {type(e).__name__})"


def _module_activation(m: nn.Module) -> str | None:
    if isinstance(m, nn.ReLU6):
        return "relu6"
    if isinstance(m, ChannelClip):
        return "clip"
    return "relu" if isinstance(m, nn.ReLU) else None


def _fits(first: nn.Module, second: nn.Module) -> bool:
    if isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d):
        return first.out_channels == second.in_channels
    if isinstance(first, nn.Linear) and isinstance(second, nn.Linear):
        return first.out_features == second.in_features
    return False


class _Graph:
    """Which node is which module, and what may be scaled: a module called twice, or one whose
    weight another module shares, would carry the scaling somewhere else too."""

    def __init__(self, module: nn.Module, graph: fx.Graph) -> None:
        self.mods = dict(module.named_modules())
        self.calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
        params = Counter(id(p) for _, p in module.named_parameters(remove_duplicate=False))
        self.shared = {id(p) for p, k in params.items() if k > 1}
        self.graph = graph

    def module(self, node: fx.Node) -> nn.Module | None:
        return self.mods.get(str(node.target)) if node.op == "call_module" else None

    def layer(self, node: fx.Node, kinds: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> bool:
        m = self.module(node)
        return (isinstance(m, kinds) and self.calls[node.target] == 1
                and id(m.weight) not in self.shared)

    def activation(self, node: fx.Node) -> str | None:
        m = self.module(node)
        if m is not None:
            kind = _module_activation(m)
            # a shared ReLU needs no change; a shared ReLU6 would take another layer's bound
            return kind if kind == "relu" or self.calls[node.target] == 1 else None
        if node.op == "call_function" and node.target in _RELU_CALLS:
            return "relu"
        return "relu" if node.op == "call_method" and node.target in ("relu", "relu_") else None

    def only_user(self, node: fx.Node) -> fx.Node | None:
        """The single node reading `node`, if it reads nothing else."""
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        return user if user.all_input_nodes == [node] else None

    def pairs(self) -> list[Pair]:
        found = []
        for node in self.graph.nodes:
            if not self.layer(node):
                continue
            act, act_name, cur = "none", None, node
            while (nxt := self.only_user(cur)) is not None:
                if isinstance(self.module(nxt), _PASS):
                    cur = nxt
                elif act == "none" and (kind := self.activation(nxt)) is not None:
                    act, cur = kind, nxt
                    act_name = str(nxt.target) if nxt.op == "call_module" else None
                else:
                    first, second = self.module(node), self.module(nxt)
                    if self.layer(nxt) and first is not None and second is not None \
                            and _fits(first, second):
                        found.append(Pair(str(node.target), str(nxt.target), act, act_name))
                    break
        return found

    def norms(self) -> list[tuple[str, str]]:
        """(conv, BatchNorm) where the BatchNorm alone reads the convolution's output."""
        found = []
        for node in self.graph.nodes:
            user = self.only_user(node) if self.layer(node, (nn.Conv2d,)) else None
            if user is not None and isinstance(self.module(user), nn.BatchNorm2d) \
                    and self.calls[user.target] == 1:
                found.append((str(node.target), str(user.target)))
        return found


def _chain(seq: nn.Sequential, prefix: str) -> list[tuple[str, nn.Module]]:
    """A Sequential's leaves in order, nested Sequentials opened, pass-through modules left out."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in seq.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            out += _chain(child, full)
        elif not isinstance(child, _PASS):
            out.append((full, child))
    return out


def _chains(module: nn.Module) -> list[list[tuple[str, nn.Module]]]:
    """The chains of the outermost Sequentials. A module used in two places, or holding a
    weight another module shares, becomes a plain placeholder that breaks the chain there."""
    uses = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False))
    params = Counter(id(p) for _, p in module.named_parameters(remove_duplicate=False))

    def alone(m: nn.Module) -> bool:
        return uses[id(m)] == 1 and all(params[id(p)] == 1 for p in m.parameters())

    inner = {id(c) for m in module.modules() if isinstance(m, nn.Sequential) for c in m.children()}
    return [[(n, m if alone(m) else nn.Module()) for n, m in _chain(seq, name)]
            for name, seq in module.named_modules()
            if isinstance(seq, nn.Sequential) and id(seq) not in inner]


def _sequential_pairs(module: nn.Module) -> list[Pair]:
    found = []
    for chain in _chains(module):
        for i, (name, first) in enumerate(chain):
            if not isinstance(first, (nn.Conv2d, nn.Linear)):
                continue
            act, act_name, k = "none", None, i + 1
            if k < len(chain) and (kind := _module_activation(chain[k][1])) is not None:
                act, act_name, k = kind, chain[k][0], k + 1
            if k < len(chain) and _fits(first, chain[k][1]):
                found.append(Pair(name, chain[k][0], act, act_name))
    return found


def _sequential_norms(module: nn.Module) -> list[tuple[str, str]]:
    return [(a, b) for chain in _chains(module) for (a, conv), (b, bn) in pairwise(chain)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)]


def find_pairs(module: nn.Module, graph: fx.Graph | None) -> list[Pair]:
    """Consecutive layer pairs whose shared channels can be rescaled, in forward order."""
    return _Graph(module, graph).pairs() if graph is not None else _sequential_pairs(module)


def replace(module: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where `name` is, by attribute on its parent, so the structure stays."""
    parent, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, attr, new)


def fold_norms(module: nn.Module, graph: fx.Graph | None) -> dict[str, tuple[torch.Tensor, ...]]:
    """Fold every BatchNorm2d that alone reads a Conv2d's output; each becomes an Identity.

    Returns, per folded convolution, its BatchNorm's beta and |gamma|: the mean and spread of
    the pre-activation, which high-bias absorption needs and folding loses."""
    found = _Graph(module, graph).norms() if graph is not None else _sequential_norms(module)
    stats = {}
    for conv_name, bn_name in found:
        conv, bn = module.get_submodule(conv_name), module.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        if bn.running_var is None or bn.running_mean is None:
            continue  # normalizes by each batch's own statistics: nothing fixed to fold
        ones = torch.ones_like(bn.running_var)
        gamma = bn.weight.detach() if bn.affine else ones
        beta = bn.bias.detach() if bn.affine else torch.zeros_like(ones)
        stats[conv_name] = (beta.double().clone(), gamma.abs().double().clone())
        fold_conv_bn(conv, bn)
        replace(module, bn_name, nn.Identity())
    return stats


def out_ranges(w: torch.Tensor) -> torch.Tensor:
    """max |w| per output channel."""
    return w.abs().flatten(1).amax(1)


def _groups(layer: Layer) -> int:
    return layer.groups if isinstance(layer, nn.Conv2d) else 1


def in_ranges(w: torch.Tensor, layer: Layer) -> torch.Tensor:
    """max |w| per input channel; in a grouped conv only its group's outputs read a channel."""
    a = w.abs().flatten(2).amax(2) if w.dim() > 2 else w.abs()
    out, per_group = a.shape
    g = _groups(layer)
    return a.reshape(g, out // g, per_group).amax(1).flatten()


def per_input(s: torch.Tensor, layer: Layer, w: torch.Tensor) -> torch.Tensor:
    """A per-input-channel factor laid out to multiply `w` (the layer's weight)."""
    out, per_group = w.shape[:2]
    g = _groups(layer)
    full = s.reshape(g, 1, per_group).expand(g, out // g, per_group).reshape(out, per_group)
    return full.reshape(out, per_group, *[1] * (w.dim() - 2))


def range_spread(w: torch.Tensor) -> float | None:
    """The largest per-output-channel range over the median one (None if the median is 0)."""
    r = out_ranges(w).double()
    median = float(r.quantile(0.5))
    return float(r.max()) / median if median > 0 else None


class Equalizer:
    """Float64 copies of the paired layers' weights, rescaled sweep by sweep and written back
    once. `scales[k]` is what pair k divided its first layer's output channels by, in all."""

    def __init__(self, module: nn.Module, pairs: list[Pair]) -> None:
        self.pairs = pairs
        names = {n for p in pairs for n in (p.layer1, p.layer2)}
        self.layers = {n: cast(Layer, module.get_submodule(n)) for n in names}
        self.w = {n: m.weight.detach().double().clone() for n, m in self.layers.items()}
        self.b = {n: None if m.bias is None else m.bias.detach().double().clone()
                  for n, m in self.layers.items()}
        self.scales = [torch.ones(self.w[p.layer1].shape[0], dtype=torch.float64) for p in pairs]

    def _scale(self, k: int, s: torch.Tensor) -> None:
        p = self.pairs[k]
        w1 = self.w[p.layer1]
        self.w[p.layer1] = w1 / s.reshape(-1, *[1] * (w1.dim() - 1))
        if self.b[p.layer1] is not None:
            self.b[p.layer1] = self.b[p.layer1] / s
        w2 = self.w[p.layer2]
        self.w[p.layer2] = w2 * per_input(s, self.layers[p.layer2], w2)
        self.scales[k] = self.scales[k] * s

    def sweep(self) -> float:
        """Equalize every pair once, in order; returns the largest |log s| applied."""
        worst = 0.0
        for k, p in enumerate(self.pairs):
            r1 = out_ranges(self.w[p.layer1])
            r2 = in_ranges(self.w[p.layer2], self.layers[p.layer2])
            ok = (r1 > 0) & (r2 > 0)  # a dead channel keeps its scale
            s = torch.where(ok, torch.sqrt(r1 / torch.where(ok, r2, 1)), 1)
            self._scale(k, s)
            worst = max(worst, float(s.log().abs().max()))
        return worst

    def run(self, max_sweeps: int) -> tuple[int, bool]:
        """Sweep until the scales settle: a layer in the middle of a chain belongs to two pairs,
        and equalizing one pair moves the other's ranges. Returns (sweeps, converged)."""
        for i in range(1, max_sweeps + 1):
            if self.sweep() < TOLERANCE:
                return i, True
        return max_sweeps, False

    def absorb(self, k: int, beta: torch.Tensor, spread: torch.Tensor,
               bound: torch.Tensor | None) -> torch.Tensor:
        """High-bias absorption for pair k: c_i = max(0, mean_i - 3 std_i) of the (scaled)
        pre-activation leaves the first layer's bias for the second's. Exact only where the
        pre-activation stays above c (and away from zero padding). Returns c."""
        p = self.pairs[k]
        c = ((beta - SIGMAS * spread) / self.scales[k]).clamp(min=0)
        if bound is not None:
            c = torch.minimum(c, bound)
        b1 = self.b[p.layer1]
        assert b1 is not None  # a folded BatchNorm left a bias
        self.b[p.layer1] = b1 - c
        w2 = self.w[p.layer2]
        shift = (w2 * per_input(c, self.layers[p.layer2], w2)).flatten(1).sum(1)
        b2 = self.b[p.layer2]
        self.b[p.layer2] = shift if b2 is None else b2 + shift
        return c

    def write_back(self) -> None:
        with torch.no_grad():
            for n, m in self.layers.items():
                m.weight.copy_(self.w[n].to(m.weight.dtype))
                b = self.b[n]
                if b is not None and m.bias is None:
                    m.bias = nn.Parameter(b.to(m.weight.dtype))
                elif b is not None and m.bias is not None:
                    m.bias.copy_(b.to(m.bias.dtype))


def pads_with_zeros(layer: Layer) -> bool:
    """Whether the layer reads zeros beyond the border: those taps never saw the absorbed
    amount, so moving a bias into it would be wrong on every border pixel (tens of percent of
    the output on small feature maps)."""
    if not isinstance(layer, nn.Conv2d) or layer.padding_mode != "zeros":
        return False
    pad = layer.padding
    return pad == "same" if isinstance(pad, str) else any(p > 0 for p in pad)
