"""Quantization-aware training: BN folding is exact, training recovers what low-bit PTQ lost,
and the exported model carries int8 weights and QDQ that the runtimes execute."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from slimkit.data import Dataset
from slimkit.examples import digits
from slimkit.model import TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import RuntimeOptions, get_runtime
from slimkit.techniques.quantize.fold import fold_batchnorms
from tests.models import batch, trusted


def cnn() -> TorchModel:
    model = load_model("tests.models:tiny_cnn")
    assert isinstance(model, TorchModel)
    return model


def test_folding_batchnorm_changes_no_output() -> None:
    model = cnn()
    x = torch.from_numpy(batch(model.inputs, 4)["image"])
    folded = copy.deepcopy(model.module)
    assert fold_batchnorms(folded) >= 2
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model.module(x), rtol=1e-4, atol=1e-5)


def accuracy(built_path: Path, runtime: str, data: Dataset) -> float:
    session = get_runtime(runtime, RuntimeOptions(threads=1)).load(trusted(built_path))
    out = session.run(data.inputs)[0]
    return float((out.argmax(1) == data.labels).mean())


@pytest.fixture(scope="module")
def qat_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2-bit weights on the digits CNN: before training (epochs 0 is the calibrated PTQ that
    QAT starts from) and after three epochs."""
    model = load_model("slimkit.examples.digits:load_model")
    train, cache = digits.load_data("train"), Cache(tmp_path_factory.mktemp("qat"))
    built = {}
    for name, step in [("ptq", {"qat": {"weight_bits": 2, "epochs": 0}}),
                       ("qat", {"qat": {"weight_bits": 2, "epochs": 3, "lr": 3e-4}})]:
        for runtime, fmt in [("onnxruntime", "onnx"), ("torch", "torch")]:
            built[f"{name}-{runtime}"] = build(model, model_key(model), [parse_step(step)], fmt,
                                               cache, data=train).path
    built["float"] = build(model, model_key(model), [], "onnx", cache).path
    return built


@pytest.mark.slow
def test_training_recovers_what_2bit_ptq_lost(qat_runs: dict[str, Path]) -> None:
    test = digits.load_data("test")
    base = accuracy(qat_runs["float"], "onnxruntime", test)
    ptq = accuracy(qat_runs["ptq-onnxruntime"], "onnxruntime", test)
    qat = accuracy(qat_runs["qat-onnxruntime"], "onnxruntime", test)
    assert base - ptq > 0.05, "2-bit weights should cost something before training"
    assert base - qat <= (base - ptq) / 2, f"QAT {qat:.3f} vs PTQ {ptq:.3f}, float {base:.3f}"


def test_exported_weights_are_int8_on_their_2bit_grid(qat_runs: dict[str, Path]) -> None:
    graph = onnx.load(str(qat_runs["qat-onnxruntime"] / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = [inits[n.input[0]] for n in graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weights) == 5  # four convolutions and the classifier
    for w in weights:
        assert w.dtype == np.int8
        assert w.min() >= -2 and w.max() <= 1  # 2-bit signed values stored in int8


def test_torch_and_onnxruntime_agree_and_reload(qat_runs: dict[str, Path]) -> None:
    test = digits.load_data("test")
    t = get_runtime("torch").load(trusted(qat_runs["qat-torch"])).run(test.inputs)[0]
    o = get_runtime("onnxruntime").load(trusted(qat_runs["qat-onnxruntime"])).run(
        test.inputs)[0]
    assert (t.argmax(1) == o.argmax(1)).mean() >= 0.95
    np.testing.assert_allclose(t, o, atol=0.1 * np.abs(t).max())
