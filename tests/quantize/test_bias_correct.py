"""Bias correction takes the mean shift of rounded weights out of a CNN's outputs, measured on
data or estimated from BatchNorm statistics, and its record rebuilds the biases it created."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.model import InputSpec, ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.techniques.quantize.fold import fold_batchnorms
from slimkit.techniques.quantize.grid import Grid
from tests.models import trusted

pytestmark = pytest.mark.usefixtures("one_thread")

REF = ModelRef(source="tests.quantize.test_bias_correct:conv_bn_relu")
INT7 = Grid(64)


def images(n: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)  # pixel-like: positive, so rounding errors add up
    return Dataset({"image": rng.uniform(0, 1, (n, 3, 12, 12)).astype(np.float32)}, None,
                   "images")


def conv_bn_relu(seed: int = 0) -> TorchModel:
    """Two conv-BN-ReLU blocks and a 1x1 convolution without bias; the BatchNorm statistics
    are those of the data it sees, as after training."""
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 8, 1, bias=False))
    for m in module:
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the pass below
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0.2, 0.3)
    with torch.no_grad():
        module.train()(torch.from_numpy(images(512, 9).inputs["image"]))
    inputs = [InputSpec(name="image", dtype="float32", shape=["batch", 3, 12, 12])]
    return TorchModel(module.eval(), inputs)


def quantized(module: nn.Module, layers: list[str]) -> nn.Module:
    """The module with BatchNorm folded and the weights of `layers` rounded to the grid, as
    the int8 runtime will run them."""
    fold_batchnorms(module)
    named = dict(module.named_modules())
    with torch.no_grad():
        for n in layers:
            named[n].weight.copy_(INT7.nearest(named[n].weight))
    return module


def shift(module: nn.Module, reference: nn.Module, x: np.ndarray) -> float:
    """Mean over output channels of |E[y_q] - E[y]|."""
    with torch.no_grad():
        y_q, y = (m(torch.from_numpy(x)).mean((0, 2, 3)) for m in (module, reference))
    return float((y_q - y).abs().mean())


@pytest.mark.parametrize(("method", "corrected"), [("empirical", ["0", "3", "6"]),
                                                   ("analytic", ["3", "6"])])
def test_correction_reduces_the_output_shift(method: str, corrected: list[str],
                                             tmp_path: Path) -> None:
    """Analytic correction has no estimate for the first layer (its input is the model's), so
    the shift is measured with the layers each method corrects rounded."""
    model = load_model(REF)
    assert isinstance(model, TorchModel)
    step = parse_step({"bias_correct": {"method": method, "weight_grid": "int7",
                                        "samples": 256}})
    built = build(model, model_key(model), [step], "torch", Cache(tmp_path),
                  data=images(256, 0))
    x = images(256, 1).inputs["image"]  # other images than the calibration ones
    reference = conv_bn_relu().module
    before = shift(quantized(conv_bn_relu().module, corrected), reference, x)
    rebuilt = trusted(built.path)  # from the record: BN folded, a bias added
    after = shift(quantized(rebuilt.module, corrected), reference, x)
    assert after < 0.2 * before, (before, after)
    report = json.loads((built.path / "report.json").read_text())
    assert [r["layer"] for r in report["layers"]] == corrected
    assert report["folded_batchnorms"] == 2 and report["weight_grid"] == "int7"
    assert built.model.steps[-1].new_biases == ["6"]  # the only layer BN did not give one
    assert torch.equal(built.model.module[6].weight, reference[6].weight)  # weights stay float


def test_empirical_report_shows_the_shift_gone_on_held_out_rows(tmp_path: Path) -> None:
    model = load_model(REF)
    assert isinstance(model, TorchModel)
    step = parse_step({"bias_correct": {"weight_grid": "int7", "samples": 128}})
    built = build(model, model_key(model), [step], "torch", Cache(tmp_path),
                  data=images(256, 0))
    report = json.loads((built.path / "report.json").read_text())
    assert report["measured_on"] == "held-out rows"
    deep = [r for r in report["layers"] if r["layer"] != "0"]  # the input layer has ~no shift
    assert all(r["shift_after"] < 0.5 * r["shift_before"] for r in deep), deep
