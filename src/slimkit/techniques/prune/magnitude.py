"""Unstructured magnitude pruning: the smallest weights of Conv/Linear layers become zero.

The module keeps its shapes, so rebuilding a saved model needs nothing from the record but the
step itself; the zeros are in the weights. What it buys is size (zeros compress, see
slimkit.sparse_state) and a starting point for sparse kernels; on the dense CPU runtimes the
zeros still cost time, which the step's report says in so many words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, technique
from slimkit.techniques.prune.schedule import (
    DENSE_RUNTIME_NOTE,
    PruneTraining,
    ScheduleKind,
    apply_masks,
    candidate_layers,
    fine_tune,
    history,
    layer_table,
    overall,
    polynomial_sparsity,
    prunable_kinds,
    training_target,
)

if TYPE_CHECKING:
    import torch
    from torch import nn


class PruneMagnitude(PruneTraining):
    technique: Literal["prune_magnitude"] = "prune_magnitude"
    family = "pruning"
    always_shown = ("sparsity",)
    sparsity: float | None = Field(0.5, ge=0, lt=1, description="share of weights set to zero")
    threshold: float | None = Field(None, ge=0, description="zero weights with |w| below this "
                                                            "(instead of a sparsity)")
    scope: Literal["global", "layer"] = Field(
        "global", description="rank weights across all pruned layers, or each layer alone")
    schedule: ScheduleKind = Field(
        "constant", description="polynomial: sparsity rises from initial_sparsity while "
                                "fine-tuning (Zhu & Gupta)")
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    update_every: int = Field(10, gt=0, description="optimizer steps between mask updates")
    ramp: float = Field(0.75, gt=0, le=1, description="share of the fine-tuning steps over "
                                                      "which sparsity rises; the rest recovers")

    @model_validator(mode="before")
    @classmethod
    def _threshold_replaces_sparsity(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("threshold") is not None \
                and "sparsity" not in data:
            return {**data, "sparsity": None}
        return data

    @model_validator(mode="after")
    def _one_target(self) -> PruneMagnitude:
        if (self.sparsity is None) == (self.threshold is None):
            raise ValueError("give sparsity (share of weights to zero) or threshold "
                             "(magnitude below which weights are zeroed), not both")
        if self.schedule == "polynomial":
            if self.sparsity is None:
                raise ValueError("schedule polynomial ramps a sparsity; threshold is constant")
            if self.epochs == 0:
                raise ValueError("schedule polynomial raises sparsity while fine-tuning; "
                                 "set epochs > 0")
            if self.initial_sparsity > self.sparsity:
                raise ValueError("initial_sparsity is above sparsity")
        return self


def magnitude_masks(layers: dict[str, nn.Module], sparsity: float,
                    scope: Literal["global", "layer"]) -> dict[str, torch.Tensor]:
    """Masks zeroing exactly round(sparsity * n) weights, the smallest by magnitude, over all
    layers together (global) or in each layer (layer). Ties break by position."""
    import torch

    weights = {n: m.weight.detach() for n, m in layers.items()}
    if scope == "layer":
        return {n: _keep_largest(w.abs().flatten(), sparsity).view_as(w)
                for n, w in weights.items()}
    if not weights:
        return {}
    keep = _keep_largest(torch.cat([w.abs().flatten() for w in weights.values()]), sparsity)
    parts = keep.split([w.numel() for w in weights.values()])
    return {n: p.view_as(w) for (n, w), p in zip(weights.items(), parts, strict=True)}


def _keep_largest(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    import torch

    k = round(sparsity * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool)
    keep[torch.argsort(scores.float(), stable=True)[:k]] = False
    return keep


def threshold_masks(layers: dict[str, nn.Module], threshold: float) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().abs() >= threshold for n, m in layers.items()}


def ramp_target(config: PruneMagnitude, step: int, total: int) -> float | None:
    """The sparsity the masks move to after optimizer step `step` of `total`; None where they
    stay as they are (constant schedule, or between updates)."""
    if config.schedule != "polynomial" or config.sparsity is None:
        return None
    if step % config.update_every and step != total:
        return None
    ramp = max(1, round(config.ramp * total))
    return polynomial_sparsity(step, ramp, config.initial_sparsity, config.sparsity)


def _rebuild(model: Model, config: PruneMagnitude, ctx: StepContext) -> Model:
    """Shapes do not change; the saved weights carry the zeros."""
    assert isinstance(model, TorchModel)
    return model


@technique(PruneMagnitude, format="torch", rebuild=_rebuild)
def prune_magnitude_torch(model: Model, config: PruneMagnitude,
                          ctx: StepContext) -> StepResult:
    assert isinstance(model, TorchModel)
    every = {n: m for n, m in model.module.named_modules() if isinstance(m, prunable_kinds())}
    layers = candidate_layers(model.module, prunable_kinds(), config.exclude)
    if not layers:
        raise TechniqueError("prune_magnitude: no Conv/Linear layer is left to prune "
                             "(check exclude)")
    tuning = training_target(model, config, ctx)

    def masks_at(sparsity: float) -> dict[str, torch.Tensor]:
        if config.threshold is not None:
            return threshold_masks(layers, config.threshold)
        return magnitude_masks(layers, sparsity, config.scope)

    final = config.sparsity or 0.0
    start = config.initial_sparsity if config.schedule == "polynomial" else final
    masks = masks_at(start)
    apply_masks(layers, masks)

    masks_step = 0

    def after_step(step: int, total: int) -> None:
        nonlocal masks, masks_step
        target = ramp_target(config, step, total)
        if target is None and step - masks_step > config.update_every:
            # Resumed from a checkpoint: take up the masks of the last update before this step,
            # or zeros pruned before the interruption would grow back.
            target = ramp_target(config, step - step % config.update_every, total)
        if target is not None:
            masks, masks_step = masks_at(target), step
        apply_masks(layers, masks)

    result = fine_tune(model.module, tuning, config, ctx, after_step, "pruning fine-tuning")
    # A time budget may stop training before the ramp ended: finish at the target.
    if config.threshold is None:
        masks = masks_at(final)
    apply_masks(layers, masks)
    model.module.eval()
    rows = layer_table(every, set(layers))
    report = {
        "method": "unstructured magnitude", "scope": config.scope, "schedule": config.schedule,
        "target_sparsity": config.sparsity, "threshold": config.threshold,
        "sparsity": overall(rows, only_pruned=True),
        "sparsity_all_layers": overall(rows, only_pruned=False),
        "layers": rows, **history(result), "note": DENSE_RUNTIME_NOTE,
    }
    return StepResult(TorchModel(model.module, model.inputs, model.tokenizer, ref=model.ref),
                      report=report)
