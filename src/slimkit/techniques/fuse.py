"""Operator fusion for transformer encoders on ONNX Runtime.

ONNX Runtime's transformer optimizer rewrites the exported graph into its fused contrib
operators (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization), which its CPU
kernels run in one pass each and which its int8 quantizers know how to quantize (QAttention).
"""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from slimkit.model import FileModel, Model
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique


class FuseTransformer(TechniqueConfig):
    technique: Literal["fuse_transformer"] = "fuse_transformer"
    family = "fusion"
    model_type: Literal["bert", "gpt2", "t5", "vit", "clip"] = "bert"
    num_heads: int = Field(0, ge=0, description="0 detects it from the graph")
    hidden_size: int = Field(0, ge=0, description="0 detects it from the graph")


@technique(FuseTransformer, format="onnx", targets={"onnx"})
def fuse_transformer(model: Model, config: FuseTransformer, ctx: StepContext) -> StepResult:
    from onnxruntime.transformers.optimizer import optimize_model

    assert isinstance(model, FileModel)
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    opt = optimize_model(str(model.path), model_type=config.model_type,
                         num_heads=config.num_heads, hidden_size=config.hidden_size)
    out = ctx.workdir / "model.onnx"
    opt.save_model_to_file(str(out))
    fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    return StepResult(FileModel("onnx", out, model.inputs, model.tokenizer),
                      report={"fused_operators": fused})
