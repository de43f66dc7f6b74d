"""Intermediate outputs of a student and its teacher, caught by forward hooks, and the losses
that compare them.

The final output says what a teacher decides; its features and hidden states say how. Hooks
keep those of the named modules at each forward, so a loss can compare them without changing
either model's code.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.errors import TechniqueError
from slimkit.train.losses import (
    FeatureAdapter,
    attention_loss,
    feature_loss,
    hidden_state_loss,
)
from slimkit.train.outputs import first_tensor


def like(name: str, names: Iterable[str]) -> str:
    """Up to three names sharing the last part of a name that was not found, for the error."""
    close = [n for n in names if n and name.split(".")[-1] in n][:3]
    return f" (like: {', '.join(close)})" if close else ""


class Taps:
    """Forward hooks that keep the outputs of the named student and teacher modules."""

    def __init__(self, student: nn.Module, teacher: nn.Module,
                 pairs: list[tuple[str, str]], owner: str) -> None:
        self.pairs, self.student, self.teacher, self.owner = pairs, student, teacher, owner
        self.seen: dict[tuple[str, str], Any] = {}
        self.hooks = []
        for side, module, names in (("s", student, [p[0] for p in pairs]),
                                    ("t", teacher, [p[1] for p in pairs])):
            found = dict(module.named_modules())
            for name in names:
                if name not in found:
                    self.remove()
                    raise TechniqueError(f"{owner}: no module {name!r} in the "
                                         f"{'student' if side == 's' else 'teacher'}"
                                         + like(name, found))
                self.hooks.append(found[name].register_forward_hook(
                    lambda _m, _a, out, key=(side, name): self.seen.__setitem__(key, out)))

    def adapters(self, probe: dict[str, torch.Tensor], kind: str, seed: int) -> nn.ModuleList:
        """One adapter per pair, sized by a probe batch; seeded, so a resumed run makes the
        same ones before the checkpoint overwrites them."""
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            self.student(**probe)  # the hooks keep both sides' features, sized
            self.teacher(**probe)
            made = []
            for s_name, t_name in self.pairs:
                s, t = self.pair(s_name, t_name)
                if kind == "attention" and (s.ndim != 4 or t.ndim != 4):
                    raise TechniqueError(f"{self.owner}: attention transfer needs [batch, "
                                         f"channels, h, w] maps; {s_name} gives "
                                         f"{list(s.shape)}")
                made.append(FeatureAdapter(s.shape, t.shape).to(s.device))
        return nn.ModuleList(made)

    def pair(self, s_name: str, t_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return first_tensor(self.seen[("s", s_name)]), first_tensor(self.seen[("t", t_name)])

    def loss(self, adapters: nn.ModuleList, kind: str) -> torch.Tensor:
        """Summed over the pairs: attention transfer, or MSE through each pair's adapter."""
        total = []
        for (s_name, t_name), adapter in zip(self.pairs, adapters, strict=True):
            s, t = self.pair(s_name, t_name)
            t = t.detach()
            total.append(attention_loss(s, t) if kind == "attention"
                         else feature_loss(adapter, s, t))  # type: ignore[arg-type]
        return sum(total[1:], total[0])

    def teacher_states(self) -> list[torch.Tensor]:
        return [first_tensor(self.seen[("t", t)]) for _, t in self.pairs]

    def hidden_loss(self, mask: torch.Tensor | None,
                    cached: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Mean over the pairs of the per-token hidden-state error against the teacher's states
        (`cached` in pair order, else those its hooks kept; detached either way)."""
        total = []
        for i, (s_name, t_name) in enumerate(self.pairs):
            s, t = self.pair(s_name, t_name) if cached is None else (
                first_tensor(self.seen[("s", s_name)]), cached[i])
            if s.shape != t.shape:
                raise TechniqueError(f"{self.owner}: hidden states of {s_name} "
                                     f"{list(s.shape)} and the teacher's {list(t.shape)} "
                                     "differ in shape")
            total.append(hidden_state_loss(s, t.detach(), mask))
        return sum(total[1:], total[0]) / len(total)

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []
