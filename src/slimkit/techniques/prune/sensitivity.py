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

    def loss(m: nn.Module) -> float:
        out = outputs(m)
        if by_labels:
            assert labels is not None
            return float(nn.functional.cross_entropy(out, labels))
        power = float((reference**2).mean()) or 1.0
        return float(((out - reference) ** 2).mean()) / power

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
    """Kept count per group reaching `target` FLOPs with the least summed quality loss."""
    kept = {g.root: g.channels for g in groups}

    def loss(root: str, k: int) -> float:
        return curves[root].get(k, 0.0)

    while flops(kept) > target:
        now = flops(kept)
        best: tuple[float, str, int] | None = None
        for g in groups:
            for k in curves[g.root]:
                if k >= kept[g.root]:
                    continue
                saved = now - flops({**kept, g.root: k})
                if saved <= 0:
                    continue
                score = (loss(g.root, k) - loss(g.root, kept[g.root])) / saved
                if best is None or score < best[0]:
                    best = (score, g.root, k)
        if best is None:
            floor = flops({g.root: min(curves[g.root], default=g.channels) for g in groups})
            raise TechniqueError(f"prune_channels: the FLOPs target is out of reach; the most "
                                 f"the scanned levels remove leaves {floor / flops({}):.2f}")
        kept[best[1]] = best[2]
    # The last step may overshoot: give channels back where the budget still holds.
    while True:
        gains = [(loss(g.root, kept[g.root]) - loss(g.root, k), g.root, k)
                 for g in groups for k in [*curves[g.root], g.channels]
                 if k > kept[g.root] and flops({**kept, g.root: k}) <= target]
        gains = [x for x in gains if x[0] > 0]
        if not gains:
            return kept
        _, root, k = max(gains)
        kept[root] = k
