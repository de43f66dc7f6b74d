"""OpenVINO quantization through NNCF, the quantizer OpenVINO's makers support.

`nncf_int8` is NNCF's post-training quantization (its transformer mode keeps the
LayerNorm/Softmax paths in float and applies SmoothQuant); with a budget it becomes NNCF's
accuracy-controlled quantization, which reverts the layers that cost most back to float.
`weight_compress` stores MatMul weights in int8/int4 while activations stay float, for size
first and for speed where the model is memory-bound.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import numpy as np
from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import FileModel, Model
from slimkit.registry import StepContext, TechniqueConfig, technique
from slimkit.techniques.quantize.budget import Budget, measure

ATTENTION_OPS = {"Softmax", "ScaledDotProductAttention"}


class NncfInt8(TechniqueConfig):
    technique: Literal["nncf_int8"] = "nncf_int8"
    version = 2  # 2: attention read as ScaledDotProductAttention also selects transformer mode
    transformer: bool | None = Field(None, description="NNCF's transformer mode; None detects "
                                                       "it from attention in the graph")
    preset: Literal["performance", "mixed"] | None = None
    samples: int = Field(300, gt=0, description="calibration examples")
    fast_bias_correction: bool = True
    smooth_quant_alpha: float | None = Field(None, description="None keeps NNCF's default")
    budget: Budget | None = Field(None, description="accuracy control on the calibration data")


class WeightCompress(TechniqueConfig):
    technique: Literal["weight_compress"] = "weight_compress"
    always_shown = ("mode",)
    mode: Literal["int8_sym", "int8_asym", "int4_sym", "int4_asym", "nf4"] = "int4_sym"
    group_size: int | None = Field(128, description="int4/nf4 group size; None per channel")
    ratio: float = Field(1.0, gt=0, le=1, description="share of layers in 4 bit, rest int8")
    all_layers: bool = Field(False, description="also compress embeddings and the last layer")


def _nncf() -> Any:
    logging.getLogger("nncf").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nncf
    return nncf


def _feeds(ctx: StepContext, n: int, names: list[str]) -> list[dict[str, np.ndarray]]:
    if ctx.data is None:
        raise TechniqueError("needs calibration data")
    data = ctx.data.head(min(n, len(ctx.data)))
    return [{k: data.inputs[k][i : i + 1] for k in names} for i in range(len(data))]


@technique(NncfInt8, format="openvino", requires_data=True, targets={"openvino"})
def nncf_int8(model: Model, config: NncfInt8, ctx: StepContext) -> Model:
    import openvino as ov

    nncf = _nncf()
    assert isinstance(model, FileModel)
    ir = ov.Core().read_model(str(model.path))
    names = [p.get_any_name() for p in ir.inputs]
    calib = nncf.Dataset(_feeds(ctx, config.samples, names))
    transformer = config.transformer
    if transformer is None:  # OpenVINO fuses attention on reading, so look for both forms
        transformer = any(op.get_type_name() in ATTENTION_OPS for op in ir.get_ops())
    kwargs: dict[str, Any] = {"subset_size": config.samples,
                              "fast_bias_correction": config.fast_bias_correction}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if config.preset:
        kwargs["preset"] = getattr(nncf.QuantizationPreset, config.preset.upper())
    if config.smooth_quant_alpha is not None:
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(
            smooth_quant_alpha=config.smooth_quant_alpha)
    if config.budget is None:
        quantized = nncf.quantize(ir, calib, **kwargs)
    else:
        quantized = _with_accuracy_control(nncf, ir, calib, config.budget, ctx, names, kwargs)
    out = ctx.workdir / "model.xml"
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return FileModel("openvino", out, model.inputs, model.tokenizer, dict(model.session_options))


def _with_accuracy_control(nncf: Any, ir: Any, calib: Any, budget: Budget, ctx: StepContext,
                           names: list[str], kwargs: dict[str, Any]) -> Any:
    """NNCF reverts layers to float until `validation_fn` is within `max_drop` of the float
    model; slimkit's score is the cosine to the float model's outputs, or accuracy."""
    import openvino as ov

    assert ctx.data is not None
    n = min(len(ctx.data), 256)
    val = ctx.data.head(n)
    batches = [val.slice(i, i + 32) for i in range(0, n, 32)]
    float_model = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    reference = np.concatenate([float_model(b)[0] for b in batches])

    def validate(compiled: Any, items: Any) -> float:
        out = np.concatenate([compiled(b)[0] for b in items])
        q = measure(out, reference, val.labels)
        return -(q.accuracy_drop or 0.0) if budget.max_drop is not None else q.cosine

    max_drop = budget.max_drop if budget.max_drop is not None else 1.0 - (budget.min_cosine or 0)
    return nncf.quantize_with_accuracy_control(
        ir, calib, nncf.Dataset(batches), validate, max_drop=max_drop, **kwargs)


@technique(WeightCompress, format="openvino", targets={"openvino"})
def weight_compress_openvino(model: Model, config: WeightCompress, ctx: StepContext) -> Model:
    import openvino as ov

    nncf = _nncf()
    assert isinstance(model, FileModel)
    ir = ov.Core().read_model(str(model.path))
    kwargs: dict[str, Any] = {"mode": getattr(nncf.CompressWeightsMode, config.mode.upper())}
    if config.mode not in ("int8_sym", "int8_asym"):
        kwargs.update(group_size=config.group_size or -1, ratio=config.ratio,
                      all_layers=config.all_layers)
    compressed = nncf.compress_weights(ir, **kwargs)
    out = ctx.workdir / "model.xml"
    ov.save_model(compressed, str(out), compress_to_fp16=False)
    return FileModel("openvino", out, model.inputs, model.tokenizer, dict(model.session_options))
