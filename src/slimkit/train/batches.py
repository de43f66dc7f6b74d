"""Which rows each step of an epoch takes, how wide its token axis is, and its learning rate.

Each is a function of the seed, the epoch and the step alone, never of earlier batches, so a run
resumed from a checkpoint replays the very steps of one that was never interrupted.
"""

from __future__ import annotations

import math

import torch

from slimkit.dataset import Dataset, cut_tokens, token_lengths
from slimkit.errors import ConfigError
from slimkit.train.settings import TrainSettings


def lr_factor(settings: TrainSettings, step: int, total: int) -> float:
    """The share of `lr` at an optimizer step."""
    if settings.schedule == "constant" or total <= 0:
        return 1.0
    warm = max(1, round(settings.warmup * total))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


def epoch_order(n: int, seed: int, epoch: int, world: int, rank: int,
                lengths: torch.Tensor | None = None, batch_size: int = 1) -> torch.Tensor:
    """This rank's share of the epoch's shuffled indices, padded by wrapping so every rank
    takes the same number of steps (DDP needs them in lockstep).

    With `lengths`, each window of 64 steps' rows (`batch_size` is all ranks' rows of a step) is
    sorted by length and the steps are then shuffled, so a step holds texts of similar length
    while the epoch stays random."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    if lengths is not None:
        window = 64 * batch_size
        perm = torch.cat([chunk[torch.argsort(lengths[chunk], stable=True)]
                          for chunk in perm.split(window)])
        batches = list(perm.split(batch_size))
        full = len(batches) - (len(batches[-1]) < batch_size)  # a short one stays last
        shuffled = [batches[i] for i in torch.randperm(full, generator=gen)]
        perm = torch.cat(shuffled + batches[full:])
    padded = math.ceil(n / world) * world
    if padded > n:
        perm = torch.cat([perm, perm[: padded - n]])
    return perm[rank::world]


def text_lengths(data: Dataset, settings: TrainSettings) -> torch.Tensor | None:
    """Each row's used token count, when the settings name a padding mask."""
    if settings.mask is None:
        return None
    if settings.mask not in data.inputs:
        raise ConfigError(f"training: no input {settings.mask!r} to take text lengths from")
    mask = data.inputs[settings.mask]
    for name in settings.sequence_columns:
        column = data.inputs.get(name)
        if column is None or column.ndim < 2 or column.shape[1] != mask.shape[1]:
            raise ConfigError(f"training: {name!r} is not a [rows, {mask.shape[1]}, ...] input")
    return torch.from_numpy(token_lengths(mask))


def cut(x: dict[str, torch.Tensor], width: int, settings: TrainSettings
        ) -> dict[str, torch.Tensor]:
    """Cut the token axis to the batch's last used position. A model that honours its mask
    computes the same values at the kept positions, so only pooled or per-token-masked losses
    should train on cut batches (distillation keeps per-token outputs whole)."""
    assert settings.mask is not None
    if width == x[settings.mask].shape[1]:
        return x
    return cut_tokens(x, width, {settings.mask, *settings.sequence_columns})
