"""AdaRound: learned rounding beats nearest, its weights lie on the quantizer's grid and survive
ONNX Runtime's static int8 unchanged, and an interrupted run resumes after its last layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from slimkit.data import Dataset
from slimkit.model import ModelRef, TorchModel, load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.registry import StepContext, parse_step
from slimkit.techniques.quantize import adaround_fit
from slimkit.techniques.quantize.adaround import AdaRound, adaround_torch
from slimkit.techniques.quantize.fold import fold_batchnorms
from slimkit.techniques.quantize.grid import Grid
from tests.models import applied, trusted

pytestmark = pytest.mark.usefixtures("one_thread")

REF = ModelRef(source="tests.models:tiny_cnn", kwargs={"size": 12})
FAST = {"iterations": 150, "samples": 48, "batch_size": 256}
LAYERS = ["stem.0", "res.0", "head.2"]


def cnn() -> TorchModel:
    model = load_model(REF)
    assert isinstance(model, TorchModel)
    return model


def images(n: int = 48, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)  # pixel-like: positive, so rounding errors add up
    return Dataset({"image": rng.uniform(0, 1, (n, 3, 12, 12)).astype(np.float32)}, None,
                   "images")


def adaround(cache: Path, **options: Any) -> Built:
    model = cnn()
    step = parse_step({"adaround": {**FAST, **options}})
    return build(model, model_key(model), [step], "torch", Cache(cache), data=images())


def weights(model: TorchModel) -> dict[str, torch.Tensor]:
    named = dict(model.module.named_modules())
    return {n: named[n].weight.detach().clone() for n in LAYERS}


@pytest.mark.parametrize("inputs", ["float", "quantized"])
def test_learned_rounding_beats_nearest_and_lies_on_the_grid(inputs: str,
                                                             shared_cache_dir: Path) -> None:
    built = adaround(shared_cache_dir, weight_grid="int8", inputs=inputs)
    report = json.loads((built.path / "report.json").read_text())
    rows = report["layers"]
    assert [r["layer"] for r in rows] == LAYERS
    assert all(r["loss_adaround"] <= r["loss_nearest"] for r in rows)
    assert sum(r["loss_adaround"] for r in rows) < 0.9 * sum(r["loss_nearest"] for r in rows)
    assert report["layers_left_at_nearest"] == [] and report["folded_batchnorms"] == 2
    rounded = weights(built.model)
    for name, w in rounded.items():  # a weight on the grid is its own nearest rounding
        assert torch.equal(Grid(127).nearest(w), w), name
    folded = cnn()
    fold_batchnorms(folded.module)
    assert any(not torch.equal(Grid(127).nearest(w), rounded[n])
               for n, w in weights(folded).items())  # not simply nearest rounding
    again = trusted(built.path)  # rebuilt by folding, then the saved weights
    assert all(torch.equal(weights(again)[n], w) for n, w in rounded.items())


def _int8_weights(path: Path) -> dict[str, np.ndarray]:
    """Each int8 weight of a QDQ model, dequantized, by the torch parameter it came from."""
    graph = onnx.load(str(path)).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    found = {}
    for node in graph.node:
        q = init.get(node.input[0])
        if node.op_type == "DequantizeLinear" and q is not None and q.dtype == np.int8:
            scale = init[node.input[1]].reshape(-1, *[1] * (q.ndim - 1))
            found[node.input[0].removesuffix("_quantized")] = scale * q.astype(np.float32)
    return found


@pytest.mark.parametrize(("grid", "mode"), [("int8", "u8s8"), ("int7", "reduce_range")])
def test_static_int8_keeps_the_rounded_weights(grid: str, mode: str,
                                               shared_cache_dir: Path) -> None:
    torch_built = adaround(shared_cache_dir, weight_grid=grid)
    model = cnn()
    steps = [parse_step({"adaround": {**FAST, "weight_grid": grid}}),
             parse_step({"static_int8": {"int8_mode": mode, "calibration": "minmax"}})]
    onnx_built = build(model, model_key(model), steps, "onnx", Cache(shared_cache_dir),
                       data=images())
    quantized = _int8_weights(onnx_built.path / "model.onnx")
    assert sorted(quantized) == sorted(f"{n}.weight" for n in LAYERS)
    for name, w in weights(torch_built.model).items():
        np.testing.assert_array_equal(quantized[f"{name}.weight"], w.numpy(), err_msg=name)


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_after_its_last_layer(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = AdaRound.model_validate({**FAST, "weight_grid": "int8"})
    real = adaround_fit.learn
    calls: list[int] = []

    def stop_at_second(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise _Interrupt
        return real(*args, **kwargs)

    ctx = StepContext(tmp_path / "work", images(), checkpoints=tmp_path / "checkpoints")
    ctx.workdir.mkdir()
    monkeypatch.setattr(adaround_fit, "learn", stop_at_second)
    with pytest.raises(_Interrupt):
        applied(adaround_torch, cnn(), config, ctx)
    monkeypatch.setattr(adaround_fit, "learn", lambda *a, **k: calls.append(1) or real(*a, **k))
    calls.clear()
    resumed = applied(adaround_torch, cnn(), config, ctx)
    assert len(calls) == 2  # the first layer came from the checkpoint
    report = json.loads((ctx.workdir / "report.json").read_text())
    assert report["resumed_after"] == 1 and len(report["layers"]) == 3
    fresh_ctx = StepContext(tmp_path / "fresh", images())
    fresh_ctx.workdir.mkdir()
    fresh = applied(adaround_torch, cnn(), config, fresh_ctx)
    assert all(torch.equal(weights(resumed)[n], w) for n, w in weights(fresh).items())
    assert not (fresh_ctx.workdir / "adaround-checkpoint").exists()


def test_a_spent_time_budget_leaves_layers_at_nearest(tmp_path: Path) -> None:
    config = AdaRound.model_validate({**FAST, "weight_grid": "int7", "minutes": 1e-9})
    ctx = StepContext(tmp_path, images())
    out = applied(adaround_torch, cnn(), config, ctx)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["out_of_time"] and report["layers_left_at_nearest"] == LAYERS
    assert all(torch.equal(Grid(64).nearest(w), w) for w in weights(out).values())


def _openvino_int8_weights(path: Path) -> list[np.ndarray]:
    """Each int8 weight of an OpenVINO model NNCF quantized, dequantized: an int8 constant
    converted to float and multiplied by its scale."""
    import openvino as ov

    found = []
    for op in ov.Core().read_model(str(path)).get_ops():
        if op.get_type_name() != "Multiply":
            continue
        convert, scale = (i.get_source_output().get_node() for i in op.inputs())
        if convert.get_type_name() != "Convert":
            continue
        const = convert.input(0).get_source_output().get_node()
        if const.get_type_name() == "Constant" and \
                const.get_output_element_type(0).get_type_name() == "i8":
            found.append(const.get_data().astype(np.float32) * scale.get_data())
    return found


def test_nncf_keeps_the_rounded_weights_on_its_own_grid(shared_cache_dir: Path) -> None:
    """NNCF's grid floors small channels' ranges and gives the first convolution a half range;
    there only each channel's extremes are left for NNCF to round."""
    torch_built = adaround(shared_cache_dir, weight_grid="nncf")
    model = cnn()
    steps = [parse_step({"adaround": {**FAST, "weight_grid": "nncf"}}), parse_step("nncf_int8")]
    built = build(model, model_key(model), steps, "openvino", Cache(shared_cache_dir),
                  data=images())
    by_shape = {tuple(w.shape): (n, w) for n, w in weights(torch_built.model).items()}
    quantized = _openvino_int8_weights(built.path / "model.xml")
    assert len(quantized) == len(LAYERS)
    for q in quantized:
        name, w = by_shape[q.shape]
        free = ~Grid(127, floor=True, half_range=name == "stem.0").plan(w).pinned
        np.testing.assert_array_equal(q[free.numpy()], w[free].numpy(), err_msg=name)
