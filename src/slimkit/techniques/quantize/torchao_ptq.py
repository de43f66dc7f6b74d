"""Post-training quantization of torch models through torchao, for the torch runtime.

torchao swaps Linear weights for quantized tensor subclasses whose kernels inductor fuses:
run such a candidate with `compile: true` (eager mode dequantizes and is slower than float).
torchao picks activation scales per batch (dynamic) or takes them from the caller (static);
for static int8 slimkit supplies per-layer scales from its own calibrators, recorded in the
step so the structure rebuilds without data. Only Linear layers are quantized: torchao's int8
and int4 tensors serve matmuls, not convolutions.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal, cast

import numpy as np
from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import SEARCH_BUDGET, Choice, Space
from slimkit.techniques.quantize.budget import Budget, search_report
from slimkit.techniques.quantize.calibrate import Method, compute_range

Scheme = Literal["dynamic_int8", "static_int8", "weight_int8", "weight_int4"]


class TorchAO(TechniqueConfig):
    technique: Literal["torchao"] = "torchao"
    family = "quantization"
    space: ClassVar[Space] = {"scheme": Choice("dynamic_int8", "weight_int8"),
                               "budget": Choice(None, SEARCH_BUDGET)}
    # 2: static_int8 activation histograms streamed in one pass; 3: a max_drop budget without
    # labels counts the drop against the float model's top-1 (it passed unchecked)
    version = 3
    always_shown = ("scheme",)
    scheme: Scheme = Field("dynamic_int8", description="int8 activations (per batch or "
                           "calibrated) with int8 weights, or weight-only int8 / int4")
    calibration: Method = Field("percentile", description="static_int8: activation ranges")
    percentile: float = Field(99.99, gt=50, le=100)
    group_size: int = Field(32, gt=0, description="weight_int4: weights per scale")
    samples: int = Field(128, gt=0, description="calibration examples used")
    exclude: list[str] = Field(default_factory=list, description="Linear layers kept in float")
    budget: Budget | None = Field(None, description="accuracy-aware: keep layers in float")
    # Recorded by the technique so the structure rebuilds from the record: per-layer static
    # activation scale and the rank of that layer's input.
    scales: dict[str, tuple[float, int]] | None = None

    def needs_data(self) -> bool:
        return self.scheme == "static_int8" or self.budget is not None


def _quiet() -> None:
    """torchao warns about CPU-irrelevant details while quantizing (its import-time log lines
    are silenced for the whole package in `slimkit/__init__`)."""
    import warnings

    warnings.filterwarnings("ignore", module=r"torchao\..*")


def linear_layers(module: Any) -> list[str]:
    import torch

    return [n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)]


def _ao_config(config: TorchAO, name: str) -> Any:
    import torch
    from torchao.quantization import (
        Int8DynamicActivationInt8WeightConfig,
        Int8StaticActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        PerGroup,
        PerRow,
        PerTensor,
    )

    if config.scheme == "dynamic_int8":
        return Int8DynamicActivationInt8WeightConfig()
    if config.scheme == "weight_int8":
        return Int8WeightOnlyConfig()
    if config.scheme == "weight_int4":
        return IntxWeightOnlyConfig(weight_dtype=torch.int4,
                                    granularity=PerGroup(config.group_size))
    assert config.scales is not None
    scale, ndim = config.scales[name]
    return Int8StaticActivationInt8WeightConfig(act_quant_scale=torch.full([1] * ndim, scale),
                                                granularity=[PerTensor(), PerRow()])


def _quantize(module: Any, config: TorchAO, layers: list[str]) -> None:
    _quiet()
    from torchao.quantization import FqnToConfig, quantize_

    if layers:
        quantize_(module, FqnToConfig({n: _ao_config(config, n) for n in layers}),
                  filter_fn=None)


def _targets(module: Any, config: TorchAO) -> list[str]:
    layers = linear_layers(module)
    unknown = sorted(set(config.exclude) - set(layers))
    if unknown:
        raise TechniqueError(f"torchao: exclude names no Linear layer: {', '.join(unknown[:3])}")
    if config.scheme == "weight_int4":
        named = dict(module.named_modules())
        small = [n for n in layers if named[n].in_features % config.group_size]
        if small and len(small) == len(layers):
            raise TechniqueError(f"torchao: no Linear layer has inputs divisible by "
                                 f"group_size {config.group_size}")
        layers = [n for n in layers if n not in small]
    return [n for n in layers if n not in config.exclude]


def _calibrate(module: Any, layers: list[str], config: TorchAO, ctx: StepContext,
               names: list[str]) -> dict[str, tuple[float, int]]:
    """Symmetric per-tensor scale of each layer's input, from slimkit's range methods."""
    from slimkit.observe import HistogramObserver, Request, collect

    assert ctx.data is not None
    data = ctx.data.head(min(config.samples, len(ctx.data)))
    stats = collect(module, data, names, [Request(layers, {"histogram": HistogramObserver})])
    seen = {n: cast(HistogramObserver, stats[n].inputs["histogram"]) for n in layers}
    silent = [n for n in layers if not seen[n].count]
    if silent:
        raise TechniqueError(f"torchao: calibration never ran Linear layer(s) "
                             f"{', '.join(silent[:3])}; put them in exclude")
    scales = {}
    for n in layers:
        lo, hi = compute_range(seen[n].histogram(), config.calibration,
                               percentile=config.percentile)
        scales[n] = (max(abs(lo), abs(hi), 1e-8) / 127.0, seen[n].ndim)
    return scales


def _outputs(module: Any, data: Any, names: list[str]) -> np.ndarray:
    import torch

    outs = []
    with torch.no_grad():
        for batch in data.batches(32):
            outs.append(module(*[torch.from_numpy(batch[n]) for n in names]).float().numpy())
    return np.concatenate(outs)


def _search(model: TorchModel, config: TorchAO, layers: list[str], ctx: StepContext,
            names: list[str]) -> dict[str, Any]:
    """The accuracy-aware loop, scored in eager mode on a slice of the calibration data."""
    assert ctx.data is not None and config.budget is not None
    check = ctx.data.head(min(len(ctx.data), 128))
    reference = _outputs(model.module, check, names)

    def outputs(only: list[str] | None, exclude: list[str]) -> np.ndarray:
        trial = copy.deepcopy(model.module)
        _quantize(trial, config, [n for n in (only or layers) if n not in exclude])
        return _outputs(trial, check, names)

    return search_report(layers, config.budget, reference, check.labels, outputs)


def _rebuild(model: Model, config: TorchAO, ctx: StepContext) -> Model:
    assert isinstance(model, TorchModel)
    if config.scheme == "static_int8" and config.scales is None:
        raise TechniqueError("torchao: the saved step records no activation scales")
    _quantize(model.module, config, _targets(model.module, config))
    return model


@technique(TorchAO, format="torch", rebuild=_rebuild, targets={"torch"})
def torchao_torch(model: Model, config: TorchAO, ctx: StepContext) -> StepResult:
    assert isinstance(model, TorchModel)
    names = [i.name for i in model.inputs]
    layers = _targets(model.module, config)
    if not layers:
        raise TechniqueError("torchao: the model has no Linear layer to quantize")
    if config.needs_data() and ctx.data is None:
        raise TechniqueError(f"torchao {config.scheme} needs calibration data")
    update: dict[str, Any] = {}
    if config.scheme == "static_int8":
        update["scales"] = _calibrate(model.module, layers, config, ctx, names)
    config = config.model_copy(update=update)
    report: dict[str, Any] = {"scheme": config.scheme, "layers_quantized": len(layers)}
    if config.budget is not None:
        report = {**report, **_search(model, config, layers, ctx, names)}
        config = config.model_copy(update={"exclude": [*config.exclude,
                                                       *report["kept_float"]]})
        layers = [n for n in layers if n not in report["kept_float"]]
        report["layers_quantized"] = len(layers)
    _quantize(model.module, config, layers)
    return StepResult(model, record=config, report=report)
