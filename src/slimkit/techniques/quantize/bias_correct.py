"""Bias correction: cancel the shift that rounding the weights puts into each layer's output.

Rounding errors of one output channel's weights rarely cancel: W_q - W has a mean direction,
so E[W_q x] differs from E[W x] by a constant per channel, which the layers after it carry on
and ReLUs turn into lost or spurious activations (Nagel et al., "Data-Free Quantization
Through Weight Equalization and Bias Correction", 2019). Subtracting that shift from the bias
removes it. The weights are rounded here on the grid of the quantizer that runs later
(`static_int8` or `nncf_int8`, see `grid.py`), but stay float: only the biases change.

`empirical` measures the shift on calibration data, layer by layer in the order they run, each
one fed by the model whose earlier layers are already quantized and corrected: the correction is
E[W_q x_q] - E[W x], so it also takes out the drift a layer inherits from the ones before.
`analytic` needs no data: E[x] comes from the preceding BatchNorm through its ReLU, for layers
that follow conv-BN-activation (see `bias_analytic.py`). NNCF corrects biases itself (its
`fast_bias_correction`), so this step is for ONNX Runtime first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.techniques.quantize.grid import WeightGrid, resolve_grid

if TYPE_CHECKING:
    import torch

    from slimkit.techniques.quantize.weight_layers import Feed


class BiasCorrect(TechniqueConfig):
    technique: Literal["bias_correct"] = "bias_correct"
    family = "quantization"
    always_shown = ("method",)
    method: Literal["empirical", "analytic"] = Field(
        "empirical", description="empirical: shifts measured on calibration data; analytic: "
                                 "data-free, from BatchNorm statistics (conv-BN-ReLU inputs)")
    weight_grid: WeightGrid = Field(
        "auto", description="the quantizer's weight grid: int8, int7 (ONNX Runtime's "
                            "reduce_range), nncf; auto: what static_int8 picks on this CPU")
    samples: int = Field(64, gt=0, description="calibration examples (empirical)")
    new_biases: list[str] | None = Field(
        None, description="recorded by the step: layers it gave a bias, so a saved model "
                          "rebuilds; leave unset")

    def needs_data(self) -> bool:
        return self.method == "empirical"

    def resolve(self) -> BiasCorrect:
        return self.model_copy(update={"weight_grid": resolve_grid(self.weight_grid)})


def _rebuild(model: Model, config: BiasCorrect, ctx: StepContext) -> Model:
    from torch import nn

    from slimkit.techniques.quantize.weight_layers import ensure_bias, fold

    assert isinstance(model, TorchModel)
    if config.new_biases is None:
        raise TechniqueError("bias_correct: the saved step does not say which layers got a bias")
    fold(model.module)
    named = dict(model.module.named_modules())
    for name in config.new_biases:
        if not isinstance(named.get(name), (nn.Conv2d, nn.Linear)):
            raise TechniqueError(f"bias_correct: the saved step names no layer {name!r}")
        ensure_bias(named[name])
    return model


@technique(BiasCorrect, format="torch", rebuild=_rebuild)
def bias_correct_torch(model: Model, config: BiasCorrect, ctx: StepContext) -> StepResult:
    from torch import nn

    from slimkit.techniques.quantize import bias_analytic, bias_empirical
    from slimkit.techniques.quantize.grid import layer_grid
    from slimkit.techniques.quantize.weight_layers import ensure_bias, fold, walk

    assert isinstance(model, TorchModel)
    module = model.module.eval()
    if config.method == "empirical" and ctx.data is None:
        raise TechniqueError("bias_correct (empirical) needs calibration data")
    analytic_means: dict[str, torch.Tensor] = {}
    why = ""
    if config.method == "analytic":  # BatchNorm parameters are read before they are folded
        kinds = [n for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        analytic_means, why = bias_analytic.input_means(module, kinds)
    folded, left = fold(module)
    feed = _feed(model, config, ctx)
    seen = walk(module, feed)
    layers = {n: dict(module.named_modules())[n] for n in seen.order if n not in seen.repeated}
    grid = resolve_grid(config.weight_grid)
    rounded = {n: layer_grid(grid, n in seen.first_convs).nearest(m.weight)
               for n, m in layers.items()}
    new = [n for n, m in layers.items() if m.bias is None
           and (config.method == "empirical" or n in analytic_means)]
    for n in new:
        ensure_bias(layers[n])
    if config.method == "empirical":
        report = bias_empirical.correct(module, feed, layers, rounded,
                                        *_check_feed(model, config, ctx))
    else:
        report = bias_analytic.correct(layers, rounded, analytic_means, seen.shapes, why)
    report.update({"method": config.method, "weight_grid": grid, "folded_batchnorms": folded,
                   "batchnorms_left": left, "repeated_layers": sorted(seen.repeated)})
    made = TorchModel(module, model.inputs, model.tokenizer, ref=model.ref)
    return StepResult(made, record=config.model_copy(update={"weight_grid": grid,
                                                             "new_biases": new}),
                      report=report)


def _feed(model: TorchModel, config: BiasCorrect, ctx: StepContext) -> Feed:
    from slimkit.techniques.quantize.weight_layers import Feed

    if ctx.data is not None:
        return Feed.of(model, ctx.data, config.samples)
    from slimkit.dataset import synthetic  # analytic: only to see which layers run, in order

    return Feed.of(model, synthetic(model.inputs, 1, {"sequence": 16}), 1)


def _check_feed(model: TorchModel, config: BiasCorrect, ctx: StepContext) -> tuple[Feed, str]:
    """Rows the shifts are reported on: ones not used for the correction where there are any."""
    from slimkit.techniques.quantize.weight_layers import Feed

    assert ctx.data is not None
    n = config.samples
    if len(ctx.data) > n:
        rest = ctx.data.rows(n, min(len(ctx.data), 2 * n))
        return Feed.of(model, rest, n), "held-out rows"
    return Feed.of(model, ctx.data, n), "calibration rows"
