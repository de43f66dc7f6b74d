"""TensorRT without a GPU: the runtime refuses in one line, before anything is built. The
engine paths themselves need an NVIDIA GPU and run only on one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from slimkit.errors import TechniqueError
from slimkit.machine import capabilities
from slimkit.model import load_onnx
from slimkit.runtimes import get_runtime, runtime_format
from slimkit.runtimes.tensorrt import check_qdq


def _qdq(path: Path, zero: np.ndarray) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(zero, "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q_x"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_tensorrt_runs_onnx_and_refuses_without_cuda(tmp_path: Path) -> None:
    assert runtime_format("tensorrt") == "onnx"
    if capabilities().cuda:
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    model = load_onnx(_qdq(tmp_path / "m.onnx", np.array(0, np.int8)))
    with pytest.raises(TechniqueError, match="needs an NVIDIA GPU") as e:
        get_runtime("tensorrt").load(model)
    assert "\n" not in str(e.value)
    assert get_runtime("tensorrt").describe()["runtime"] == "tensorrt"


def test_asymmetric_qdq_is_refused_by_name(tmp_path: Path) -> None:
    check_qdq(_qdq(tmp_path / "sym.onnx", np.array(0, np.int8)))
    with pytest.raises(TechniqueError, match="q_x quantizes to uint8"):
        check_qdq(_qdq(tmp_path / "asym.onnx", np.array(128, np.uint8)))
