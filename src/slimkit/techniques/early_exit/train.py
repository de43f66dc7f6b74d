"""Training the exit heads on the final head's logits, through the project's training loop.

The backbone is frozen and in eval mode, so what it gives each row (every exit's features and
the final logits) never changes: it is computed once and the heads train on that, about as
many times faster as there are epochs. Where that would not fit in `feature_cache_gb`, the
backbone runs at every step instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from slimkit.data import Dataset
    from slimkit.registry import StepContext
    from slimkit.techniques.early_exit.net import EarlyExitNet
    from slimkit.train import FitResult

TEACHER = "final_logits"


class _Heads(nn.Module):
    """The heads alone, fed the backbone's stored outputs: exit logits, then the final ones."""

    def __init__(self, heads: nn.ModuleList) -> None:
        super().__init__()
        self.heads = heads

    def forward(self, *features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *taps, final = features
        return (*(h(f) for h, f in zip(self.heads, taps, strict=True)), final)


class HeadTraining(Protocol):
    """What head training reads of the step's config (the package imports this module, so
    the config class cannot be imported back)."""

    temperature: float
    epochs: int
    lr: float
    batch_size: int
    seed: int
    max_minutes: float | None
    feature_cache_gb: float

def train_heads(net: EarlyExitNet, data: Dataset, config: HeadTraining,
                ctx: StepContext) -> FitResult:
    """Every head learns the final head's softened distribution (KL, scaled by T^2 as usual
    so the gradient does not shrink with the temperature); the backbone stays frozen."""
    from slimkit.train import TrainSettings
    from slimkit.train.loop import fit

    t = config.temperature

    def loss(module: nn.Module, inputs: dict[str, torch.Tensor],
             labels: torch.Tensor | None) -> torch.Tensor:
        *exits, final = module(*inputs.values())
        target = F.softmax(final.detach().float() / t, dim=1)
        terms = [F.kl_div(F.log_softmax(e.float() / t, dim=1), target, reduction="batchmean")
                 for e in exits]
        return torch.stack(terms).sum() * t * t

    settings = TrainSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                             seed=config.seed, max_minutes=config.max_minutes,
                             checkpoint_dir=ctx.checkpoints)
    stored = _backbone_outputs(net, data, config.feature_cache_gb)
    if stored is None:
        result = fit(net, loss, data, settings, title="early-exit heads")
    else:
        result = fit(_Heads(net.heads), loss, stored, settings, title="early-exit heads")
    net.eval()
    return result


def _backbone_outputs(net: EarlyExitNet, data: Dataset, limit_gb: float) -> Dataset | None:
    """Each row's exit features and final logits, or None when they would pass `limit_gb`."""
    from slimkit.data import Dataset

    first = next(data.batches(2))
    with torch.no_grad():
        probe = net.backbone_outputs(*(torch.from_numpy(v) for v in first.values()))
    per_row = sum(p[0].numel() * p.element_size() for p in probe)
    if per_row * len(data) > limit_gb * 2**30:
        return None
    parts: list[list[np.ndarray]] = [[] for _ in probe]
    with torch.no_grad():
        for batch in data.batches(256):
            outs = net.backbone_outputs(*(torch.from_numpy(v) for v in batch.values()))
            for store, o in zip(parts, outs, strict=True):
                store.append(o.float().numpy())
    names = [f"exit_{k}" for k in range(len(parts) - 1)] + [TEACHER]
    return Dataset({n: np.concatenate(p) for n, p in zip(names, parts, strict=True)}, None,
                   "early-exit features")


def agreement(net: EarlyExitNet, data: Dataset) -> list[float]:
    """Per exit, the share of rows whose top class is the final head's."""
    hits: list[int] = []
    with torch.no_grad():
        for batch in data.batches(256):
            *exits, final = net.all_logits(*(torch.from_numpy(v) for v in batch.values()))
            top = final.argmax(1)
            counts = [int((e.argmax(1) == top).sum()) for e in exits]
            hits = [a + b for a, b in zip(hits, counts, strict=True)] if hits else counts
    return [round(h / len(data), 4) for h in hits]
