"""CNN students: channel groups narrowed and repeatable blocks dropped, weights from the teacher.

Channels are ranked and removed with prune_channels' own dependency graph and importance, so a
coupled group (a residual's two sides, a concatenation's slice) shrinks as one. A block can be
dropped when it is a child of an nn.Sequential holding a convolution whose output has its
input's shape (the later blocks of a ResNet stage): it is replaced by nn.Identity, as layer
dropping does in transformers. Which blocks stay is decided by how much the teacher's output
moves when each one alone is dropped, or by even spacing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from slimkit.hooks import forward_hooks
from slimkit.techniques.nas.space import Architecture

if TYPE_CHECKING:
    from slimkit.data import Dataset
    from slimkit.model import TorchModel
    from slimkit.techniques.prune import Method


@dataclass
class CnnTeacher:
    """What every candidate is cut from: the teacher, its groups and their channel order."""

    module: nn.Module
    example: dict[str, torch.Tensor]
    shape: Architecture  # the teacher itself: every channel, every block
    ranks: dict[str, list[int]]  # group root -> channels, least important first
    block_importance: dict[str, list[float]] | None


def droppable_blocks(module: nn.Module, example: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """nn.Sequential name -> indices of the children that hold a convolution and keep their
    input's shape, found by running the example."""
    candidates = [(name, i, child) for name, m in module.named_modules()
                  if isinstance(m, nn.Sequential) for i, child in enumerate(m)
                  if any(isinstance(c, nn.Conv2d) for c in child.modules())
                  and list(child.children())]
    same: dict[int, bool] = {}

    def hook(key: int) -> Any:
        def check(_m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            same[key] = (isinstance(out, torch.Tensor) and bool(args)
                         and isinstance(args[0], torch.Tensor) and out.shape == args[0].shape)
        return check

    with forward_hooks((child, hook(k)) for k, (_, _, child) in enumerate(candidates)), \
            torch.no_grad():
        module(**example)
    found: dict[str, list[int]] = {}
    for k, (name, i, _) in enumerate(candidates):
        if same.get(k):
            found.setdefault(name, []).append(i)
    return found


def drop_blocks(module: nn.Module, kept: dict[str, list[int]],
                droppable: dict[str, list[int]]) -> None:
    """Replace every droppable block not in `kept` by nn.Identity."""
    named = dict(module.named_modules())
    for stage, blocks in droppable.items():
        seq = named[stage]
        for i in blocks:
            if i not in kept.get(stage, blocks):
                seq[i] = nn.Identity()


def _output_change(module: nn.Module, feeds: dict[str, torch.Tensor], reference: torch.Tensor,
                   seq: nn.Sequential, i: int) -> float:
    from slimkit.train.outputs import first_tensor

    held = seq[i]
    seq[i] = nn.Identity()
    try:
        with torch.no_grad():
            out = first_tensor(module(**feeds)).float()
    finally:
        seq[i] = held
    return float(((out - reference) ** 2).mean() / (reference**2).mean().clamp(min=1e-12))


def block_scores(module: nn.Module, data: Dataset, names: list[str],
                 droppable: dict[str, list[int]]) -> dict[str, list[float]]:
    """Per stage, how far the output moves (relative squared error) when each block alone is
    replaced by nn.Identity: the block importance that layer-dropping methods rank by."""
    from slimkit.train.outputs import first_tensor

    feeds = {n: torch.from_numpy(data.inputs[n]) for n in names}
    with torch.no_grad():
        reference = first_tensor(module(**feeds)).float()
    named = dict(module.named_modules())
    return {stage: [_output_change(module, feeds, reference, named[stage], i) for i in blocks]
            for stage, blocks in droppable.items()}


def analyse(model: TorchModel, data: Dataset, importance: Method, by_importance: bool,
            ignore: list[str]) -> CnnTeacher:
    from slimkit.techniques.prune import graph
    from slimkit.techniques.prune.importance import scores

    module = model.module.eval()
    names = [i.name for i in model.inputs]
    example = graph.example_inputs(model.inputs, data.inputs)
    dg = graph.build_graph(module, example)
    groups = graph.prunable_groups(dg, module, ignore)
    ranks = {root: s.argsort().tolist()
             for root, s in scores(importance, dg, module, groups, data, names).items()}
    droppable = droppable_blocks(module, example)
    shape = Architecture(family="cnn", widths={g.root: g.channels for g in groups},
                         blocks=droppable)
    blocks = block_scores(module, data, names, droppable) if by_importance and droppable \
        else None
    return CnnTeacher(module, example, shape, ranks, blocks)


def inherit(teacher: CnnTeacher, arch: Architecture) -> nn.Module:
    """The candidate with the teacher's most important channels and chosen blocks."""
    from slimkit.techniques.prune import graph

    # The copy learns, and the dependency graph is traced through gradients: unfreeze it (the
    # teacher may have been frozen while it taught an earlier candidate).
    module = copy.deepcopy(teacher.module).requires_grad_(True)
    graph.apply_kept(module, teacher.example, dict(arch.widths), teacher.ranks)
    drop_blocks(module, arch.blocks, teacher.shape.blocks)
    return module.eval()


def rebuild(module: nn.Module, example: dict[str, torch.Tensor], arch: Architecture) -> None:
    """The candidate's shapes on a fresh copy of the source model, in place, without data: the
    last channels go (the saved weights fill what stays)."""
    from slimkit.techniques.prune import graph

    droppable = droppable_blocks(module, example)
    graph.apply_kept(module, example, dict(arch.widths))
    drop_blocks(module, arch.blocks, droppable)
    module.eval()
