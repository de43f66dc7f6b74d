"""What a training run is asked to do, what it reports, and what a resumed run carries on from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 64
    weight_decay: float = 0.0
    seed: int = 0
    patience: int | None = None  # early stopping on the eval metric (higher is better)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    max_minutes: float | None = None  # per call; stops cleanly at a step boundary
    checkpoint_dir: Path | None = None  # resume from here if a checkpoint exists
    checkpoint_every: int = 50  # optimizer steps between checkpoints (also at each epoch end)
    # "linear": warm up over `warmup` of the planned steps, then decay to zero after the last,
    # the usual way to fine-tune transformers; "constant" keeps `lr` throughout.
    schedule: Literal["constant", "linear"] = "constant"
    warmup: float = 0.06
    device: str = "cpu"
    # False: the module trains as it runs (normalisation statistics held, no dropout), for
    # fine-tuning a few parameters of a trained model against its own eval-mode teacher
    train_mode: bool = True
    # Token data: the name of the padding-mask input and of every other input whose axis 1 is
    # the token axis. Batches then hold texts of similar length and are cut to their longest text,
    # so a step does not pay for padding (about half the work on typical prose at 128 tokens).
    mask: str | None = None
    sequence_columns: tuple[str, ...] = ()


# (module, inputs by name as tensors, labels or None) -> scalar loss
LossFn = Callable[[nn.Module, dict[str, torch.Tensor], torch.Tensor | None], torch.Tensor]


@dataclass
class FitResult:
    steps: int
    epochs: int
    stopped_early: bool
    best_metric: float | None
    history: list[dict[str, float]]  # one row per epoch: loss, metric, seconds
    out_of_time: bool = False


@dataclass
class Progress:
    """Everything besides tensors that a resumed run needs to carry on where this one was.
    Its field names are the keys of a checkpoint's `progress`: renaming one orphans saved runs."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0
    loss_count: int = 0
    seconds: float = 0.0  # spent in the current epoch so far
    history: list[dict[str, float]] = field(default_factory=list)
    score: float | None = None  # best metric so far (or minus the loss without `evaluate`)
    bad_epochs: int = 0
    stopped_early: bool = False
