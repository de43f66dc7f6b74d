"""Masks that stay put while a pruned network fine-tunes, and how fast they grow.

Pruning a trained network all at once costs accuracy that fine-tuning has to win back; raising
the sparsity gradually while training (Zhu & Gupta, 2017) lets the remaining weights take over
as their neighbours go. Both unstructured and N:M pruning share the pieces here: which layers
are candidates, holding pruned weights at zero through optimizer steps, what fine-tuning
trains towards, and the per-layer table written beside the artifact.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.registry import StepContext, TechniqueConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from slimkit.data import Dataset
    from slimkit.model import TorchModel
    from slimkit.train import FitResult
    from slimkit.train.recover import Objective

DENSE_RUNTIME_NOTE = (
    "ONNX Runtime and OpenVINO run these weights with dense CPU kernels, so the zeros still "
    "cost their multiply-adds: pruning here shrinks the model on disk (slimkit stores mostly "
    "zero weights as their non-zero values and a bitmask) but gives no speed-up.")


class PruneTraining(TechniqueConfig):
    """Options shared by the pruning techniques: which layers, and the fine-tuning."""

    # 2: fine-tuning by distillation computes the unpruned model's outputs once, before
    # training (in other batches than the steps', so they may round differently)
    version = 2
    exclude: list[str] | None = Field(
        None, description="fnmatch globs of layers left dense; None: the first and the last "
                          "Conv/Linear layer (input stem and output head)")
    epochs: int = Field(0, ge=0, description="fine-tuning epochs; 0: one-shot pruning")
    loss: Literal["auto", "labels", "distill"] = Field(
        "auto", description="labels: cross entropy; distill: distance to the unpruned model's "
                            "outputs; auto: labels when the data has them")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="torch seeds are 64-bit; the loop "
                      "derives others from it")
    max_minutes: float | None = Field(None, gt=0, description="fine-tuning time budget")

    def needs_data(self) -> bool:
        return self.epochs > 0


def polynomial_sparsity(step: int, total: int, initial: float, final: float) -> float:
    """Zhu & Gupta's cubic ramp: s_t = s_f + (s_i - s_f)(1 - t/T)^3, held at s_f after T."""
    if total <= 0:
        return final
    t = min(max(step, 0), total)
    return final + (initial - final) * (1.0 - t / total) ** 3


def candidate_layers(module: nn.Module, kinds: tuple[type, ...],
                     exclude: list[str] | None) -> dict[str, nn.Module]:
    """Layers of the given types, in registration order, without the excluded ones."""
    found = {n: m for n, m in module.named_modules() if isinstance(m, kinds)}
    if exclude is None:
        names = list(found)
        skip = {names[0], names[-1]} if len(names) > 1 else set()
    else:
        skip = {n for n in found if any(fnmatch.fnmatchcase(n, g) for g in exclude)}
    return {n: m for n, m in found.items() if n not in skip}


def prunable_kinds(conv: bool = True) -> tuple[type, ...]:
    from torch import nn

    return (nn.Linear, nn.modules.conv._ConvNd) if conv else (nn.Linear,)


def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    import torch

    with torch.no_grad():
        for name, mask in masks.items():
            # masked_fill writes +0.0 where a product would leave -0.0 for negative weights
            layers[name].weight.masked_fill_(~mask.to(layers[name].weight.device), 0.0)


@dataclass
class FineTune:
    """What pruning's fine-tuning trains towards: the labels, or the outputs of the network as
    it was before pruning (`teacher`, a frozen copy)."""

    objective: Objective
    teacher: nn.Module | None


def training_target(model: TorchModel, config: PruneTraining,
                  ctx: StepContext) -> FineTune | None:
    """Cross entropy on the labels when there are labels, else the distance to the outputs of
    the network as it is now (call this before pruning: the frozen copy is the teacher).
    None when there is no fine-tuning."""
    from slimkit.train.recover import Objective

    if config.epochs == 0:
        return None
    data = ctx.data
    if data is None:
        raise TechniqueError(f"{config.technique}: fine-tuning (epochs > 0) needs training data")
    if config.loss == "labels" and data.labels is None:
        raise TechniqueError(f"{config.technique}: loss is 'labels' but {data.name} has none")
    logits = data.labels is not None and _logits_for(model, data)
    if config.loss == "labels" and not logits:
        raise TechniqueError(f"{config.technique}: loss is 'labels' but the model's output "
                             "does not score the data's classes")
    if logits and config.loss != "distill":
        return FineTune(Objective(loss="labels"), None)
    return FineTune(Objective(loss="mse"), copy.deepcopy(model.module).eval())


def _logits_for(model: TorchModel, data: Dataset) -> bool:
    """Whether the model's output can take the data's labels: class scores, labels in range."""
    import torch

    from slimkit.train.outputs import first_tensor, label_tensor, uses_labels

    probe = {k: torch.from_numpy(v[:2]) for k, v in data.inputs.items()}
    with torch.no_grad():
        out = first_tensor(model.module(**probe))
    return uses_labels(out, label_tensor(data.labels))


def fine_tune(module: nn.Module, tuning: FineTune | None, config: PruneTraining,
              ctx: StepContext, after_step: Callable[[int, int], None],
              title: str) -> FitResult | None:
    """Train `module` in place through the shared recovery entry; `after_step` keeps the
    masks."""
    if tuning is None or ctx.data is None:
        return None
    from slimkit.train import TrainSettings
    from slimkit.train.recover import recover

    settings = TrainSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                             weight_decay=config.weight_decay, seed=config.seed,
                             max_minutes=config.max_minutes, checkpoint_dir=ctx.checkpoints)
    return recover(module, tuning.teacher, ctx.data, tuning.objective, settings,
                   after_step=after_step, title=title, owner=config.technique).fit


def layer_table(layers: dict[str, nn.Module], pruned: set[str]) -> list[dict[str, Any]]:
    """One row per candidate or excluded layer: its weights, how many and which share are zero."""
    rows = []
    for name, m in layers.items():
        w = m.weight.detach()
        zeros = int((w == 0).sum())
        rows.append({"layer": name, "params": int(w.numel()), "zeros": zeros,
                     "sparsity": round(zeros / max(w.numel(), 1), 6), "pruned": name in pruned})
    return rows


def overall(rows: list[dict[str, Any]], only_pruned: bool) -> float:
    chosen = [r for r in rows if r["pruned"] or not only_pruned]
    params = sum(r["params"] for r in chosen)
    zeros = sum(r["zeros"] for r in chosen)
    return round(zeros / params, 6) if params else 0.0


def history(result: FitResult | None) -> dict[str, Any]:
    if result is None:
        return {"fine_tuning": None}
    return {"fine_tuning": {"steps": result.steps, "epochs": result.epochs,
                            "stopped_early": result.stopped_early,
                            "out_of_time": result.out_of_time,
                            "history": result.history}}


ScheduleKind = Literal["constant", "polynomial"]
