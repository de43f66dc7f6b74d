"""Static int8 (QDQ) quantization for ONNX Runtime, with slimkit's calibration.

ONNX Runtime's `quantize_static` does the graph work (QDQ insertion, per-channel weights, the
fusions its CPU kernels want). Its defaults quantize every supported operator, attention-mask
Adds and Softmax included, which collapses BERT-like encoders (mean cosine about 0.3 on MiniLM).
slimkit quantizes only the matmul-like operators with constant weights by default, computes
activation ranges from its own histograms (collected once, shared by every method and by the
accuracy-aware search), and hands the ranges to ONNX Runtime through its calibration cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from slimkit.errors import TechniqueError
from slimkit.model import FileModel, Model
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import SEARCH_BUDGET, Choice, Space
from slimkit.techniques.dynamic_int8 import quiet_root_logger
from slimkit.techniques.quantize.budget import Budget, Fallback
from slimkit.techniques.quantize.calibrate import Method, compute_range
from slimkit.techniques.quantize.conv_chain import with_conv_chain
from slimkit.techniques.quantize.heldout import without
from slimkit.techniques.quantize.layer_groups import expand, layer_groups
from slimkit.techniques.quantize.ort_budget import check_split, quantize_within_budget
from slimkit.techniques.quantize.ort_kernels import (
    Int8Mode,
    mode_report,
    ort_type_options,
    resolve_mode,
)


class StaticInt8(TechniqueConfig):
    technique: Literal["static_int8"] = "static_int8"
    family = "quantization"
    space: ClassVar[Space] = {"calibration": Choice("minmax", "percentile", "entropy", "mse"),
                               "per_channel": Choice(True, False),
                               "budget": Choice(None, SEARCH_BUDGET)}
    # 2: int8_mode chosen by the CPU; 3: a max_drop budget without labels counts the drop
    # against the float model's top-1 (it passed unchecked); 4: a budget must also hold on
    # held-out rows (left out of the ranges too), layers kept in float by error per run time;
    # a CNN's activations, Adds and pooling quantized too (conv_chain); 5: a layer kept in
    # float (by a budget or exclude) keeps the chain operators it feeds in float with it
    version = 5
    always_shown = ("calibration",)
    calibration: Method = Field("percentile", description="range method for activations")
    percentile: float = Field(99.999, gt=50, le=100)
    per_channel: bool = True
    activations: Literal["uint8", "int8"] = "uint8"
    int8_mode: Int8Mode = Field("auto", description="ONNX Runtime operand types: u8s8, "
                                "reduce_range (7-bit weights) or u8u8; auto picks by the CPU")
    op_types: list[str] | None = Field(
        default_factory=lambda: ["MatMul", "Gemm", "Conv"],
        description="operators to quantize; null quantizes all that ONNX Runtime supports")
    const_weights_only: bool = Field(True, description="skip MatMuls of two activations")
    conv_chain: bool = Field(True, description="in a CNN, also quantize the activations, Adds "
                             "and pooling between convolutions (ONNX Runtime then runs the chain "
                             "in int8)")
    exclude: list[str] = Field(default_factory=list, description="node names kept in float "
                               "(a layer with the chain operators that follow it)")
    samples: int = Field(128, gt=0, description="calibration examples used")
    budget: Budget | None = Field(None, description="accuracy-aware: keep layers in float")
    fallback: Fallback = Field("latency", description="budget: keep layers in float by error "
                               "per share of measured run time, or by error alone")

    def needs_data(self) -> bool:
        return True

    @model_validator(mode="after")
    def _u8u8_needs_uint8(self) -> StaticInt8:
        if self.int8_mode == "u8u8" and self.activations != "uint8":
            raise ValueError("int8_mode u8u8 needs activations: uint8")
        return self

    def resolve(self) -> StaticInt8:
        # int8 activations take MLAS's s8s8 path, which has no 16-bit saturation to avoid
        mode = "u8s8" if self.activations == "int8" else resolve_mode(self.int8_mode)
        return self.model_copy(update={"int8_mode": mode})


def quantizable_nodes(path: Path, op_types: list[str] | None, const_only: bool) -> list[str]:
    import onnx

    model = onnx.load(str(path))
    init = {i.name for i in model.graph.initializer}
    consts = init | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    nodes = []
    for n in model.graph.node:
        if op_types is not None and n.op_type not in op_types:
            continue
        if n.op_type == "MatMul" and const_only and n.input[1] not in consts:
            continue
        if n.op_type in ("MatMul", "Gemm", "Conv") or op_types is None:
            nodes.append(n.name)
    return nodes


@technique(StaticInt8, format="onnx", requires_data=True, targets={"onnx"})
def static_int8_onnx(model: Model, config: StaticInt8, ctx: StepContext) -> StepResult:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    from slimkit.techniques.quantize.onnx_stats import collect

    assert isinstance(model, FileModel)
    if ctx.data is None:
        raise TechniqueError("static_int8 needs calibration data")
    split = check_split(ctx.data) if config.budget is not None else None
    # the rows a budget is finally checked on are rows the ranges never saw
    fit = ctx.data if split is None else without(ctx.data, split.heldout)
    calib = fit.head(min(config.samples, len(fit)))
    op_types = config.op_types or _all_ort_ops()
    if config.conv_chain:
        op_types = with_conv_chain(model.path, op_types)
    hists = collect(model.path, calib, op_types, threads=ctx.threads)
    ranges = {n: compute_range(h, config.calibration, percentile=config.percentile)
              for n, h in hists.items()}
    cache = ctx.workdir / "calibration_ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
        n: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
        for n, (lo, hi) in ranges.items()}), cache)
    nodes = quantizable_nodes(model.path, config.op_types, config.const_weights_only)
    # a layer kept in float keeps its part of the chain in float with it
    groups = layer_groups(model.path, nodes, op_types)
    mode = config.resolve().int8_mode

    def quantize(out: Path, only: list[str] | None, exclude: list[str]) -> None:
        with quiet_root_logger():
            ort_quantize_static(
                model.path, out, None, quant_format=QuantFormat.QDQ,
                op_types_to_quantize=op_types, per_channel=config.per_channel,
                activation_type=QuantType.QUInt8 if config.activations == "uint8"
                else QuantType.QInt8,
                **ort_type_options(mode), nodes_to_quantize=expand(groups, only or []),
                nodes_to_exclude=expand(groups, [*config.exclude, *exclude]),
                calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=cache,
                extra_options={"MatMulConstBOnly": config.const_weights_only},
            )
        _drop_orphans(out)

    out = ctx.workdir / "model.onnx"
    report: dict[str, object] = {"calibration": config.calibration, "layers_total": len(nodes),
                                 "kept_float": list(config.exclude), **mode_report(mode)}
    if config.budget is None:
        quantize(out, None, [])
    else:
        report.update(quantize_within_budget(model.path, out, quantize, nodes, config.budget,
                                             ctx.data, ctx.threads, config.fallback, split))
    return StepResult(FileModel("onnx", out, model.inputs, model.tokenizer), report=report)


def _all_ort_ops() -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted(set(QDQRegistry) | set(QLinearOpsRegistry))



def _drop_orphans(path: Path) -> None:
    import onnx

    from slimkit.io import atomic_write_bytes
    from slimkit.techniques.quantize.onnx_graph import drop_dead_nodes

    model = onnx.load(str(path))
    if drop_dead_nodes(model) and model.ByteSize() < 2**31 - 1:
        atomic_write_bytes(path, model.SerializeToString())
