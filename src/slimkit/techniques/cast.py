"""Cast weights and compute to fp16 or bf16.

On torch the module is cast and wrapped so callers keep feeding and receiving float32. On ONNX
the graph is converted with onnxruntime's float16 converter, inputs and outputs kept float32.
On OpenVINO the IR stores fp16 weights and the CPU plugin is told which precision to compute in.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from slimkit.errors import TechniqueError
from slimkit.model import FileModel, Model, TorchModel
from slimkit.registry import StepContext, TechniqueConfig, technique
from slimkit.space import Choice, Space


class Cast(TechniqueConfig):
    technique: Literal["cast"] = "cast"
    space: ClassVar[Space] = {"dtype": Choice("bf16", "fp16")}
    always_shown = ("dtype",)
    dtype: Literal["fp16", "bf16"] = "bf16"


@technique(Cast, format="torch")
def cast_torch(model: Model, config: Cast, ctx: StepContext) -> Model:
    import torch

    from slimkit.techniques.wrappers import CastIO

    assert isinstance(model, TorchModel)
    if any(".quantized" in type(m).__module__ for m in model.module.modules()):
        raise TechniqueError("cast: the model has quantized layers; cast before quantizing")
    dtype = torch.bfloat16 if config.dtype == "bf16" else torch.float16
    module = CastIO(model.module, dtype)
    return TorchModel(module.eval(), model.inputs, model.tokenizer, ref=model.ref)


@technique(Cast, format="onnx")
def cast_onnx(model: Model, config: Cast, ctx: StepContext) -> Model:
    if config.dtype == "bf16":
        raise TechniqueError("cast bf16: ONNX Runtime's CPU provider has no bf16 kernels for most "
                             "operators; use dtype fp16 or the openvino/torch runtime")
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    assert isinstance(model, FileModel)
    proto = onnx.load(str(model.path))
    half = convert_float_to_float16(proto, keep_io_types=True, disable_shape_infer=False)
    out = ctx.workdir / "model.onnx"
    onnx.save(half, str(out))
    return FileModel("onnx", out, model.inputs, model.tokenizer)


@technique(Cast, format="openvino")
def cast_openvino(model: Model, config: Cast, ctx: StepContext) -> Model:
    import openvino as ov

    assert isinstance(model, FileModel)
    ir = ov.Core().read_model(str(model.path))
    out = ctx.workdir / "model.xml"
    ov.save_model(ir, str(out), compress_to_fp16=True)
    precision = "bf16" if config.dtype == "bf16" else "f16"
    return FileModel("openvino", out, model.inputs, model.tokenizer,
                     {**model.session_options, "inference_precision": precision})
