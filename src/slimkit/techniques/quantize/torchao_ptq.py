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

from slimkit.dataset import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import SEARCH_BUDGET, Choice, Space
from slimkit.techniques.quantize.budget import Budget, Fallback, Outputs, Rows, search_report
from slimkit.techniques.quantize.calibrate import Method, compute_range
from slimkit.techniques.quantize.heldout import Split, split_data, take, without
from slimkit.techniques.quantize.layer_costs import torch_costs

Scheme = Literal["dynamic_int8", "static_int8", "weight_int8", "weight_int4"]


class TorchAO(TechniqueConfig):
    technique: Literal["torchao"] = "torchao"
    family = "quantization"
    space: ClassVar[Space] = {"scheme": Choice("dynamic_int8", "weight_int8"),
                               "budget": Choice(None, SEARCH_BUDGET)}
    # 2: static_int8 activation histograms streamed in one pass; 3: a max_drop budget without
    # labels counts the drop against the float model's top-1 (it passed unchecked); 4: a budget
    # must also hold on held-out rows (left out of the scales too), layers kept in float by
    # error per share of run time
    version = 4
    always_shown = ("scheme",)
    scheme: Scheme = Field("dynamic_int8", description="int8 activations (per batch or "
                           "calibrated) with int8 weights, or weight-only int8 / int4")
    calibration: Method = Field("percentile", description="static_int8: activation ranges")
    percentile: float = Field(99.99, gt=50, le=100)
    group_size: int = Field(32, gt=0, description="weight_int4: weights per scale")
    samples: int = Field(128, gt=0, description="calibration examples used")
    exclude: list[str] = Field(default_factory=list, description="Linear layers kept in float")
    budget: Budget | None = Field(None, description="accuracy-aware: keep layers in float")
    fallback: Fallback = Field("latency", description="budget: keep layers in float by error "
                               "per share of measured run time, or by error alone")
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
               names: list[str], split: Split | None) -> dict[str, tuple[float, int]]:
    """Symmetric per-tensor scale of each layer's input, from slimkit's range methods, on
    rows a budget's held-out check does not use."""
    from slimkit.observe import HistogramObserver, Request, collect

    assert ctx.data is not None
    fit = ctx.data if split is None else without(ctx.data, split.heldout)
    data = fit.head(min(config.samples, len(fit)))
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


# Rows the budget is checked on, search and held-out together: a trial runs in eager mode
CHECK_ROWS = 192


def _split(ctx: StepContext) -> Split:
    assert ctx.data is not None
    return split_data(ctx.data, CHECK_ROWS)


def _search(model: TorchModel, config: TorchAO, layers: list[str], ctx: StepContext,
            names: list[str], split: Split) -> dict[str, Any]:
    """The accuracy-aware loop, scored in eager mode on a slice of the calibration data."""
    assert ctx.data is not None and config.budget is not None
    search, held = take(ctx.data, split.search), take(ctx.data, split.heldout)
    last: dict[tuple[Any, ...], Any] = {}

    def trial(only: list[str] | None, exclude: list[str]) -> Any:
        """The quantized copy; the held-out check reuses the search trial's."""
        key = (tuple(only or ()), tuple(exclude))
        if key not in last:
            last.clear()
            last[key] = copy.deepcopy(model.module)
            _quantize(last[key], config, [n for n in (only or layers) if n not in exclude])
        return last[key]

    def on(rows: Dataset) -> Outputs:
        return lambda only, exclude: _outputs(trial(only, exclude), rows, names)

    heldout = Rows(_outputs(model.module, held, names), held.labels, on(held)) \
        if len(held) else None
    costs = (lambda: torch_costs(model, layers, search, ctx.threads)) \
        if config.fallback == "latency" else None
    report = search_report(layers, config.budget, _outputs(model.module, search, names),
                           search.labels, on(search), heldout=heldout, costs=costs)
    return {**report, **split.report()}


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
    split = _split(ctx) if config.budget is not None else None
    if config.scheme == "static_int8":
        update["scales"] = _calibrate(model.module, layers, config, ctx, names, split)
    config = config.model_copy(update=update)
    report: dict[str, Any] = {"scheme": config.scheme, "layers_quantized": len(layers)}
    if config.budget is not None:
        assert split is not None
        report = {**report, **_search(model, config, layers, ctx, names, split)}
        config = config.model_copy(update={"exclude": [*config.exclude,
                                                       *report["kept_float"]]})
        layers = [n for n in layers if n not in report["kept_float"]]
        report["layers_quantized"] = len(layers)
    _quantize(model.module, config, layers)
    return StepResult(model, record=config, report=report)
