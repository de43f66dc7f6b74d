"""Quantization-aware training on the torch model, exported as QDQ for the runtimes.

BatchNorm is folded, every Conv2d / Linear gets fake quantizers initialised from post-training
calibration (per-channel weight scales by least squared error, activation ranges by slimkit's
MSE calibrator on the calibration data), then the network fine-tunes through them: with labels
on the task loss, without labels by distilling the float model's outputs. With `epochs: 0` it is
exactly the post-training quantization it starts from, which is what QAT is measured against.
"""

from __future__ import annotations

import copy
from typing import Literal

from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, TechniqueConfig, technique


class QAT(TechniqueConfig):
    technique: Literal["qat"] = "qat"
    family = "quantization"
    # 2: layer outputs quantized too; 3: weight scales per layer width; 4: activation
    # histograms streamed in one pass; 5: without labels, the float model's outputs are
    # computed once before training (in other batches, so they may round differently)
    version = 5
    always_shown = ("weight_bits", "epochs")
    weight_bits: int = Field(8, ge=2, le=8)
    activation_bits: Literal[8] | None = Field(8, description="None: weight-only")
    epochs: int = Field(3, ge=0)
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, gt=0)
    learn_scales: bool = Field(True, description="LSQ: step sizes learn from the loss")
    distill: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: labels when the data has them, else the float model")
    seed: int = 0

    def needs_data(self) -> bool:
        return True


def structure(model: TorchModel, config: QAT,
              bits: dict[str, int] | None = None) -> tuple[TorchModel, list]:
    from slimkit.techniques.quantize.fake_quant import wrap_layers
    from slimkit.techniques.quantize.fold import fold_batchnorms

    module = model.module
    fold_batchnorms(module)
    layers = wrap_layers(module, config.weight_bits, config.activation_bits, config.learn_scales,
                         bits)
    return TorchModel(module.eval(), model.inputs, model.tokenizer, ref=model.ref), layers


def rebuild_qat(model: Model, config: QAT, ctx: StepContext) -> Model:
    assert isinstance(model, TorchModel)
    return structure(model, config)[0]


@technique(QAT, format="torch", requires_data=True, rebuild=rebuild_qat)
def qat_torch(model: Model, config: QAT, ctx: StepContext,
              bits: dict[str, int] | None = None) -> Model:
    import torch

    assert isinstance(model, TorchModel)
    if ctx.data is None:
        raise TechniqueError("qat needs training data (the recipe's calibration data)")
    torch.manual_seed(config.seed)
    teacher = copy.deepcopy(model.module).eval()
    qmodel, layers = structure(model, config, bits)
    names = [i.name for i in model.inputs]
    _calibrate(qmodel.module, layers, ctx, names, config)
    if config.epochs:
        _train(qmodel.module, teacher, ctx, names, config)
    for q in layers:
        q.finalize()
    qmodel.module.eval()
    return qmodel


def _calibrate(module: object, layers: list, ctx: StepContext, names: list[str],
               config: QAT) -> None:
    """Initial scales: weights per channel by least squared error; input and output ranges by
    MSE on histograms of the float network's activations, streamed in one pass."""
    import torch

    from slimkit.observe import HistogramObserver, Request, collect
    from slimkit.techniques.quantize.calibrate import mse_range
    from slimkit.techniques.quantize.primitives import affine_params, qrange

    assert ctx.data is not None
    for q in layers:
        _, qmax = qrange(q.weight_quant.bits, True)  # each layer's own width
        w = q.layer.weight.detach().reshape(q.layer.weight.shape[0], -1)
        amax = w.abs().amax(1).clamp_min(1e-8)
        best, best_err = amax / qmax, None
        for frac in torch.linspace(1.0, 0.5, 26):
            s = (amax * frac / qmax)[:, None]
            err = ((torch.clamp(torch.round(w / s), -qmax - 1, qmax) * s - w) ** 2).sum(1)
            if best_err is None:
                best_err = err
            better = err < best_err
            best = torch.where(better, (amax * frac / qmax), best)
            best_err = torch.minimum(err, best_err)
        q.weight_quant.init(best)
    if config.activation_bits is None:
        return
    by_id = {id(m): n for n, m in module.named_modules()}  # type: ignore[attr-defined]
    tags = [by_id[id(q)] for q in layers]
    ask = {"histogram": HistogramObserver}
    saved = [(q.input_quant, q.output_quant) for q in layers]
    for q in layers:  # observe the float network
        q.input_quant = q.output_quant = None
    try:
        stats = collect(module, ctx.data.head(min(len(ctx.data), 512)), names,
                        [Request(tags, ask, "input"), Request(tags, ask, "output")],
                        batch_size=config.batch_size)
    finally:
        for q, (iq, oq) in zip(layers, saved, strict=True):
            q.input_quant, q.output_quant = iq, oq
    for tag, q in zip(tags, layers, strict=True):
        for side, fq in (("input", q.input_quant), ("output", q.output_quant)):
            observed = stats[tag].side(side)["histogram"]
            assert isinstance(observed, HistogramObserver)
            lo, hi = mse_range(observed.histogram(), 8, symmetric=False)
            scale, zero = affine_params(lo, hi, 8, symmetric=False, signed=False)
            fq.init(torch.tensor(scale).float(), torch.tensor(zero))


def _train(module: object, teacher: object, ctx: StepContext, names: list[str],
           config: QAT) -> None:
    """Through the shared recovery entry: cross entropy on class labels, or the distance to
    the float model's outputs (computed once, before training)."""
    from slimkit.data import Dataset
    from slimkit.train import TrainSettings
    from slimkit.train.outputs import label_tensor
    from slimkit.train.recover import Objective, recover

    assert ctx.data is not None
    data = ctx.data
    has_labels = label_tensor(data.labels) is not None
    if config.distill == "never" and not has_labels:
        raise TechniqueError("qat: distill is 'never' but the data has no labels")
    use_labels = has_labels and config.distill != "always"
    train = Dataset({n: data.inputs[n] for n in names}, data.labels if use_labels else None,
                    data.name)
    settings = TrainSettings(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                             seed=config.seed, checkpoint_dir=ctx.checkpoints)
    recover(module, teacher, train,  # type: ignore[arg-type]
            Objective(loss="labels" if use_labels else "mse"), settings,
            title="quantization-aware training", owner="qat")
