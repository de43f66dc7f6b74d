"""Per-layer pruning ratios from a sensitivity scan, not one ratio for all.

Layers differ a lot in how much of them can go: an early conv with few channels may carry most
of the signal, while a wide late block is mostly redundant and also costs most of the FLOPs.
Each group is pruned alone at a few kept counts and the quality loss on real data is measured;
a greedy allocation then repeatedly takes the step that loses least per FLOP saved until the
FLOPs target is met, and finally hands back channels wherever the budget still allows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.evaluate.fidelity import relative_error
from slimkit.techniques.allocate import buy_while_it_helps, cut_to
from slimkit.techniques.prune.graph import Group, apply_kept, mask, unmask
from slimkit.train.outputs import first_tensor, label_tensor, uses_labels

Quality = Callable[[nn.Module], float]


def quality_loss(module: nn.Module, data: Dataset, names: list[str]) -> Quality:
    """Loss increase against the unpruned `module`: cross-entropy on the labels when they are
    class ids, else the relative squared error against the unpruned outputs."""
    feeds = [{n: torch.from_numpy(b[n]) for n in names} for b in data.batches(64)]

    def outputs(m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([first_tensor(m(**f)).float() for f in feeds])

    reference = outputs(module)
    labels = label_tensor(data.labels)
    by_labels = uses_labels(reference, labels)

    # Cross-entropy, not accuracy: a scan prunes a little at a time, and accuracy on a few
    # hundred examples moves in steps too coarse to rank the levels by.
    def loss(m: nn.Module) -> float:
        out = outputs(m)
        if by_labels:
            assert labels is not None
            return float(nn.functional.cross_entropy(out, labels))
        return relative_error(out, reference)

    base = loss(module)
    return lambda m: loss(m) - base


def scan(module: nn.Module, dg: Any, example: dict[str, torch.Tensor], groups: list[Group],
         levels: dict[str, list[int]], order: dict[str, list[int]],
         quality: Quality, advance: Callable[[int, str], None] | None = None,
         ) -> dict[str, dict[int, float]]:
    """Quality loss of each group pruned alone to each of its kept counts."""
    curves: dict[str, dict[int, float]] = {}
    for g in groups:
        curves[g.root] = {}
        for k in levels[g.root]:
            saved = mask(dg, module, g.root, order[g.root][: g.channels - k])
            if saved is None:
                trial = copy.deepcopy(module)
                apply_kept(trial, example, {g.root: k}, order)
                curves[g.root][k] = quality(trial)
            else:
                try:
                    curves[g.root][k] = quality(module)
                finally:
                    unmask(saved)
            if advance is not None:
                advance(1, g.root)
    return curves


class FlopsModel:
    """FLOPs of the network for any kept counts, without building it.

    A conv's or Linear's FLOPs scale with its kept outputs times its kept inputs (a depthwise
    conv's with its channels only); whatever else the counter sees stays as it is.
    """

    def __init__(self, groups: list[Group], layers: dict[str, float], total: float,
                 depthwise: set[str]) -> None:
        self.groups = {g.root: g for g in groups}
        self.layers = layers
        self.fixed = total - sum(layers.values())
        self.depthwise = depthwise

    def layer(self, name: str, kept: dict[str, int]) -> float:
        out_ratio, in_ratio = 1.0, 1.0
        for root, g in self.groups.items():
            r = kept.get(root, g.channels) / g.channels
            if name in g.outputs:
                out_ratio = r
            if name in g.inputs:
                in_ratio -= g.inputs[name] * (1 - r)
        if name in self.depthwise:
            return self.layers[name] * out_ratio
        return self.layers[name] * out_ratio * in_ratio

    def __call__(self, kept: dict[str, int]) -> float:
        return self.fixed + sum(self.layer(n, kept) for n in self.layers)


def allocate(groups: list[Group], curves: dict[str, dict[int, float]], flops: FlopsModel,
             target: float) -> dict[str, int]:
    """Kept count per group reaching `target` FLOPs with the least summed quality loss: cut
    the step that loses least per FLOP saved until the target is met, then, since the last cut
    may overshoot, give back whichever level removes most loss while the target still holds.
    FLOPs do not add up per group (a group's count also thins the next layer's inputs), so the
    allocation is scored on the whole network's count."""
    # A group's options, fewest channels first; unpruned costs nothing in quality.
    damage = {g.root: {**{k: curves[g.root][k] for k in sorted(curves[g.root])},
                       g.channels: 0.0} for g in groups}
    kept = cut_to(damage, {g.root: g.channels for g in groups}, flops, target)
    if kept is None:
        floor = flops({g.root: min(curves[g.root], default=g.channels) for g in groups})
        raise TechniqueError(f"prune_channels: the FLOPs target is out of reach; the most "
                             f"the scanned levels remove leaves {floor / flops({}):.2f}")
    # The hand-back ranks by loss removed, not per FLOP: whatever still fits is free to take.
    # Groups by name, last first, so that exact ties resolve the same whatever the group order.
    by_name = dict(sorted(damage.items(), reverse=True))
    return buy_while_it_helps(by_name, kept, flops, target, per_cost=False)
