"""Training a changed model back towards the model it came from.

Pruning, quantization-aware training and distillation end the same way: a student that lost
capacity trains on what the unchanged teacher makes of the same inputs (its outputs or softened
logits, its features, its hidden states), or on the labels where the technique asks for them.
One entry keeps that the same for all of them: the teacher frozen and its outputs computed once
where they fit in memory, feature adapters seeded so a resumed run makes the same ones, and the
hooks on both models removed whatever happens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from slimkit.dataset import Dataset
from slimkit.errors import TechniqueError
from slimkit.train import losses
from slimkit.train.loop import fit
from slimkit.train.outputs import first_tensor, label_tensor
from slimkit.train.settings import FitResult, LossFn, TrainSettings
from slimkit.train.taps import Taps
from slimkit.train.teacher_cache import OUTPUT, teacher_columns

MASK = "attention_mask"  # the padding mask that hidden-state losses honour

LossKind = Literal["labels", "response", "embedding", "mse", "relational", "feature"]
# (student output, teacher output or None, labels or None) -> scalar loss
MainLoss = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


@dataclass(frozen=True)
class Objective:
    """What the student learns to match.

    `loss`: labels (cross entropy; needs no teacher), response (the teacher's softened logits,
    mixed with the labels by `alpha` where there are labels), embedding (1 - cosine), mse,
    relational (RKD distances and angles) or feature (the feature pairs alone). `features` and
    `hidden` pair student modules with teacher modules; their terms add `feature_weight` times
    their loss. Token hidden states stay in memory, computed once, up to `teacher_cache_bytes`.
    """

    loss: LossKind = "mse"
    temperature: float = 4.0
    alpha: float = 0.5
    features: tuple[tuple[str, str], ...] = ()
    feature_loss: Literal["mse", "attention"] = "mse"
    feature_weight: float = 1.0
    hidden: tuple[tuple[str, str], ...] = ()
    teacher_cache_bytes: float = 8 * 2**30

    def needs_teacher(self) -> bool:
        return self.loss != "labels" or bool(self.features or self.hidden)


@dataclass
class Recovery:
    fit: FitResult
    teacher_once: bool  # the teacher's outputs were computed once, before training
    before: float | None = None  # `evaluate` on the student before training
    after: float | None = None  # and after it


def recover(student: nn.Module, teacher: nn.Module | None, data: Dataset,
            objective: Objective, settings: TrainSettings, *,
            evaluate: Callable[[nn.Module], float] | None = None,
            after_step: Callable[[int, int], None] | None = None,
            title: str = "recovery", owner: str = "recovery") -> Recovery:
    """Train `student` in place on `data` towards the frozen `teacher` (None for loss 'labels').

    `data` holds the student's inputs (and labels); `settings` the loop's (its mask and sequence
    columns group token rows by length). `evaluate` (higher is better) picks the best epoch
    when `settings.patience` is set and is measured before and after; `owner` names the
    technique in errors.
    """
    _check(teacher, data, objective, owner)
    student.to(settings.device)
    if teacher is not None:
        teacher.to(settings.device).eval().requires_grad_(False)
    hooks: list[Taps] = []
    try:
        taps, hidden, adapters = _taps(student, teacher, data, objective, settings, owner, hooks)
        train, states, settings = _teacher_once(teacher, hidden, data, objective, settings)
        loss_fn = _loss_fn(objective, teacher, taps, hidden, adapters, states)
        before = _measure(evaluate, student.eval())
        result = fit(student, loss_fn, train, settings, evaluate=evaluate,
                     extra_params=adapters.parameters() if adapters is not None else (),
                     after_step=after_step, title=title)
        teacher_once = train is not data
        del train  # the teacher's token states can take gigabytes
    finally:
        for tap in hooks:
            tap.remove()
    return Recovery(result, teacher_once, before, _measure(evaluate, student))


def main_loss(objective: Objective) -> MainLoss | None:
    """The term on the final outputs; None for loss 'feature', which has none."""
    kind, t, alpha = objective.loss, objective.temperature, objective.alpha
    if kind == "labels":
        return lambda s, _t, y: F.cross_entropy(s, _needed(y))
    if kind == "response":
        return lambda s, tt, y: losses.response_loss(s, _needed(tt), y, t, alpha)
    table = {"embedding": losses.cosine_loss, "mse": losses.embedding_mse,
             "relational": losses.relational_loss}
    fn = table.get(kind)
    return None if fn is None else (lambda s, tt, _y: fn(s, _needed(tt)))


def _check(teacher: nn.Module | None, data: Dataset, objective: Objective, owner: str) -> None:
    if teacher is None and objective.needs_teacher():
        raise TechniqueError(f"{owner}: loss {objective.loss!r} needs a teacher")
    if objective.loss == "feature" and not objective.features:
        raise TechniqueError(f"{owner}: loss 'feature' needs feature pairs")
    if objective.loss == "labels" and label_tensor(data.labels) is None:
        raise TechniqueError(f"{owner}: training on labels, but {data.name} has no class labels")


def _taps(student: nn.Module, teacher: nn.Module | None, data: Dataset, objective: Objective,
          settings: TrainSettings, owner: str, hooks: list[Taps]
          ) -> tuple[Taps | None, Taps | None, nn.ModuleList | None]:
    """Hooks for the feature and hidden-state pairs (added to `hooks` as they are made, so an
    error on the second still removes the first) and the feature adapters."""
    if teacher is None:
        return None, None, None
    taps = Taps(student, teacher, list(objective.features), owner)
    hooks.append(taps)
    adapters = None
    if objective.features:
        probe = {n: torch.from_numpy(v[: settings.batch_size]).to(settings.device)
                 for n, v in data.inputs.items()}
        adapters = taps.adapters(probe, objective.feature_loss, settings.seed)
    hidden = Taps(student, teacher, list(objective.hidden), owner)
    hooks.append(hidden)
    return taps, hidden, adapters


def _teacher_once(teacher: nn.Module | None, hidden: Taps | None, data: Dataset,
                  objective: Objective, settings: TrainSettings
                  ) -> tuple[Dataset, list[str], TrainSettings]:
    """`data` with the teacher's outputs and hidden states as extra columns, the names of the
    state columns, and settings that cut those with the inputs; `data` itself, unchanged, when
    the teacher must run at every step (its features feed adapters that train) or the states
    do not fit in memory."""
    if teacher is None or hidden is None or objective.features or not objective.needs_teacher():
        return data, [], settings
    cached = teacher_columns(
        lambda x: (first_tensor(teacher(**x)), hidden.teacher_states()), data,
        settings.device, objective.teacher_cache_bytes, precision=settings.precision,
        mask=settings.mask, sequence_columns=settings.sequence_columns)
    if cached is None:
        return data, [], settings
    states = [c for c in cached if c != OUTPUT]
    if settings.mask is not None:
        settings = replace(settings, sequence_columns=(*settings.sequence_columns, *states))
    return Dataset({**data.inputs, **cached}, data.labels, data.name), states, settings


def _loss_fn(objective: Objective, teacher: nn.Module | None, taps: Taps | None,
             hidden: Taps | None, adapters: nn.ModuleList | None, states: list[str]) -> LossFn:
    main = main_loss(objective)
    weight = objective.feature_weight
    live = objective.needs_teacher()

    def loss_fn(net: nn.Module, x: dict[str, torch.Tensor],
                y: torch.Tensor | None) -> torch.Tensor:
        t = x.pop(OUTPUT, None)
        targets = [x.pop(c) for c in states] or None
        s = first_tensor(net(**x))
        if t is None and live:
            assert teacher is not None
            with torch.no_grad():
                t = first_tensor(teacher(**x))
        total = main(s, t, y) if main is not None else s.new_zeros(())
        if adapters is not None:
            assert taps is not None
            total = total + weight * taps.loss(adapters, objective.feature_loss)
        if hidden is not None and hidden.pairs:
            total = total + weight * hidden.hidden_loss(x.get(MASK), targets)
        return total

    return loss_fn


def _measure(evaluate: Callable[[nn.Module], float] | None, module: nn.Module) -> float | None:
    if evaluate is None:
        return None
    with torch.no_grad():
        return float(evaluate(module))


def _needed(t: torch.Tensor | None) -> torch.Tensor:
    assert t is not None, "the loss was given no target"
    return t
