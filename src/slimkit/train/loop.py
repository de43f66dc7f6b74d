"""The one training loop every technique that trains goes through.

Distillation, QAT and pruning's fine-tuning share it so that resuming, early stopping, mixed
precision, time budgets and data-parallel runs work the same everywhere and are tested once.
A run is a pure function of (weights, data, settings): the batch order of each epoch is derived
from the seed and the epoch alone, so a run resumed from a checkpoint replays the very same
steps as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from slimkit.data import Dataset, cut_tokens, token_lengths
from slimkit.errors import ConfigError, TechniqueError
from slimkit.train import checkpoint, distributed
from slimkit.train.outputs import label_tensor

log = logging.getLogger(__name__)


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
class _Progress:
    """Everything besides tensors that a resumed run needs to carry on where this one was."""

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


def fit(module: nn.Module, loss_fn: LossFn, data: Dataset, settings: TrainSettings, *,
        extra_params: Iterable[nn.Parameter] = (),
        evaluate: Callable[[nn.Module], float] | None = None,
        after_step: Callable[[int, int], None] | None = None,
        title: str = "training") -> FitResult:
    """Train `module` (and `extra_params`, such as distillation adapters) on `data`.

    `loss_fn` gets the module to call (wrapped in DDP under torchrun, so call it rather than
    reach into its submodules), the batch's inputs by name and its labels. The module ends in
    eval mode with the best weights when `patience` is set, else the final ones.
    """
    if settings.precision == "fp16" and not settings.device.startswith("cuda"):
        # An error rather than a silent fallback: fp16 on CPU has no GradScaler and would
        # quietly train in another precision than the one asked for.
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 (or fp32) on CPU")
    if len(data) == 0:
        raise TechniqueError(f"{data.name}: no examples to train on")
    if settings.epochs < 0 or settings.batch_size < 1 or settings.checkpoint_every < 1:
        raise ConfigError("training needs epochs >= 0, batch_size >= 1, checkpoint_every >= 1")
    rank, world, device = distributed.setup(settings.device)
    cuda = device.startswith("cuda")
    extras = list(extra_params)
    module.to(device)
    for p in extras:
        p.data = p.data.to(device)
    params = [p for p in [*module.parameters(), *extras] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
    inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
              for k, v in data.inputs.items()}
    labels = label_tensor(data.labels)
    labels = None if labels is None else labels.to(device)
    n = len(data)
    lengths = _lengths(data, settings)
    # `batch_size` is the global batch: the same settings take the same optimizer steps
    # whatever the number of ranks.
    local_batch = max(1, settings.batch_size // world)
    per_rank = math.ceil(n / world)
    steps_per_epoch = math.ceil(per_rank / local_batch)
    total = settings.epochs * steps_per_epoch
    fingerprint = {"lr": settings.lr, "batch_size": settings.batch_size,
                   "weight_decay": settings.weight_decay, "seed": settings.seed,
                   "precision": settings.precision, "examples": n, "world": world,
                   "params": [list(p.shape) for p in params], "mask": settings.mask,
                   "sequence_columns": list(settings.sequence_columns),
                   "schedule": [settings.schedule, settings.warmup, total]}
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []):
        torch.manual_seed(settings.seed + rank)
        state = _Progress()
        best: dict[str, torch.Tensor] | None = None
        saved = checkpoint.read(settings.checkpoint_dir)
        if saved is not None and saved.meta.get("fingerprint") != fingerprint:
            log.warning("%s: checkpoint is from other settings; starting over",
                        settings.checkpoint_dir)
            saved = None
        if saved is not None:
            best = _restore(saved, module, extras, opt, scaler, rank, state)
        net: nn.Module = module
        if world > 1:
            net = nn.parallel.DistributedDataParallel(
                module, device_ids=[torch.cuda.current_device()] if cuda else None)
            distributed.sync_params(extras)

        def save() -> None:
            rng = distributed.gather_rng(torch.get_rng_state(), device)
            if rank != 0 or settings.checkpoint_dir is None:
                return
            tensors = {**_prefixed("model", module.state_dict()), **_extras("extra", extras)}
            tensors.update({f"rng/{r}": t for r, t in enumerate(rng)})
            if cuda:
                tensors["cuda_rng"] = torch.cuda.get_rng_state()
            if best is not None:
                tensors.update(_prefixed("best", best))
            optim_tensors, optim_scalars = checkpoint.optimizer_parts(opt)
            tensors.update(_prefixed("optim", optim_tensors))
            meta = {"fingerprint": fingerprint, "progress": vars(state).copy(),
                    "optim": optim_scalars,
                    "scaler": scaler.state_dict() if scaler is not None else None}
            checkpoint.write(settings.checkpoint_dir, state.step, tensors, meta)

        started = time.monotonic()
        out_of_time = False
        with _bar(title, total, rank == 0) as advance:
            advance(state.step, "resumed" if state.step else "")
            while state.epoch < settings.epochs and not state.stopped_early:
                order = _order(n, settings.seed, state.epoch, world, rank, lengths,
                               local_batch * world)
                module.train()
                mark = time.monotonic()
                for b in range(state.batch, steps_per_epoch):
                    rows = order[b * local_batch:(b + 1) * local_batch]
                    idx = rows.to(device)
                    x = {k: v[idx] for k, v in inputs.items()}
                    if lengths is not None:
                        x = _cut(x, max(1, int(lengths[rows].max())), settings)
                    y = None if labels is None else labels[idx]
                    with torch.autocast("cuda" if cuda else "cpu", dtype=autocast_dtype,
                                        enabled=autocast_dtype is not None):
                        loss = loss_fn(net, x, y)
                    opt.zero_grad(set_to_none=True)
                    for group in opt.param_groups:
                        group["lr"] = settings.lr * _lr_factor(settings, state.step, total)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        distributed.average_grads(extras)
                        scaler.step(opt)
                        scaler.update()
                    else:
                        loss.backward()
                        distributed.average_grads(extras)
                        opt.step()
                    value = float(loss.detach().float().item())
                    state.step, state.batch = state.step + 1, b + 1
                    state.loss_sum, state.loss_count = state.loss_sum + value, state.loss_count + 1
                    advance(1, f"epoch {state.epoch + 1} loss {value:.4f}")
                    if after_step is not None:
                        after_step(state.step, total)
                    if settings.max_minutes is not None:
                        late = time.monotonic() - started > settings.max_minutes * 60
                        out_of_time = distributed.broadcast_float(float(late), device) > 0
                    if state.batch < steps_per_epoch and (
                            out_of_time or state.step % settings.checkpoint_every == 0):
                        now = time.monotonic()
                        state.seconds, mark = state.seconds + now - mark, now
                        save()
                    if out_of_time:
                        break
                if state.batch < steps_per_epoch:
                    break  # out of time mid-epoch; the checkpoint holds the partial epoch
                best = _end_epoch(state, module, extras, best, evaluate, settings, device,
                                  time.monotonic() - mark)
                save()
                if out_of_time:
                    break
        if settings.patience is not None and best is not None:
            _load_snapshot(best, module, extras)
        module.eval()
    scores = [r["metric"] for r in state.history if "metric" in r]
    return FitResult(state.step, state.epoch, state.stopped_early,
                     max(scores) if scores else None, state.history, out_of_time)


def _end_epoch(state: _Progress, module: nn.Module, extras: list[nn.Parameter],
               best: dict[str, torch.Tensor] | None,
               evaluate: Callable[[nn.Module], float] | None, settings: TrainSettings,
               device: str, seconds: float) -> dict[str, torch.Tensor] | None:
    """Close an epoch: its history row, the best weights so far, the early-stopping count."""
    loss = distributed.mean_float(state.loss_sum / max(state.loss_count, 1), device)
    row = {"epoch": float(state.epoch + 1), "loss": loss, "seconds": state.seconds + seconds}
    score = -loss
    if evaluate is not None:
        module.eval()
        with torch.no_grad():
            score = distributed.broadcast_float(float(evaluate(module)), device)
        row["metric"] = score
    state.history.append(row)
    if state.score is None or score > state.score:
        state.score, state.bad_epochs = score, 0
        if settings.patience is not None:
            best = _snapshot(module, extras)
    else:
        state.bad_epochs += 1
    state.epoch, state.batch = state.epoch + 1, 0
    state.loss_sum, state.loss_count, state.seconds = 0.0, 0, 0.0
    state.stopped_early = (settings.patience is not None
                           and state.bad_epochs >= settings.patience
                           and state.epoch < settings.epochs)
    return best


def _lr_factor(settings: TrainSettings, step: int, total: int) -> float:
    """The share of `lr` at an optimizer step: a function of the step alone, so a resumed run
    takes the very same steps."""
    if settings.schedule == "constant" or total <= 0:
        return 1.0
    warm = max(1, round(settings.warmup * total))
    if step < warm:
        return (step + 1) / warm
    return max(0.0, (total - step) / max(1, total - warm))


def _order(n: int, seed: int, epoch: int, world: int, rank: int,
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


def _lengths(data: Dataset, settings: TrainSettings) -> torch.Tensor | None:
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


def _cut(x: dict[str, torch.Tensor], width: int, settings: TrainSettings
         ) -> dict[str, torch.Tensor]:
    """Cut the token axis to the batch's last used position. A model that honours its mask
    computes the same values at the kept positions, so only pooled or per-token-masked losses
    should train on cut batches (distill keeps per-token outputs whole)."""
    assert settings.mask is not None
    if width == x[settings.mask].shape[1]:
        return x
    return cut_tokens(x, width, {settings.mask, *settings.sequence_columns})


def _prefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in tensors.items()}


def _extras(prefix: str, extras: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{i}": p.data for i, p in enumerate(extras)}


def _snapshot(module: nn.Module, extras: list[nn.Parameter]) -> dict[str, torch.Tensor]:
    state = {**_prefixed("model", module.state_dict()), **_extras("extra", extras)}
    return {k: v.detach().clone() for k, v in state.items()}


def _load_snapshot(snap: dict[str, torch.Tensor], module: nn.Module,
                   extras: list[nn.Parameter]) -> None:
    module.load_state_dict({k[6:]: v for k, v in snap.items() if k.startswith("model/")})
    with torch.no_grad():
        for i, p in enumerate(extras):
            p.copy_(snap[f"extra/{i}"])


def _restore(saved: checkpoint.Checkpoint, module: nn.Module, extras: list[nn.Parameter],
             opt: torch.optim.Optimizer, scaler: Any, rank: int,
             state: _Progress) -> dict[str, torch.Tensor] | None:
    """Put weights, optimizer, RNG and counters back as the checkpoint has them."""
    _load_snapshot({k: v for k, v in saved.tensors.items()
                    if k.startswith(("model/", "extra/"))}, module, extras)
    checkpoint.load_optimizer(opt, saved.group("optim"), saved.meta.get("optim", {}))
    if scaler is not None and saved.meta.get("scaler"):
        scaler.load_state_dict(saved.meta["scaler"])
    rng = saved.tensors.get(f"rng/{rank}")
    if rng is not None:
        torch.set_rng_state(rng)
    if "cuda_rng" in saved.tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved.tensors["cuda_rng"])
    for key, value in saved.meta["progress"].items():
        setattr(state, key, value)
    best = saved.group("best")
    return best or None


@contextlib.contextmanager
def _bar(title: str, total: int, show: bool) -> Iterator[Callable[..., None]]:
    if not show:
        yield lambda n=1, note="": None
        return
    from slimkit.progress import progress_bar

    with progress_bar(title, total) as advance:
        yield advance
