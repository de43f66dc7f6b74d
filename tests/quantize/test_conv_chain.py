"""static_int8 on a CNN quantizes what sits between its convolutions, so ONNX Runtime runs the
whole chain in int8 (no float Conv or Add left after its graph optimizations), while a
transformer keeps the matmul-only default."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx
import onnxruntime as ort

from slimkit.data import Dataset
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.techniques.quantize.conv_chain import is_cnn, with_conv_chain
from tests.models import batch
from tests.quantize.test_equalize import tiny_mobilenet


def optimized_ops(path: Path, tmp: Path) -> collections.Counter[str]:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp / "optimized.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(str(tmp / "optimized.onnx")).graph.node)


def test_cnn_runs_in_int8_end_to_end(tmp_path: Path) -> None:
    model = tiny_mobilenet()
    data = Dataset({"image": batch(model.inputs, 64, seed=5)["image"]}, None, "images")
    ops = {}
    for chain in (True, False):
        built = build(model, model_key(model),
                      [parse_step({"static_int8": {"conv_chain": chain, "int8_mode": "u8s8"}})],
                      "onnx", Cache(tmp_path / str(chain)), data=data)
        ops[chain] = optimized_ops(built.path / "model.onnx", built.path.parent)
    assert ops[True]["QLinearConv"] > 0 and ops[True]["QLinearAdd"] > 0
    assert ops[True]["Conv"] == 0 and ops[True]["Add"] == 0
    # without the chain, activations between convolutions go back to float and requantize
    assert ops[False]["DequantizeLinear"] > ops[True]["DequantizeLinear"] + 4


def graph_of(tmp: Path, ops: list[str]) -> Path:
    """A chain of single-input operators, enough for what the check reads: the operator types."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node(op, [f"t{i}"], [f"t{i + 1}"]) for i, op in enumerate(ops)]
    io = [helper.make_tensor_value_info(f"t{k}", TensorProto.FLOAT, [1]) for k in (0, len(ops))]
    path = tmp / "graph.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", io[:1], io[1:])), str(path))
    return path


def test_transformers_keep_the_matmul_default(tmp_path: Path) -> None:
    default = ["MatMul", "Gemm", "Conv"]
    attention = graph_of(tmp_path, ["Conv", "MatMul", "Softmax", "MatMul"])
    assert not is_cnn(attention)
    assert with_conv_chain(attention, default) == default
    cnn = graph_of(tmp_path, ["Conv", "Relu", "Conv"])
    assert is_cnn(cnn)
    assert {"Relu", "Clip", "Add"} <= set(with_conv_chain(cnn, default))
    assert with_conv_chain(cnn, ["MatMul"]) == ["MatMul"]  # no Conv asked for: left alone
