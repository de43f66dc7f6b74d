"""Weight-only 4-bit quantization for ONNX Runtime (MatMulNBits).

Weights are stored in blocks of `group_size` 4-bit values with one scale each; activations stay
float. ONNX Runtime's own quantizer writes the MatMulNBits operators its CPU kernels run.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from slimkit.model import FileModel, Model
from slimkit.registry import StepContext, TechniqueConfig, technique
from slimkit.space import Choice, Space
from slimkit.techniques.dynamic_int8 import quiet_root_logger
from slimkit.techniques.quantize.onnx_graph import gemm_to_matmul


class WeightOnlyInt4(TechniqueConfig):
    technique: Literal["weight_only_int4"] = "weight_only_int4"
    family = "quantization"
    space: ClassVar[Space] = {"group_size": Choice(32, 64, 128)}
    always_shown = ("mode", "group_size")
    mode: Literal["int4_sym", "int4_asym"] = "int4_sym"
    # The quantizer pads every weight to whole blocks, so a huge block is a huge allocation.
    group_size: int = Field(32, ge=16, le=4096, description="a power of two, 16 to 4096")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        4, description="MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8")

    @field_validator("group_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        # MatMulNBits defines blocks of a power of two, at least 16 (ONNX Runtime asserts it).
        if v & (v - 1):
            raise ValueError(f"{v} is not a power of two (16, 32, 64, 128, ...)")
        return v


@technique(WeightOnlyInt4, format="onnx", targets={"onnx"})
def weight_only_int4_onnx(model: Model, config: WeightOnlyInt4, ctx: StepContext) -> Model:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    assert isinstance(model, FileModel)
    proto = gemm_to_matmul(onnx.load(str(model.path)))
    quant = MatMulNBitsQuantizer(proto, bits=4, block_size=config.group_size,
                                 is_symmetric=config.mode == "int4_sym",
                                 accuracy_level=config.accuracy_level or None)
    with quiet_root_logger():
        quant.process()
    out = ctx.workdir / "model.onnx"
    quant.model.save_model_to_file(str(out), False)
    return FileModel("onnx", out, model.inputs, model.tokenizer)

