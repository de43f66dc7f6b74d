"""Dynamic int8 quantization: int8 weights, activations quantized per batch at run time.

Needs no calibration data, which makes it the first thing to try on transformer encoders whose
cost sits in Linear / MatMul layers. ONNX goes through onnxruntime's own quantizer; torch through
`torch.ao.quantization.quantize_dynamic`, both per output channel by default.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import FileModel, Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import SEARCH_BUDGET, Choice, Space
from slimkit.techniques.quantize.budget import Budget, Fallback
from slimkit.techniques.quantize.ort_kernels import (
    Int8Mode,
    mode_report,
    ort_type_options,
    resolve_mode,
)

# Gather quantizes embedding tables: on MiniLM a quarter of the size instead of two thirds, at
# the same fidelity and speed.
DEFAULT_OP_TYPES = ["MatMul", "Gemm", "Attention", "LSTM", "Gather"]


class DynamicInt8(TechniqueConfig):
    technique: Literal["dynamic_int8"] = "dynamic_int8"
    family = "quantization"
    space: ClassVar[Space] = {"per_channel": Choice(True, False),
                               "budget": Choice(None, SEARCH_BUDGET)}
    # 2: Gather in the default operator types; 3: int8_mode chosen by the CPU; 4: a max_drop
    # budget without labels counts the drop against the float model's top-1 (it passed
    # unchecked); 5: a budget must also hold on held-out rows, layers kept in float by error
    # per share of run time
    version = 5
    per_channel: bool = Field(True, description="one weight scale per output channel")
    int8_mode: Int8Mode = Field("auto", description="ONNX Runtime operand types: u8s8, "
                                "reduce_range (7-bit weights) or u8u8; auto picks by the CPU")
    op_types: list[str] | None = Field(
        None, description="ONNX op types to quantize; default MatMul, Gemm, Attention, LSTM, "
                          "Gather (embedding tables)")
    exclude: list[str] = Field(default_factory=list, description="ONNX node names kept float")
    budget: Budget | None = Field(None, description="accuracy-aware: keep layers in float "
                                                    "(ONNX Runtime; needs calibration data)")
    fallback: Fallback = Field("latency", description="budget: keep layers in float by error "
                               "per share of measured run time, or by error alone")

    def needs_data(self) -> bool:
        return self.budget is not None

    def resolve(self) -> DynamicInt8:
        return self.model_copy(update={"int8_mode": resolve_mode(self.int8_mode)})


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


@technique(DynamicInt8, format="onnx", targets={"onnx"})
def dynamic_int8_onnx(model: Model, config: DynamicInt8, ctx: StepContext) -> StepResult:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    from slimkit.techniques.quantize.onnx_graph import gemm_to_matmul
    from slimkit.techniques.quantize.ort_budget import quantize_within_budget

    assert isinstance(model, FileModel)
    op_types = config.op_types or DEFAULT_OP_TYPES
    # ORT's dynamic mode turns Gemm into MatMul + Add under new names, so node names given to
    # it (exclude, the budget search) would miss; rewrite first, then names stay stable.
    source = ctx.workdir / "source.onnx"
    onnx.save(gemm_to_matmul(onnx.load(str(model.path))), str(source))

    def quantize(out: Path, only: list[str] | None, exclude: list[str]) -> None:
        with quiet_root_logger():  # it advises pre-processing on every call, via the root logger
            quantize_dynamic(
                source, out, per_channel=config.per_channel,
                **ort_type_options(resolve_mode(config.int8_mode)),
                op_types_to_quantize=op_types, nodes_to_quantize=only or [],
                nodes_to_exclude=[*config.exclude, *exclude],
                # fused contrib operators (Attention, SkipLayerNorm) defeat its type inference
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )

    out = ctx.workdir / "model.onnx"
    report: dict[str, object] = mode_report(resolve_mode(config.int8_mode))
    try:
        if config.budget is None:
            quantize(out, None, [])
            return StepResult(FileModel("onnx", out, model.inputs, model.tokenizer),
                              report=report)
        if ctx.data is None:
            raise TechniqueError("dynamic_int8 with a budget needs calibration data")
        proto = onnx.load(str(source), load_external_data=False)
        nodes = [n.name for n in proto.graph.node if n.op_type in op_types
                 and n.name not in config.exclude]
        report.update(quantize_within_budget(source, out, quantize, nodes, config.budget,
                                             ctx.data, ctx.threads, config.fallback))
    finally:
        source.unlink()
    return StepResult(FileModel("onnx", out, model.inputs, model.tokenizer), report=report)


@technique(DynamicInt8, format="torch", targets={"torch"})
def dynamic_int8_torch(model: Model, config: DynamicInt8, ctx: StepContext) -> Model:
    import torch
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    assert isinstance(model, TorchModel)
    if config.budget is not None or config.exclude:
        raise TechniqueError("dynamic_int8: budget and exclude work on ONNX Runtime only")
    qconfig = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao's quantized tensors warn of their deprecation
        warnings.simplefilter("ignore")
        module = quantize_dynamic(model.module, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
    return TorchModel(module.eval(), model.inputs, model.tokenizer, ref=model.ref)
