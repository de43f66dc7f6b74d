"""Which layers, what the data says about them, and which rank each gets.

Layers differ in how far their rank can fall before the model notices: a wide layer whose
inputs span few directions loses nothing at a quarter of its rank, a narrow one feeding the
head loses a lot at three quarters. Each layer is cut alone to each candidate rank and the
model's loss on calibration data measured; the shared greedy allocation then takes the cuts
that lose least per unit of cost saved until the target holds, and hands back what still fits.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.hooks import forward_hooks
from slimkit.techniques.allocate import buy_while_it_helps, cut_to
from slimkit.techniques.low_rank.factorise import Layer, Rank, factorised, kind_of

KEEP: Rank = ()  # the option "leave the layer as it is"


def _selected(name: str, patterns: list[str]) -> bool:
    """A glob on the layer's name, or a module name standing for every layer inside it."""
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def eligible(module: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in module.named_modules() if n and kind_of(m) is not None}


def find_layers(module: nn.Module, layers: list[str] | None,
                exclude: list[str] | None) -> dict[str, nn.Module]:
    """The eligible layers `layers` chooses (all by default), less the excluded; `exclude`
    None leaves out the first and the last (the input stem and the output head)."""
    found = eligible(module)
    if layers is not None:
        found = {n: m for n, m in found.items() if _selected(n, layers)}
    if exclude is None:
        names = list(eligible(module))
        skip = {names[0], names[-1]} if len(names) > 1 else set()
        return {n: m for n, m in found.items() if n not in skip}
    return {n: m for n, m in found.items() if not _selected(n, exclude)}


def measure(module: nn.Module, example: dict[str, torch.Tensor],
            chosen: dict[str, nn.Module]) -> dict[str, Layer]:
    """Each chosen layer's shape and the positions it sees, from one example."""
    found: dict[str, Layer] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            conv = isinstance(m, nn.Conv2d)
            cin = m.in_channels if conv else m.in_features
            cout = m.out_channels if conv else m.out_features
            kind = kind_of(m)
            assert kind is not None
            found[name] = Layer(name, kind, cin, cout,
                                tuple(m.kernel_size) if conv else (1, 1),  # type: ignore[arg-type]
                                inputs[0].numel() // cin, out.numel() // cout,
                                m.bias is not None)
        return record

    with forward_hooks((m, hook(n)) for n, m in chosen.items()), torch.no_grad():
        module(**example)
    return found


def covariances(module: nn.Module, chosen: dict[str, nn.Module], data: Dataset,
                names: list[str], advance: Callable[..., None] | None = None,
                ) -> dict[str, torch.Tensor]:
    """Each chosen layer's input covariance E[x x^T] over every position of the data (a
    conv's over its input channels)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].detach()
            x = x.movedim(1, -1) if isinstance(m, nn.Conv2d) else x
            x = x.reshape(-1, x.shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x  # type: ignore[assignment]
            counts[name] = counts.get(name, 0) + len(x)
        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in chosen.items()]
    try:
        with torch.no_grad():
            for b in data.batches(64):
                module(**{n: torch.from_numpy(b[n]) for n in names})
                if advance is not None:
                    advance(1)
    finally:
        for h in handles:
            h.remove()
    return {n: s / max(counts[n], 1) for n, s in sums.items()}


def swap(module: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put `new` where `name` is; gives back what was there."""
    parent_name, _, child = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old  # type: ignore[no-any-return]


def scan(module: nn.Module, chosen: dict[str, nn.Module], ranks: dict[str, list[Rank]],
         covs: dict[str, torch.Tensor], quality: Callable[[nn.Module], float],
         advance: Callable[..., None] | None = None) -> dict[str, dict[Rank, float]]:
    """The model's loss increase with each layer alone factorised at each of its ranks."""
    curves: dict[str, dict[Rank, float]] = {}
    for name, tries in ranks.items():
        curves[name] = {}
        for rank in tries:
            old = swap(module, name, factorised(chosen[name], rank, covs.get(name)))
            try:
                curves[name][rank] = quality(module)
            finally:
                swap(module, name, old)
            if advance is not None:
                advance(1, name)
    return curves


def allocate(layers: dict[str, Layer], curves: dict[str, dict[Rank, float]],
             cost: Callable[[Layer, Rank | None], float], share: float) -> dict[str, Rank]:
    """A rank per layer (KEEP: left as it is) keeping `share` of the layers' summed cost with
    the least summed loss: cut what loses least per cost saved until the target holds, then
    hand back whatever removes most loss and still fits."""
    units = [n for n in layers if curves.get(n)]
    damage = {n: {**curves[n], KEEP: 0.0} for n in units}  # options cheapest first
    costs = {n: {r: cost(layers[n], r or None) for r in damage[n]} for n in units}
    budget = share * sum(cost(la, None) for la in layers.values())
    fixed = sum(cost(la, None) for n, la in layers.items() if n not in damage)
    chosen = cut_to(damage, {n: KEEP for n in units}, costs, budget - fixed)
    if chosen is None:
        floor = fixed + sum(min(c.values()) for c in costs.values())
        whole = sum(cost(la, None) for la in layers.values())
        raise TechniqueError(f"low_rank: the target {share} is out of reach; the smallest "
                             f"scanned ranks leave {floor / whole:.2f} of the layers' cost")
    by_name = dict(sorted(damage.items(), reverse=True))
    chosen = buy_while_it_helps(by_name, chosen, costs, budget - fixed, per_cost=False)
    return {n: r for n, r in chosen.items() if r != KEEP}
