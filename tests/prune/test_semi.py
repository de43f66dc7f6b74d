"""N:M pruning keeps the N largest of every M input weights, keeps the pattern through
fine-tuning, rebuilds from its record, and refuses the GPU path where there is no GPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slimkit.artifact import load_artifact
from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import StepContext, parse_step
from slimkit.techniques.prune.semi import PruneSemiStructured, nm_mask, prune_semi_structured_torch
from tests.models import applied, eager, mlp_data, tiny_cnn, tiny_mlp


def prune(model: TorchModel, tmp_path: Path, data: Dataset | None = None,
          **options: object) -> TorchModel:
    config = PruneSemiStructured(**options)
    out = applied(prune_semi_structured_torch, model, config, StepContext(tmp_path, data))
    assert isinstance(out, TorchModel)
    return out


def groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    return weight.detach().reshape(weight.shape[0], -1, m)


def test_every_group_of_four_keeps_its_two_largest(tmp_path: Path) -> None:
    before = {n: m.weight.detach().clone() for n, m in tiny_mlp().module.named_modules()
              if isinstance(m, torch.nn.Linear)}
    model = prune(tiny_mlp(), tmp_path, exclude=[])
    for name, layer in model.module.named_modules():
        if not isinstance(layer, torch.nn.Linear):
            continue
        after, orig = groups(layer.weight, 4), groups(before[name], 4).abs()
        assert ((after != 0).sum(-1) == 2).all(), name
        kept_min = torch.where(after != 0, orig, torch.inf).amin(-1)
        dropped_max = torch.where(after == 0, orig, -torch.inf).amax(-1)
        assert (dropped_max <= kept_min).all(), name


def test_other_patterns_and_conv_over_the_flattened_input(tmp_path: Path) -> None:
    w = torch.randn(6, 3, 3, 8, generator=torch.Generator().manual_seed(0))
    mask = nm_mask(w, 1, 8)
    assert mask.shape == w.shape and (groups(mask, 8).sum(-1) == 1).all()
    model = prune(tiny_cnn(), tmp_path, exclude=[], conv=True)
    # the stem's flattened input (3 channels x 3 x 3 = 27) does not split into groups of 4
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped"] == ["stem.0"]
    assert ((groups(model.module.res[0].weight, 4) != 0).sum(-1) == 2).all()
    assert "Runs dense on CPU" in report["note"]


def test_output_layer_stays_dense_by_default(tmp_path: Path) -> None:
    before = tiny_mlp().module.net[4].weight.detach().clone()
    model = prune(tiny_mlp(), tmp_path)
    assert torch.equal(model.module.net[4].weight, before)
    assert int((model.module.net[2].weight == 0).sum()) == model.module.net[2].weight.numel() // 2


def test_pattern_holds_after_fine_tuning(tmp_path: Path) -> None:
    one_shot = prune(tiny_mlp(), tmp_path / "a", exclude=[]).module
    tuned = prune(tiny_mlp(), tmp_path / "b", mlp_data(256), exclude=[], epochs=2, lr=1e-2,
                  batch_size=32).module
    for a, b in zip(one_shot.net[::2], tuned.net[::2], strict=True):
        assert torch.equal(a.weight == 0, b.weight == 0)
        assert not torch.allclose(a.weight, b.weight)


def test_reloaded_artifact_gives_identical_outputs(tmp_path: Path) -> None:
    model = load_model("tests.models:tiny_mlp")
    assert isinstance(model, TorchModel)
    step = parse_step({"prune_semi_structured": {"epochs": 1, "batch_size": 32}})
    built = build(model, model_key(model), [step], "torch", Cache(tmp_path), data=mlp_data(64))
    x = mlp_data(8, seed=4).inputs["x"]
    reloaded = load_artifact(built.path, trust_code=True)
    assert isinstance(reloaded, TorchModel) and isinstance(built.model, TorchModel)
    np.testing.assert_array_equal(eager(reloaded, x), eager(built.model, x))
    assert model_key(reloaded) == model_key(built.model)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
def test_accelerate_without_cuda_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(TechniqueError, match="needs a CUDA GPU") as err:
        prune(tiny_mlp(), tmp_path, accelerate=True)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "report.json").exists()


def test_options_are_checked_and_round_trip_through_yaml() -> None:
    config = PruneSemiStructured(n=1, m=8, conv=True, epochs=2, exclude=["head.*"])
    assert parse_step(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json")))) == config
    for bad in ({"n": 4, "m": 4}, {"n": 1, "m": 4, "accelerate": True}):
        with pytest.raises(ValueError, match="prune_semi_structured"):
            parse_step({"prune_semi_structured": bad})
