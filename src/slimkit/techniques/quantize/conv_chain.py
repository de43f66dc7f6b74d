"""Which operators a CNN needs quantized so ONNX Runtime runs its convolutions in int8.

With only Conv in the operator list, every ReLU6 (Clip), residual Add and pooling between two
convolutions runs in float, each between a DequantizeLinear and a QuantizeLinear: on MobileNetV2
that left 36 dequantize/quantize pairs and the int8 model barely faster than fp32 on ONNX Runtime
(1.2x, against 2.2x with the chain quantized; AMD EPYC, 2 threads). Quantizing the
activations, Adds and pooling between convolutions keeps the chain int8 end to end (QLinearAdd,
QLinearGlobalAveragePool), which is how CNNs are meant to be quantized.
Transformers keep the matmul-only default: their Adds carry attention masks and residual
streams that int8 ruins.
"""

from __future__ import annotations

from pathlib import Path

# Operators ONNX Runtime can run in int8 that sit between a CNN's convolutions
CONV_NEIGHBOURS = ("Relu", "Clip", "Add", "Mul", "Sigmoid", "MaxPool", "AveragePool",
                   "GlobalAveragePool", "Concat", "Flatten", "Reshape", "Resize", "Pad")
ATTENTION = {"Softmax", "Attention", "MultiHeadAttention", "ScaledDotProductAttention"}


def is_cnn(path: Path) -> bool:
    """A graph with convolutions and nothing that looks like attention."""
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return "Conv" in ops and not ops & ATTENTION


def with_conv_chain(path: Path, op_types: list[str]) -> list[str]:
    """`op_types`, plus the operators between convolutions when the model is a CNN and the
    list quantizes convolutions."""
    if "Conv" not in op_types or not is_cnn(path):
        return op_types
    return [*op_types, *(op for op in CONV_NEIGHBOURS if op not in op_types)]
