"""AdaRound: learn, layer by layer, whether each weight rounds down or up (see adaround_fit).

The result are float weights lying exactly on the grid of the quantizer that runs after export
(`static_int8` or `nncf_int8`, see `grid.py`), which then finds nothing left to round. A layer's
inputs come, by default, from the model whose earlier layers are already rounded, so that each
layer also makes up for the error of the ones before it; on MobileNetV2 under ONNX Runtime's
static int8 only that showed in the final outputs. Inputs from the float model cost one pass
over the data instead of one per layer.

Fitting takes minutes on a CPU, so the step is resumable: after each layer the rounded weights
so far go to a checkpoint, and a rerun of the same step carries on after the last finished
layer. With a time budget, layers not reached when it is spent get nearest rounding. Only
weights change (BatchNorm folding aside), so a saved model rebuilds by folding and then loads
its weights.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.techniques.quantize.calibrate import Method
from slimkit.techniques.quantize.grid import WeightGrid, resolve_grid


class AdaRound(TechniqueConfig):
    technique: Literal["adaround"] = "adaround"
    family = "quantization"
    # 2: layers fitted with their inputs rounded to uint8 as the runtime will (activations)
    version = 2
    always_shown = ("iterations",)
    weight_grid: WeightGrid = Field(
        "auto", description="the quantizer's weight grid: int8, int7 (ONNX Runtime's "
                            "reduce_range), nncf; auto: what static_int8 picks on this CPU")
    iterations: int = Field(1000, ge=0, description="optimizer steps per layer")
    samples: int = Field(128, gt=0, description="calibration examples")
    batch_size: int = Field(1024, gt=0, description="rows per step: output positions of a "
                                                    "convolution, rows of a Linear")
    learning_rate: float = Field(1e-2, gt=0)
    inputs: Literal["float", "quantized"] = Field(
        "quantized", description="each layer's inputs from the model with the earlier layers "
                                 "already rounded (a pass per layer), or from the float model "
                                 "(one pass feeds every layer: about 3x faster)")
    activations: bool = Field(
        True, description="with quantized inputs, also round each layer's input to uint8 as "
                          "the runtime will, so the rounding makes up for activation error")
    activation_calibration: Method = Field("percentile", description="range method for the "
                                           "simulated activations (static_int8's default)")
    percentile: float = Field(99.999, gt=50, le=100)
    minutes: float | None = Field(None, gt=0, description="time budget; layers not reached "
                                                          "get nearest rounding")
    skip: list[str] = Field(default_factory=list, description="layers left as they are")

    def needs_data(self) -> bool:
        return True

    def resolve(self) -> AdaRound:
        return self.model_copy(update={"weight_grid": resolve_grid(self.weight_grid)})


def _rebuild(model: Model, config: AdaRound, ctx: StepContext) -> Model:
    from slimkit.techniques.quantize.weight_layers import fold

    assert isinstance(model, TorchModel)
    fold(model.module)  # the weights themselves come from the artifact
    return model


@technique(AdaRound, format="torch", requires_data=True, rebuild=_rebuild)
def adaround_torch(model: Model, config: AdaRound, ctx: StepContext) -> StepResult:
    import torch

    from slimkit.progress import progress_bar
    from slimkit.techniques.quantize.adaround_run import Run
    from slimkit.techniques.quantize.weight_layers import Feed, fold, walk

    assert isinstance(model, TorchModel)
    if ctx.data is None:
        raise TechniqueError("adaround needs calibration data")
    module = model.module.eval()
    folded, left = fold(module)
    feed = Feed.of(model, ctx.data, config.samples)
    seen = walk(module, feed)
    named = dict(module.named_modules())
    unknown = [n for n in config.skip if n not in named]
    if unknown:
        raise TechniqueError(f"adaround: skip names no module {unknown[0]!r}")
    layers = {n: named[n] for n in seen.order if n not in seen.repeated
              and not any(n == s or n.startswith(s + ".") for s in config.skip)}
    grid = resolve_grid(config.weight_grid)
    run = Run(module, feed, config, layers, grid, seen.first_convs, ctx)
    with progress_bar("adaround", total=len(layers)) as advance:
        advance(len(run.rows), f"resumed after {len(run.rows)} layers" if run.rows else "")
        run.go(advance)
    nearest = list(layers)[len(run.rows):]
    for name in nearest:  # out of time: the quantizer's own rounding, decided here
        with torch.no_grad():
            layers[name].weight.copy_(run.grids[name].nearest(layers[name].weight))
    run.close()
    report: dict[str, Any] = {  # losses: mean squared output error on the calibration rows
        "weight_grid": grid, "inputs": config.inputs, "layers": run.rows,
        "layers_rounded": len(run.rows), "layers_left_at_nearest": nearest,
        "out_of_time": bool(nearest), "repeated_layers": sorted(seen.repeated),
        "skipped": sorted(n for n in seen.order if n not in layers and n not in seen.repeated),
        "seconds": round(run.seconds(), 1), "resumed_after": run.resumed,
        "activations_simulated": run.acts_simulated,
        "folded_batchnorms": folded, "batchnorms_left": left}
    report["kept_nearest"] = [r["layer"] for r in run.rows if r["rounding"] == "nearest"]
    made = TorchModel(module, model.inputs, model.tokenizer, ref=model.ref)
    return StepResult(made, record=config.model_copy(update={"weight_grid": grid}),
                      report=report)
