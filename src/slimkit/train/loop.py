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
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.dataset import Dataset
from slimkit.errors import ConfigError, TechniqueError
from slimkit.train import batches, checkpoint, distributed
from slimkit.train.outputs import label_tensor
from slimkit.train.settings import FitResult, LossFn, Progress, TrainSettings

__all__ = ["FitResult", "LossFn", "TrainRun", "TrainSettings", "fit"]

log = logging.getLogger(__name__)

Advance = Callable[..., None]


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
    run = TrainRun(module, loss_fn, data, settings, list(extra_params), evaluate, after_step)
    # The run draws from torch's global RNG (dropout, say) from its own seed and leaves the
    # caller's stream as it was.
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if run.cuda else []):
        run.start()
        with _bar(title, run.total, run.rank == 0) as advance:
            advance(run.state.step, "resumed" if run.state.step else "")
            while not run.should_stop():
                run.epoch(advance)
        run.finish()
    return run.result()


class TrainRun:
    """One call of `fit`: the optimizer, the data on the device, and the progress that a
    checkpoint saves and a resumed run restores."""

    def __init__(self, module: nn.Module, loss_fn: LossFn, data: Dataset,
                 settings: TrainSettings, extras: list[nn.Parameter],
                 evaluate: Callable[[nn.Module], float] | None,
                 after_step: Callable[[int, int], None] | None) -> None:
        _check(data, settings)
        self.module, self.loss_fn, self.settings, self.extras = module, loss_fn, settings, extras
        self.evaluate_fn, self.after_step = evaluate, after_step
        self.rank, self.world, self.device = distributed.setup(settings.device)
        self.cuda = self.device.startswith("cuda")
        module.to(self.device)
        for p in extras:
            p.data = p.data.to(self.device)
        self.params = [p for p in [*module.parameters(), *extras] if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=settings.lr,
                                     weight_decay=settings.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if settings.precision == "fp16" else None
        self.autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.precision)
        self._place(data)
        self.state = Progress()
        self.best: dict[str, torch.Tensor] | None = None
        self.net: nn.Module = module
        self.out_of_time = False
        self.started = self.mark = time.monotonic()

    def _place(self, data: Dataset) -> None:
        """The data on the device, and how it splits into steps. `batch_size` is the global
        batch: the same settings take the same optimizer steps whatever the number of ranks."""
        s = self.settings
        self.inputs = {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device)
                       for k, v in data.inputs.items()}
        labels = label_tensor(data.labels)
        self.labels = None if labels is None else labels.to(self.device)
        self.n = len(data)
        self.lengths = batches.text_lengths(data, s)
        self.local_batch = max(1, s.batch_size // self.world)
        self.steps_per_epoch = math.ceil(math.ceil(self.n / self.world) / self.local_batch)
        self.total = s.epochs * self.steps_per_epoch

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed by it."""
        s = self.settings
        return {"lr": s.lr, "batch_size": s.batch_size, "weight_decay": s.weight_decay,
                "seed": s.seed, "precision": s.precision, "examples": self.n,
                "world": self.world, "params": [list(p.shape) for p in self.params],
                "mask": s.mask, "sequence_columns": list(s.sequence_columns),
                "schedule": [s.schedule, s.warmup, self.total]}

    def start(self) -> None:
        """Seed this rank, take up a matching checkpoint, and wrap the module for DDP."""
        torch.manual_seed(self.settings.seed + self.rank)
        saved = checkpoint.read(self.settings.checkpoint_dir)
        if saved is not None and saved.meta.get("fingerprint") != self.fingerprint():
            log.warning("%s: checkpoint is from other settings; starting over",
                        self.settings.checkpoint_dir)
            saved = None
        if saved is not None:
            self._restore(saved)
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[torch.cuda.current_device()] if self.cuda else None)
            distributed.sync_params(self.extras)
        self.started = time.monotonic()

    def _restore(self, saved: checkpoint.Checkpoint) -> None:
        """Put weights, optimizer, RNG and counters back as the checkpoint has them."""
        checkpoint.load_snapshot({k: v for k, v in saved.tensors.items()
                                  if k.startswith(("model/", "extra/"))},
                                 self.module, self.extras)
        checkpoint.load_optimizer(self.opt, saved.group("optim"), saved.meta.get("optim", {}))
        if self.scaler is not None and saved.meta.get("scaler"):
            self.scaler.load_state_dict(saved.meta["scaler"])
        rng = saved.tensors.get(f"rng/{self.rank}")
        if rng is not None:
            torch.set_rng_state(rng)
        if "cuda_rng" in saved.tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved.tensors["cuda_rng"])
        for key, value in saved.meta["progress"].items():
            setattr(self.state, key, value)
        self.best = saved.group("best") or None

    def should_stop(self) -> bool:
        s = self.state
        return s.epoch >= self.settings.epochs or s.stopped_early or self.out_of_time

    def epoch(self, advance: Advance) -> None:
        """The rest of the current epoch; closed (evaluated, saved) unless time ran out."""
        s, size = self.state, self.local_batch
        order = batches.epoch_order(self.n, self.settings.seed, s.epoch, self.world, self.rank,
                                    self.lengths, size * self.world)
        self.module.train(self.settings.train_mode)
        self.mark = time.monotonic()
        for b in range(s.batch, self.steps_per_epoch):
            value = self.step(order[b * size:(b + 1) * size])
            advance(1, f"epoch {s.epoch + 1} loss {value:.4f}")
            if self.after_step is not None:
                self.after_step(s.step, self.total)
            self.out_of_time = self._late()
            if s.batch < self.steps_per_epoch and (
                    self.out_of_time or s.step % self.settings.checkpoint_every == 0):
                self._clock()
                self.save()
            if self.out_of_time:
                break
        if s.batch < self.steps_per_epoch:
            return  # out of time mid-epoch; the checkpoint holds the partial epoch
        self._clock()
        self.evaluate()
        self.save()

    def step(self, rows: torch.Tensor) -> float:
        """One optimizer step on these rows of the data; the step's loss."""
        s, settings = self.state, self.settings
        idx = rows.to(self.device)
        x = {k: v[idx] for k, v in self.inputs.items()}
        if self.lengths is not None:
            x = batches.cut(x, max(1, int(self.lengths[rows].max())), settings)
        y = None if self.labels is None else self.labels[idx]
        with torch.autocast("cuda" if self.cuda else "cpu", dtype=self.autocast,
                            enabled=self.autocast is not None):
            loss = self.loss_fn(self.net, x, y)
        self.opt.zero_grad(set_to_none=True)
        for group in self.opt.param_groups:
            group["lr"] = settings.lr * batches.lr_factor(settings, s.step, self.total)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            distributed.average_grads(self.extras)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            distributed.average_grads(self.extras)
            self.opt.step()
        value = float(loss.detach().float().item())
        s.step, s.batch = s.step + 1, s.batch + 1
        s.loss_sum, s.loss_count = s.loss_sum + value, s.loss_count + 1
        return value

    def evaluate(self) -> None:
        """Close an epoch: its history row, the best weights so far, the early-stopping count."""
        s, settings = self.state, self.settings
        loss = distributed.mean_float(s.loss_sum / max(s.loss_count, 1), self.device)
        row = {"epoch": float(s.epoch + 1), "loss": loss, "seconds": s.seconds}
        score = -loss
        if self.evaluate_fn is not None:
            self.module.eval()
            with torch.no_grad():
                score = distributed.broadcast_float(float(self.evaluate_fn(self.module)),
                                                    self.device)
            row["metric"] = score
        s.history.append(row)
        if s.score is None or score > s.score:
            s.score, s.bad_epochs = score, 0
            if settings.patience is not None:
                self.best = checkpoint.snapshot(self.module, self.extras)
        else:
            s.bad_epochs += 1
        s.epoch, s.batch = s.epoch + 1, 0
        s.loss_sum, s.loss_count, s.seconds = 0.0, 0, 0.0
        s.stopped_early = (settings.patience is not None and s.bad_epochs >= settings.patience
                           and s.epoch < settings.epochs)

    def save(self) -> None:
        """A checkpoint of everything `_restore` needs; every rank takes part (their RNG
        states are gathered), rank 0 writes."""
        rng = distributed.gather_rng(torch.get_rng_state(), self.device)
        if self.rank != 0 or self.settings.checkpoint_dir is None:
            return
        tensors = checkpoint.weights(self.module, self.extras)
        tensors.update({f"rng/{r}": t for r, t in enumerate(rng)})
        if self.cuda:
            tensors["cuda_rng"] = torch.cuda.get_rng_state()
        if self.best is not None:
            tensors.update(checkpoint.prefixed("best", self.best))
        optim_tensors, optim_scalars = checkpoint.optimizer_parts(self.opt)
        tensors.update(checkpoint.prefixed("optim", optim_tensors))
        meta = {"fingerprint": self.fingerprint(), "progress": vars(self.state).copy(),
                "optim": optim_scalars,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}
        checkpoint.write(self.settings.checkpoint_dir, self.state.step, tensors, meta)

    def finish(self) -> None:
        if self.settings.patience is not None and self.best is not None:
            checkpoint.load_snapshot(self.best, self.module, self.extras)
        self.module.eval()

    def result(self) -> FitResult:
        s = self.state
        scores = [r["metric"] for r in s.history if "metric" in r]
        return FitResult(s.step, s.epoch, s.stopped_early, max(scores) if scores else None,
                         s.history, self.out_of_time)

    def _late(self) -> bool:
        """Whether the time budget is spent, as rank 0 sees it (every rank stops together)."""
        if self.settings.max_minutes is None:
            return False
        late = time.monotonic() - self.started > self.settings.max_minutes * 60
        return distributed.broadcast_float(float(late), self.device) > 0

    def _clock(self) -> None:
        now = time.monotonic()
        self.state.seconds, self.mark = self.state.seconds + now - self.mark, now


def _check(data: Dataset, settings: TrainSettings) -> None:
    if settings.precision == "fp16" and not settings.device.startswith("cuda"):
        # An error rather than a silent fallback: fp16 on CPU has no GradScaler and would
        # quietly train in another precision than the one asked for.
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 (or fp32) on CPU")
    if len(data) == 0:
        raise TechniqueError(f"{data.name}: no examples to train on")
    if settings.epochs < 0 or settings.batch_size < 1 or settings.checkpoint_every < 1:
        raise ConfigError("training needs epochs >= 0, batch_size >= 1, checkpoint_every >= 1")


@contextlib.contextmanager
def _bar(title: str, total: int, show: bool) -> Iterator[Advance]:
    if not show:
        yield lambda n=1, note="": None
        return
    from slimkit.progress import progress_bar

    with progress_bar(title, total) as advance:
        yield advance
