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
from typing import Literal

from pydantic import Field

from slimkit.model import FileModel, Model, TorchModel
from slimkit.registry import StepContext, TechniqueConfig, technique


class DynamicInt8(TechniqueConfig):
    technique: Literal["dynamic_int8"] = "dynamic_int8"
    per_channel: bool = Field(True, description="one weight scale per output channel")
    reduce_range: bool = Field(False, description="7-bit weights, for CPUs without VNNI")
    op_types: list[str] | None = Field(
        None, description="ONNX op types to quantize; default MatMul, Gemm, Attention, LSTM"
    )


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
def dynamic_int8_onnx(model: Model, config: DynamicInt8, ctx: StepContext) -> Model:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    assert isinstance(model, FileModel)
    out = ctx.workdir / "model.onnx"
    with quiet_root_logger():  # it advises pre-processing on every call, via the root logger
        quantize_dynamic(
            model.path,
            out,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=config.op_types or ["MatMul", "Gemm", "Attention", "LSTM"],
        )
    return FileModel("onnx", out, model.inputs, model.tokenizer)


@technique(DynamicInt8, format="torch", targets={"torch"})
def dynamic_int8_torch(model: Model, config: DynamicInt8, ctx: StepContext) -> Model:
    import torch
    from torch.ao.quantization import (
        default_dynamic_qconfig,
        per_channel_dynamic_qconfig,
        quantize_dynamic,
    )

    assert isinstance(model, TorchModel)
    qconfig = per_channel_dynamic_qconfig if config.per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao's quantized tensors warn of their deprecation
        warnings.simplefilter("ignore")
        module = quantize_dynamic(model.module, {torch.nn.Linear: qconfig}, dtype=torch.qint8)
    return TorchModel(module.eval(), model.inputs, model.tokenizer, ref=model.ref,
                      steps=[*model.steps, config])
