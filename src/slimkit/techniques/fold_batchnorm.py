"""Fold each BatchNorm into the convolution before it.

An eval-mode BatchNorm is an affine map per channel, so the convolution can absorb it: one
operator fewer per block in eager torch, and the weights that later steps prune or quantize are
the ones that really run (ONNX Runtime and OpenVINO fold it on load anyway, so this step runs on
torch only). Exact up to float rounding; deterministic and data-free, so it is its own rebuild.
"""

from __future__ import annotations

from typing import Literal

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique


class FoldBatchNorm(TechniqueConfig):
    technique: Literal["fold_batchnorm"] = "fold_batchnorm"


@technique(FoldBatchNorm, format="torch")
def fold_batchnorm_torch(model: Model, config: FoldBatchNorm, ctx: StepContext) -> StepResult:
    from torch import nn

    from slimkit.techniques.quantize.fold import fold_batchnorms

    assert isinstance(model, TorchModel)
    module = model.module.eval()
    before = sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    folded = fold_batchnorms(module)
    if before and not folded:
        raise TechniqueError(f"fold_batchnorm: the model has {before} BatchNorm2d layers, none "
                             f"directly after a Conv2d in an nn.Sequential")
    return StepResult(TorchModel(module, model.inputs, model.tokenizer, ref=model.ref),
                      report={"folded": folded, "left": before - folded})
