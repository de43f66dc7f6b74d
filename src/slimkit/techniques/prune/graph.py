"""The coupling between layers, from Torch-Pruning's dependency graph.

Removing an output channel of one conv also removes the matching input of every consumer, the
BatchNorm after it, the other side of a residual add and the slice of a concatenation; the graph
gathers all of these into one group. A group is addressed by the name of its first conv or
Linear, so the same group can be found again on a fresh copy of the source model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.hooks import forward_hooks
from slimkit.model import InputSpec

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64,
           "int32": torch.int32, "bool": torch.bool}


@dataclass
class Group:
    """One set of channels that must be removed together."""

    root: str
    channels: int
    # Modules whose outputs, and whose inputs, lose channels when this group shrinks, with the
    # share of their channels this group owns (a concatenation's consumer has several owners).
    outputs: list[str] = field(default_factory=list)
    inputs: dict[str, float] = field(default_factory=dict)


def example_inputs(specs: list[InputSpec],
                   arrays: Mapping[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """One example per input: the first row of real data, or zeros shaped by the signature."""
    feeds = {}
    for spec in specs:
        if arrays is not None and spec.name in arrays:
            feeds[spec.name] = torch.from_numpy(np.ascontiguousarray(arrays[spec.name][:1]))
            continue
        shape = [1] + [d if isinstance(d, int) else 32 for d in spec.shape[1:]]
        feeds[spec.name] = torch.zeros(shape, dtype=_DTYPES.get(spec.dtype, torch.float32))
    return feeds


def _grouped(m: nn.Module) -> bool:
    """A grouped conv that is not depthwise: its channels cannot be removed one by one."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m)


def build_graph(module: nn.Module, example: dict[str, torch.Tensor]) -> Any:
    import torch_pruning as tp

    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(module, example_inputs=example,
                                                     verbose=False)


def prunable_groups(dg: Any, module: nn.Module, ignore: list[str]) -> list[Group]:
    """Groups whose channels can go: none reaches the network's output, none is ignored, and
    none holds a grouped conv (whose channels are tied to its groups)."""
    names = {m: n for n, m in module.named_modules()}
    named = dict(module.named_modules())
    # The graph's sinks produce the network's outputs, whose shape is the model's contract.
    skip = [node.module for node in dg.module2node.values() if not node.outputs]
    skip += [named[n] for n in ignore if n in named]
    groups: list[Group] = []
    owned: set[nn.Module] = set()
    for g in dg.get_all_groups(ignored_layers=skip, root_module_types=(nn.Conv2d, nn.Linear)):
        root = g[0].dep.target.module
        if root in owned:
            continue
        members = [(dep, idxs) for dep, idxs in g]
        if any(_grouped(dep.target.module) for dep, _ in members):
            continue
        n = len(g[0].idxs)
        group = Group(names[root], n)
        for dep, idxs in members:
            target = dep.target.module
            if target not in names:
                continue
            if dg.is_out_channel_pruning_fn(dep.handler) or is_depthwise(target):
                owned.add(target)
                if isinstance(target, (nn.Conv2d, nn.Linear)):
                    group.outputs.append(names[target])
            elif isinstance(target, (nn.Conv2d, nn.Linear)):
                total = target.in_channels if isinstance(target, nn.Conv2d) else target.in_features
                group.inputs[names[target]] = len(idxs) / total
        if n > 1:
            groups.append(group)
    return groups


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels == m.out_channels > 1


def remove(dg: Any, module: nn.Module, root: str, idxs: list[int]) -> None:
    """Remove channels `idxs` (numbered as the root's outputs) from the root's whole group."""
    target = dict(module.named_modules())[root]
    pruner = dg.get_pruner_of_module(target)
    dg.get_pruning_group(target, pruner.prune_out_channels, sorted(idxs)).prune()


def mask(dg: Any, module: nn.Module, root: str,
         idxs: list[int]) -> list[tuple[nn.Parameter, torch.Tensor]] | None:
    """Zero what removing `idxs` from the root's group would remove, in place, and return the
    values to put back. A zeroed conv, Linear or norm channel and zeroed consumer inputs compute
    what the smaller network computes, without building it; None where the group holds another
    kind of layer, whose removal must then be done for real."""
    target = dict(module.named_modules())[root]
    pruner = dg.get_pruner_of_module(target)
    edits: list[tuple[nn.Parameter, int, list[int]]] = []
    for dep, sub in dg.get_pruning_group(target, pruner.prune_out_channels, sorted(idxs)):
        m = dep.target.module
        if isinstance(m, nn.Parameter):
            return None
        if not list(m.parameters(recurse=False)):
            continue
        out = dg.is_out_channel_pruning_fn(dep.handler) or is_depthwise(m)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not getattr(m, "transposed", False):
            if not out:
                edits.append((m.weight, 1, sub))
                continue
            edits += [(p, 0, sub) for p in (m.weight, m.bias) if p is not None]
        elif out and isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            edits += [(p, 0, sub) for p in (m.weight, m.bias) if p is not None]
        else:
            return None
    saved = [(p, p.detach().clone()) for p, _, _ in edits]
    with torch.no_grad():
        for p, dim, sub in edits:
            p.index_fill_(dim, torch.tensor(sub, dtype=torch.long), 0.0)
    return saved


def unmask(saved: list[tuple[nn.Parameter, torch.Tensor]]) -> None:
    with torch.no_grad():
        for p, value in reversed(saved):
            p.copy_(value)


def out_channels(module: nn.Module, name: str) -> int:
    m = dict(module.named_modules())[name]
    return int(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)


def apply_kept(module: nn.Module, example: dict[str, torch.Tensor], kept: dict[str, int],
               order: dict[str, list[int]] | None = None) -> None:
    """Shrink each recorded group to its kept count, dropping the channels that `order` ranks
    lowest (or the last ones: a rebuild only needs the shapes, the weights come after)."""
    dg = build_graph(module, example)
    for root, k in kept.items():
        n = out_channels(module, root)
        if k >= n:
            continue
        drop = order[root][: n - k] if order else list(range(k, n))
        remove(dg, module, root, drop)


def layer_flops(module: nn.Module, example: dict[str, torch.Tensor]) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of every conv and Linear for one example."""
    found: dict[str, float] = {}

    def hook(name: str) -> Any:
        def record(m: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            if isinstance(m, nn.Conv2d):
                per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            else:
                per_out = m.in_features
            found[name] = found.get(name, 0.0) + 2.0 * out.numel() * per_out
        return record

    with forward_hooks((m, hook(n)) for n, m in module.named_modules()
                       if isinstance(m, (nn.Conv2d, nn.Linear))), torch.no_grad():
        module(**example)
    return found


def total_flops(module: nn.Module, example: dict[str, torch.Tensor]) -> float:
    """Every FLOP torch's counter sees (convolutions and matrix products) for one example."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(**example)
    return float(counter.get_total_flops())
