"""How much each channel of a group matters, scored over every layer the group touches.

A channel's score sums its weights' contributions in all coupled layers (the producing conv, its
BatchNorm, the consumers' input slices), so a channel that is small in one layer but large in the
next is kept. `taylor` estimates the loss change of removing the channel, |w * dL/dw|, from real
data: the task loss when labels exist, else the output's magnitude.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.techniques.prune import Method
from slimkit.techniques.prune.graph import Group
from slimkit.train.outputs import first_tensor, label_tensor, uses_labels


def _gradient_batches(module: nn.Module, data: Dataset, names: list[str],
                      size: int = 16) -> Iterator[None]:
    """Leave one small batch's loss gradients on the weights at a time. Scores are summed over
    batches rather than taken from one summed gradient: on data the model already fits, the
    per-example gradients mostly cancel, and their sum ranks channels by noise."""
    labels = label_tensor(data.labels)
    for start in range(0, len(data), size):
        module.zero_grad(set_to_none=True)
        feeds = {n: torch.from_numpy(data.inputs[n][start:start + size]) for n in names}
        with torch.enable_grad():
            out = first_tensor(module(**feeds)).float()
            batch = None if labels is None else labels[start:start + size]
            if uses_labels(out, batch):
                assert batch is not None
                loss = nn.functional.cross_entropy(out, batch, reduction="sum")
            else:
                loss = 0.5 * (out**2).sum()
            loss.backward()
        yield


def scores(method: Method, dg: Any, module: nn.Module, groups: list[Group],
           data: Dataset, names: list[str]) -> dict[str, torch.Tensor]:
    """Per-channel importance of every group, numbered as the group root's outputs."""
    import torch_pruning as tp

    imp = tp.importance
    magnitude = imp.GroupMagnitudeImportance(p=2 if method == "l2" else 1,
                                             group_reduction="sum", normalizer=None)
    named = dict(module.named_modules())
    full = {}
    for g in groups:
        target = named[g.root]
        pruner = dg.get_pruner_of_module(target)
        full[g.root] = dg.get_pruning_group(target, pruner.prune_out_channels,
                                            list(range(g.channels)))
    if method == "taylor":
        taylor = imp.GroupTaylorImportance(group_reduction="sum", normalizer=None)
        found = {root: torch.zeros(g.channels) for root, g in zip(full, groups, strict=True)}
        try:
            for _ in _gradient_batches(module, data, names):
                for root, group in full.items():
                    found[root] += taylor(group).float()
        finally:
            module.zero_grad(set_to_none=True)
        return found
    scorer = (imp.BNScaleImportance(group_reduction="sum", normalizer=None)
              if method == "bn_scale" else magnitude)
    # A group without BatchNorm has no scale to read: its weights decide instead.
    return {root: (scorer(group) if scorer(group) is not None else magnitude(group)).float()
            for root, group in full.items()}
