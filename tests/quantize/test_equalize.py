"""Cross-layer equalization keeps the float function of a MobileNetV2-like CNN, evens out the
per-channel ranges of paired layers, leaves layers with a second consumer alone, exports to
ONNX (ChannelClip included) and runs the same in ONNX Runtime and OpenVINO."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.model import InputSpec, ModelRef, TorchModel, load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import RuntimeOptions, get_runtime
from slimkit.techniques.quantize.equalize_pairs import ChannelClip
from slimkit.techniques.quantize.fold import fold_batchnorms
from tests.models import batch, eager, sqnr, trusted


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
            act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(cout)]
    return [*layers, nn.ReLU6()] if act else layers


class InvertedResidual(nn.Module):
    """Expand 1x1, depthwise 3x3, project 1x1; the input is added back where shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(nn.Sequential(*conv_bn(cin, hidden, 1)),
                                  nn.Sequential(*conv_bn(hidden, hidden, 3, stride, hidden)),
                                  *conv_bn(hidden, cout, 1, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class TinyMobileNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(3, 8, 3, stride=2))
        self.blocks = nn.Sequential(InvertedResidual(8, 8, 1, 4), InvertedResidual(8, 16, 2, 4))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 32),
                                  nn.ReLU(), nn.Linear(32, 5))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(image)))


def tiny_mobilenet(seed: int = 0) -> TorchModel:
    """BatchNorm scales spread over orders of magnitude, as after training a MobileNetV2;
    running statistics measured on random images, so BatchNorm's beta and gamma really are
    the mean and spread of each pre-activation (what high-bias absorption assumes)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = TinyMobileNet()
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.weight.data.copy_(torch.exp(torch.randn(m.num_features, generator=gen) * 1.5))
        m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 2)
        m.momentum = None  # a plain average over the batches below
    module.train()
    with torch.no_grad():
        for _ in range(4):
            module(torch.randn(32, 3, 16, 16, generator=gen))
    inputs = [InputSpec(name="image", dtype="float32", shape=["batch", 3, 16, 16])]
    return TorchModel(module.eval(), inputs)


REF = ModelRef(source="tests.quantize.test_equalize:tiny_mobilenet")


def mobilenet() -> TorchModel:
    model = load_model(REF)
    assert isinstance(model, TorchModel)
    return model


def equalized(model: TorchModel, cache: Path, target: str = "torch",
              **options: Any) -> tuple[Built, dict[str, Any]]:
    built = build(model, model_key(model), [parse_step({"equalize": options})], target,
                  Cache(cache))
    report = Cache(cache).path(built.steps[0].key) / "report.json"  # beside the torch step
    return built, json.loads(report.read_text())


def max_error(out: np.ndarray, ref: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest output."""
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def test_float_function_is_kept_and_the_step_rebuilds(tmp_path: Path) -> None:
    model = mobilenet()
    x = batch(model.inputs, 16)["image"]
    ref = eager(model, x)
    built, report = equalized(model, tmp_path)
    assert report["pairs_found_by"] == "torch.fx"
    assert report["folded_batchnorms"] == 7
    assert report["converged"] and report["exact"]
    assert [(r["layer1"], r["layer2"], r["activation"]) for r in report["layers"]] == [
        ("blocks.0.conv.0.0", "blocks.0.conv.1.0", "relu6 as clip"),
        ("blocks.0.conv.1.0", "blocks.0.conv.2", "relu6 as clip"),
        ("blocks.1.conv.0.0", "blocks.1.conv.1.0", "relu6 as clip"),
        ("blocks.1.conv.1.0", "blocks.1.conv.2", "relu6 as clip"),
        ("head.2", "head.4", "relu")]
    out = get_runtime("torch").load(built.model).run({"image": x})[0]
    assert max_error(out, ref) < 1e-5
    reloaded = trusted(built.path)  # the structure rebuilt from the record, then the weights
    assert isinstance(reloaded.module.blocks[0].conv[0][2], ChannelClip)
    assert max_error(eager(reloaded, x), ref) < 1e-5


def test_paired_ranges_come_closer(tmp_path: Path) -> None:
    _, report = equalized(mobilenet(), tmp_path)
    convs, (head,) = report["layers"][:-1], report["layers"][-1:]
    for row in convs:  # BatchNorm folded in: ranges hundreds of times apart, then a few
        assert row["range_spread_before"] > 100, row
        assert row["range_spread_after"] < row["range_spread_before"] / 50, row
    # The head's Linear layers start out even; equalizing leaves them about as they were.
    assert head["range_spread_after"] < 1.5 * head["range_spread_before"]


def test_a_layer_with_a_second_consumer_is_not_scaled(tmp_path: Path) -> None:
    model = mobilenet()
    folded = copy.deepcopy(model.module)
    fold_batchnorms(folded)
    built, report = equalized(model, tmp_path)
    assert all(r["layer1"] != "stem.0" for r in report["layers"])  # it feeds the residual too
    assert all(r["layer1"] != "blocks.0.conv.2" for r in report["layers"])  # feeds the add
    module = built.model.module
    assert torch.equal(module.stem[0].weight, folded.stem[0].weight)
    assert torch.equal(module.stem[0].bias, folded.stem[0].bias)
    assert isinstance(module.stem[2], nn.ReLU6)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_model_matches_torch(runtime: str, tmp_path: Path) -> None:
    model = mobilenet()
    x = batch(model.inputs, 8, seed=3)["image"]
    ref = eager(model, x)
    target = "onnx" if runtime == "onnxruntime" else "openvino"
    built, _ = equalized(model, tmp_path, target)
    session = get_runtime(runtime, RuntimeOptions(threads=1)).load(trusted(built.path))
    assert max_error(session.run({"image": x})[0], ref) < 1e-5
    if target == "onnx":  # each ChannelClip is a Relu, then a Min against a constant
        ops = [n.op_type for n in onnx.load(str(built.path / "model.onnx")).graph.node]
        assert ops.count("Min") == 4


def test_equalizing_helps_per_tensor_int8(tmp_path: Path) -> None:
    model = mobilenet()
    data = Dataset({"image": batch(model.inputs, 128, seed=5)["image"]}, None, "images")
    x = batch(model.inputs, 64, seed=9)["image"]
    ref = eager(model, x)

    def int8_sqnr(steps: list[Any]) -> float:
        int8 = {"static_int8": {"calibration": "minmax", "per_channel": False}}
        built = build(model, model_key(model), [parse_step(s) for s in [*steps, int8]], "onnx",
                      Cache(tmp_path), data=data)
        session = get_runtime("onnxruntime", RuntimeOptions(threads=1)).load(trusted(built.path))
        return sqnr(ref, session.run({"image": x})[0])

    assert int8_sqnr(["equalize"]) > int8_sqnr([]) + 5  # dB; measured 11.8 against 3.0


def test_relu_instead_of_relu6_is_not_exact_and_says_so(tmp_path: Path) -> None:
    model = mobilenet()
    x = batch(model.inputs, 16)["image"]
    ref = eager(model, x)
    built, report = equalized(model, tmp_path, relu6="relu")
    assert not report["exact"] and "changed" in report["note"]
    assert report["layers"][0]["activation"] == "relu6 as relu"
    assert isinstance(built.model.module.blocks[0].conv[0][2], nn.ReLU)
    assert max_error(eager(built.model, x), ref) > 1e-3


def test_bias_absorption_is_close_and_reported(tmp_path: Path) -> None:
    model = mobilenet()
    x = batch(model.inputs, 16)["image"]
    ref = eager(model, x)
    built, report = equalized(model, tmp_path, absorb_bias=True)
    assert report["absorbed_channels"] > 0
    assert not report["exact"] and "approximate" in report["note"]
    assert report["absorption_skipped_for_padding"] == 2  # into the depthwise convs
    assert max_error(eager(built.model, x), ref) < 0.02


class Untraceable(nn.Module):
    """A forward that branches on data, which torch.fx cannot trace; a grouped conv inside."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.ReLU6(),
                                  nn.Conv2d(8, 4, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        y = self.body(image)
        return y if y.sum() > 0 else -y


def untraceable(seed: int = 0) -> TorchModel:
    torch.manual_seed(seed)
    module = Untraceable()
    bn = module.body[1]
    bn.running_var.uniform_(0.01, 4)
    bn.weight.data.uniform_(0.1, 5)
    inputs = [InputSpec(name="image", dtype="float32", shape=["batch", 3, 8, 8])]
    return TorchModel(module.eval(), inputs)


def test_sequential_children_when_tracing_fails(tmp_path: Path) -> None:
    model = load_model(ModelRef(source="tests.quantize.test_equalize:untraceable"))
    assert isinstance(model, TorchModel)
    x = batch(model.inputs, 8)["image"]
    ref = eager(model, x)
    built, report = equalized(model, tmp_path)
    assert report["pairs_found_by"].startswith("nn.Sequential")
    assert [(r["layer1"], r["layer2"]) for r in report["layers"]] == [
        ("body.0", "body.3"), ("body.3", "body.5")]
    assert max_error(eager(built.model, x), ref) < 1e-5
