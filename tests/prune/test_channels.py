"""Channel pruning: removal is exact, the model shrinks and still exports, the record rebuilds it,
and the sensitivity scan sets each layer's ratio by itself."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from slimkit.artifact import load_artifact, save_artifact
from slimkit.data import Dataset
from slimkit.examples import digits
from slimkit.model import InputSpec, ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import StepContext, parse_step
from slimkit.techniques.prune import graph
from slimkit.techniques.prune.channels import PruneChannels, prune_channels_torch
from tests.models import applied, batch, eager, perturb


class Branchy(nn.Module):
    """Two branches concatenated, a 1x1 conv mixing them, a depthwise conv, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.BatchNorm2d(32),
                                nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(32, 24, 1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.a(image), self.b(image)], 1)
        return self.head(self.pw(self.dw(self.mix(x))))


def branchy(seed: int = 0) -> TorchModel:
    torch.manual_seed(seed)
    module = Branchy()
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    inputs = [InputSpec(name="image", dtype="float32", shape=["batch", 3, 8, 8])]
    return TorchModel(module.eval(), inputs)


MODELS = {"tiny_cnn": ModelRef(source="tests.models:tiny_cnn"),
          "branchy": ModelRef(source="tests.prune.test_channels:branchy")}


def source(name: str) -> TorchModel:
    model = load_model(MODELS[name])
    assert isinstance(model, TorchModel)
    return perturb(model)


def data(model: TorchModel, n: int = 48, classes: int = 4) -> Dataset:
    rng = np.random.default_rng(3)
    return Dataset(batch(model.inputs, n, seed=2), rng.integers(0, classes, n), "images")


def prune(model: TorchModel, tmp: Path, **options: object) -> TorchModel:
    config = parse_step({"prune_channels": {"round_to": 2, "samples": 48, **options}})
    out = applied(prune_channels_torch, copy.deepcopy(model), config, StepContext(tmp, data(model)))
    assert isinstance(out, TorchModel)
    return out


def flops(model: TorchModel, x: np.ndarray) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.module(torch.from_numpy(x))
    return counter.get_total_flops()


def params(model: TorchModel) -> int:
    return sum(p.numel() for p in model.module.parameters())


def _zero(model: TorchModel, outputs: list[str], consumers: list[str], idx: list[int]) -> None:
    named = dict(model.module.named_modules())
    with torch.no_grad():
        for name in outputs:  # producing conv and BatchNorm: the channel is dead
            for p in named[name].parameters():
                p[idx] = 0
        for name in consumers:  # and nothing downstream reads it
            named[name].weight[:, idx] = 0


@pytest.mark.parametrize(("name", "outputs", "consumers", "kept"), [
    ("tiny_cnn", ["stem.0", "stem.1", "res.0", "res.1"], ["res.0", "head.2"], {"stem.0": 4}),
    ("branchy", ["a.0", "a.1"], ["mix.0"], {"a.0": 8}),
])
def test_removing_all_zero_channels_changes_no_output(name: str, outputs: list[str],
                                                      consumers: list[str], kept: dict[str, int],
                                                      tmp_path: Path) -> None:
    model = source(name)
    _zero(model, outputs, consumers, [0, 3, 4, 7] if name == "tiny_cnn" else list(range(1, 16, 2)))
    pruned = prune(model, tmp_path, importance="l1", kept=kept, recalibrate_bn=False)
    x = batch(model.inputs, 16)["image"]
    assert params(pruned) < params(model)
    np.testing.assert_allclose(eager(pruned, x), eager(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_cnn", "branchy"])
def test_zeroing_a_group_computes_what_removing_it_computes(name: str) -> None:
    """The sensitivity scan zeroes channels instead of building each trial network."""
    model = source(name)
    feeds = {"image": torch.from_numpy(batch(model.inputs, 8, seed=4)["image"])}
    dg = graph.build_graph(model.module, feeds)
    groups = graph.prunable_groups(dg, model.module, [])
    assert groups
    for g in groups:
        drop = list(range(1, g.channels, 2))
        removed = copy.deepcopy(model.module)
        graph.apply_kept(removed, feeds, {g.root: g.channels - len(drop)},
                         {g.root: drop + [i for i in range(g.channels) if i not in drop]})
        saved = graph.mask(dg, model.module, g.root, drop)
        assert saved is not None
        with torch.no_grad():
            torch.testing.assert_close(model.module(**feeds), removed(**feeds))
        graph.unmask(saved)


@pytest.mark.parametrize("name", ["tiny_cnn", "branchy"])
def test_pruned_model_is_smaller_and_runs_on_onnxruntime(name: str, tmp_path: Path) -> None:
    model = source(name)
    x = batch(model.inputs, 8, seed=5)["image"]
    steps = [parse_step({"prune_channels": {"flops_ratio": 0.6, "round_to": 2, "samples": 48}})]
    cache = Cache(tmp_path)
    pruned = build(model, model_key(model), steps, "torch", cache, data=data(model)).model
    assert isinstance(pruned, TorchModel)
    assert flops(pruned, x) <= 0.6 * flops(model, x)
    assert params(pruned) < params(model)
    built = build(model, model_key(model), steps, "onnx", cache, data=data(model))
    report = json.loads((cache.path(built.steps[0].key) / "report.json").read_text())
    assert report["flops_after"] == flops(pruned, x[:1])
    assert any(r["channels_after"] < r["channels_before"] for r in report["layers"])
    session = ort.InferenceSession(str(built.path / "model.onnx"))
    (out,) = session.run(None, {"image": x})
    np.testing.assert_allclose(out, eager(pruned, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny_cnn", "branchy"])
def test_saved_artifact_reloads_from_its_record(name: str, tmp_path: Path) -> None:
    model = source(name)
    pruned = prune(model, tmp_path, importance="taylor", flops_ratio=0.6)
    record = pruned.steps[-1]
    assert isinstance(record, PruneChannels) and record.kept
    save_artifact(pruned, tmp_path / "artifact")
    loaded = load_artifact(tmp_path / "artifact", trust_code=True)
    assert isinstance(loaded, TorchModel)
    x = batch(model.inputs, 8, seed=7)["image"]
    np.testing.assert_array_equal(eager(loaded, x), eager(pruned, x))


@pytest.mark.slow
def test_sensitivity_scan_gives_layers_different_ratios(tmp_path: Path) -> None:
    model = load_model("slimkit.examples.digits:load_model")
    assert isinstance(model, TorchModel)
    calibration = digits.load_data("calibration").head(64)
    config = parse_step({"prune_channels": {"importance": "l1", "flops_ratio": 0.5,
                                            "samples": 64, "levels": [0.75, 0.5, 0.25]}})
    out = applied(prune_channels_torch, model, config, StepContext(tmp_path, calibration))
    report = json.loads((tmp_path / "report.json").read_text())
    shares = {r["layer"]: r["channels_after"] / r["channels_before"] for r in report["layers"]}
    assert len(set(shares.values())) > 1, shares
    assert report["flops_ratio"] <= 0.5
    assert out.steps[-1].kept == {k: v for k, v in out.steps[-1].kept.items() if v % 8 == 0}


def test_config_round_trips_through_yaml() -> None:
    import yaml

    config = parse_step({"prune_channels": {"ratio": 0.5, "importance": "bn_scale",
                                            "kept": {"res.0": 16}}})
    assert isinstance(config, PruneChannels) and config.flops_ratio is None
    again = parse_step(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
    assert again == config
    assert parse_step({"prune_channels": None}).flops_ratio == 0.5
    with pytest.raises(ValueError, match="not both"):
        parse_step({"prune_channels": {"ratio": 0.5, "flops_ratio": 0.5}})
    with pytest.raises(ValueError, match=r"prune_channels\.importance"):
        parse_step({"prune_channels": {"importance": "l3"}})
