"""Mixed-precision bit allocation: each layer's weights get 4, 8 or 16 bits under a size budget.

In the spirit of HAQ / HAWQ: the sensitivity of every layer at every bit width is measured on
calibration data (the output error when that layer alone is quantized), then a greedy knapsack
starts from the narrowest widths and buys precision where it removes the most error per added
byte, until the budget is spent. 16 bits leaves a layer in float. The allocation is applied with
the same fake quantizers as QAT (optionally fine-tuned), so it exports as QDQ like any QAT model.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import Float, Space
from slimkit.techniques.allocate import buy_while_it_helps, total

_WIDTHS = (2, 3, 4, 5, 6, 7, 8, 16)


class MixedPrecision(TechniqueConfig):
    technique: Literal["mixed_precision"] = "mixed_precision"
    family = "quantization"
    space: ClassVar[Space] = {"size_budget": Float(0.15, 0.5, step=0.05)}
    always_shown = ("size_budget",)
    size_budget: float = Field(0.2, gt=0, le=1, description="weight bytes / fp32 weight bytes")
    bits: list[int] = Field(default_factory=lambda: [4, 8, 16], description="widths to choose")
    activation_bits: Literal[8] | None = 8
    epochs: int = Field(0, ge=0, description="QAT fine-tuning after allocation")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, gt=0)
    samples: int = Field(256, gt=0, description="calibration examples for sensitivity")
    allocation: dict[str, int] | None = Field(
        None, description="layer -> bits; given, it is applied as is (the search records its "
                          "choice here, so a saved model rebuilds without searching again)")

    @field_validator("bits")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if not v or any(b not in _WIDTHS for b in v):
            raise ValueError("bits are chosen from 2..8 and 16")
        return sorted(set(v))

    @field_validator("allocation")
    @classmethod
    def _allocated_widths(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        bad = next((b for b in (v or {}).values() if b not in _WIDTHS), None)
        if bad is not None:
            raise ValueError(f"allocation: {bad} bits; widths are 2..8 and 16")
        return v

    def needs_data(self) -> bool:
        return True


def allocate(sizes: list[int], sensitivity: list[dict[int, float]], widths: list[int],
             budget_bits: float) -> list[int]:
    """Start at the narrowest width and widen, one width at a time, the layer whose next width
    removes most error per added bit, while the total stays within `budget_bits`."""
    damage = {i: {w: row[w] for w in widths} for i, row in enumerate(sensitivity)}
    bits = {i: {w: n * w for w in widths} for i, n in enumerate(sizes)}
    start = dict.fromkeys(damage, widths[0])
    if total(bits, start) > budget_bits:
        raise TechniqueError(f"mixed_precision: even {widths[0]} bits everywhere exceed the budget")
    choice = buy_while_it_helps(damage, start, bits, budget_bits, adjacent=True)
    return [choice[i] for i in range(len(sizes))]


def _sensitivities(module: Any, data: Any, names: list[str], widths: list[int]
                   ) -> tuple[list[str], list[int], list[dict[int, float]]]:
    import torch

    from slimkit.evaluate.fidelity import relative_error
    from slimkit.techniques.quantize.fold import fold_batchnorms
    from slimkit.techniques.quantize.primitives import quantize_tensor

    module = copy.deepcopy(module)
    fold_batchnorms(module)
    feeds = [torch.from_numpy(data.inputs[n]) for n in names]
    layers = [(n, m) for n, m in module.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        reference = module(*feeds)
        table = []
        for _, m in layers:
            w = m.weight.data.clone()
            row = {}
            for b in widths:
                if b >= 16:
                    row[b] = 0.0
                    continue
                qt = quantize_tensor(w.numpy(), b, symmetric=True, granularity="channel", axis=0)
                m.weight.data = torch.from_numpy(qt.dequantize())
                row[b] = relative_error(module(*feeds), reference)
            m.weight.data = w
            table.append(row)
    return [n for n, _ in layers], [m.weight.numel() for _, m in layers], table


def _rebuild(model: Model, config: MixedPrecision, ctx: StepContext) -> Model:
    return rebuild_mixed(model, config, ctx)


@technique(MixedPrecision, format="torch", requires_data=True, rebuild=_rebuild)
def mixed_precision_torch(model: Model, config: MixedPrecision,
                          ctx: StepContext) -> StepResult:
    from slimkit.techniques.quantize.qat import QAT, qat_torch

    assert isinstance(model, TorchModel)
    if ctx.data is None:
        raise TechniqueError("mixed_precision needs calibration data")
    names = [i.name for i in model.inputs]
    sample = ctx.data.head(min(config.samples, len(ctx.data)))
    layer_names, sizes, table = _sensitivities(model.module, sample, names, config.bits)
    if config.allocation is not None:
        choice = [config.allocation.get(n, 16) for n in layer_names]
    else:
        choice = allocate(sizes, table, config.bits, config.size_budget * 32 * sum(sizes))
    bits_map = dict(zip(layer_names, choice, strict=True))
    qat = QAT(weight_bits=8, activation_bits=config.activation_bits, epochs=config.epochs,
              lr=config.lr, batch_size=config.batch_size)
    out = qat_torch(model, qat, ctx, bits=bits_map)
    assert isinstance(out, TorchModel)
    achieved = sum(n * b for n, b in zip(sizes, choice, strict=True)) / (32 * sum(sizes))
    report = {
        "size_budget": config.size_budget, "weight_size_ratio": achieved,
        "bits": bits_map,
        "layers": sorted(({"layer": n, "sensitivity": table[i][config.bits[0]],
                           "precision": "float" if choice[i] >= 16 else f"int{choice[i]}"}
                          for i, n in enumerate(layer_names)), key=lambda r: -r["sensitivity"]),
        "sensitivity_by_bits": {n: table[i] for i, n in enumerate(layer_names)},
    }
    return StepResult(out, record=config.model_copy(update={"allocation": bits_map}),
                      report=report)


def rebuild_mixed(model: Model, config: MixedPrecision, ctx: StepContext) -> Model:
    """The structure comes from the allocation recorded in the step's config."""
    from slimkit.techniques.quantize.qat import QAT, structure

    assert isinstance(model, TorchModel)
    if config.allocation is None:
        raise TechniqueError("mixed_precision: the saved step has no allocation to rebuild from")
    qat = QAT(weight_bits=8, activation_bits=config.activation_bits)
    return structure(model, qat, config.allocation)[0]
