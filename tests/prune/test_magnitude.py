"""Magnitude pruning hits the sparsity asked for, keeps its zeros through fine-tuning, and the
zeros shrink the artifact on disk while the model and its hash come back exactly."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slimkit.artifact import load_artifact
from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.examples.digits import DigitsCNN
from slimkit.model import TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import StepContext, parse_step
from slimkit.sparse_state import decode, encode
from slimkit.techniques.prune.magnitude import (
    PruneMagnitude,
    prune_magnitude_torch,
    ramp_target,
)
from slimkit.techniques.prune.schedule import polynomial_sparsity
from slimkit.torch_state import load_state, save_state
from tests.models import applied, eager, mlp_data, tiny_cnn, tiny_mlp

LAYERS = ("net.0", "net.2", "net.4")


def weights(model: TorchModel) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.module.named_modules()
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}


def zeros(t: torch.Tensor) -> int:
    return int((t == 0).sum())


def prune(model: TorchModel, tmp_path: Path, data: Dataset | None = None,
          **options: object) -> TorchModel:
    out = applied(prune_magnitude_torch, model, PruneMagnitude(**options),
                  StepContext(tmp_path, data))
    assert isinstance(out, TorchModel)
    return out


def test_global_scope_zeroes_exactly_the_smallest_share_across_layers(tmp_path: Path) -> None:
    before = weights(tiny_mlp())
    after = weights(prune(tiny_mlp(), tmp_path, sparsity=0.7, exclude=[]))
    total = sum(w.numel() for w in before.values())
    assert sum(zeros(w) for w in after.values()) == round(0.7 * total)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["sparsity"] == round(round(0.7 * total) / total, 6)
    pruned = torch.cat([before[n][after[n] == 0].abs() for n in LAYERS])
    kept = torch.cat([before[n][after[n] != 0].abs() for n in LAYERS])
    assert pruned.max() <= kept.min()
    for n in LAYERS:  # survivors are untouched
        torch.testing.assert_close(after[n][after[n] != 0], before[n][after[n] != 0])


def test_layer_scope_gives_each_layer_the_same_sparsity(tmp_path: Path) -> None:
    after = weights(prune(tiny_mlp(), tmp_path, sparsity=0.6, scope="layer", exclude=[]))
    for n in LAYERS:
        assert zeros(after[n]) == round(0.6 * after[n].numel()), n


def test_first_conv_and_output_layer_stay_dense_by_default(tmp_path: Path) -> None:
    before, model = weights(tiny_cnn()), prune(tiny_cnn(), tmp_path, sparsity=0.5)
    after = weights(model)
    assert torch.equal(after["stem.0"], before["stem.0"])
    assert torch.equal(after["head.2"], before["head.2"])
    assert zeros(after["res.0"]) == round(0.5 * after["res.0"].numel())
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {r["layer"]: r for r in report["layers"]}
    assert not rows["stem.0"]["pruned"] and rows["res.0"]["pruned"]
    assert rows["res.0"]["sparsity"] == pytest.approx(0.5, abs=1 / rows["res.0"]["params"])
    assert "no speed-up" in report["note"]


def test_exclude_globs_choose_the_dense_layers(tmp_path: Path) -> None:
    after = weights(prune(tiny_mlp(), tmp_path, sparsity=0.5, exclude=["net.[24]"]))
    assert zeros(after["net.0"]) > 0 and zeros(after["net.2"]) == zeros(after["net.4"]) == 0


def test_threshold_zeroes_every_weight_below_it_and_nothing_else(tmp_path: Path) -> None:
    before = weights(tiny_mlp())
    limit = float(before["net.2"].abs().median())
    after = weights(prune(tiny_mlp(), tmp_path, threshold=limit, exclude=[]))
    for n in LAYERS:
        small = before[n].abs() < limit
        assert torch.equal(after[n] == 0, small), n
        assert torch.equal(after[n][~small], before[n][~small])


def test_sparsity_zero_changes_nothing(tmp_path: Path) -> None:
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    after = prune(model, tmp_path, sparsity=0.0, exclude=[]).module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_polynomial_schedule_follows_the_cubic_ramp() -> None:
    s_i, s_f, steps = 0.1, 0.8, 100
    assert polynomial_sparsity(0, steps, s_i, s_f) == pytest.approx(s_i)
    assert polynomial_sparsity(50, steps, s_i, s_f) == pytest.approx(s_f - (s_f - s_i) / 8)
    assert polynomial_sparsity(75, steps, s_i, s_f) == pytest.approx(s_f - (s_f - s_i) / 64)
    assert polynomial_sparsity(steps, steps, s_i, s_f) == pytest.approx(s_f)
    assert polynomial_sparsity(3 * steps, steps, s_i, s_f) == pytest.approx(s_f)
    ramp = [polynomial_sparsity(t, steps, s_i, s_f) for t in range(steps + 1)]
    assert all(a <= b for a, b in itertools.pairwise(ramp))


def test_masks_move_every_update_every_steps_and_reach_the_target_at_the_ramp_end() -> None:
    config = PruneMagnitude(sparsity=0.8, schedule="polynomial", initial_sparsity=0.2,
                            update_every=5, ramp=0.5, epochs=1)
    total = 40
    targets = {t: ramp_target(config, t, total) for t in range(1, total + 1)}
    assert [t for t, s in targets.items() if s is not None] == list(range(5, total + 1, 5))
    assert targets[10] == pytest.approx(polynomial_sparsity(10, 20, 0.2, 0.8))
    assert targets[20] == targets[40] == pytest.approx(0.8)
    assert ramp_target(PruneMagnitude(sparsity=0.8, epochs=1), 5, total) is None


def test_zeros_stay_zero_while_fine_tuning(tmp_path: Path) -> None:
    one_shot = weights(prune(tiny_mlp(), tmp_path / "a", sparsity=0.6, exclude=[]))
    tuned = weights(prune(tiny_mlp(), tmp_path / "b", mlp_data(256), sparsity=0.6, exclude=[],
                          epochs=2, lr=1e-2, batch_size=32))
    for n in LAYERS:
        assert torch.equal(tuned[n] == 0, one_shot[n] == 0), n
        assert not torch.allclose(tuned[n], one_shot[n])  # it did train
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["fine_tuning"]["epochs"] == 2


@pytest.mark.parametrize("loss", ["auto", "distill"])
def test_polynomial_fine_tuning_by_distillation_ends_at_the_target(tmp_path: Path,
                                                                   loss: str) -> None:
    x = mlp_data(192).inputs["x"]
    data = Dataset({"x": x}, None if loss == "auto" else mlp_data(192).labels, "distil")
    after = weights(prune(tiny_mlp(), tmp_path, data, loss=loss, sparsity=0.8,
                          schedule="polynomial",
                          initial_sparsity=0.2, update_every=2, epochs=2, batch_size=32,
                          lr=1e-3, exclude=[]))
    total = sum(w.numel() for w in after.values())
    assert sum(zeros(w) for w in after.values()) == round(0.8 * total)


def test_fine_tuning_without_data_or_labels_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TechniqueError, match="needs training data"):
        prune(tiny_mlp(), tmp_path, sparsity=0.5, epochs=1)
    unlabelled = Dataset({"x": mlp_data(8).inputs["x"]}, None, "unlabelled")
    with pytest.raises(TechniqueError, match="unlabelled has none"):
        prune(tiny_mlp(), tmp_path, unlabelled, sparsity=0.5, epochs=1, loss="labels")


def test_options_are_checked_and_round_trip_through_yaml() -> None:
    for config in (PruneMagnitude(threshold=0.02, scope="layer", exclude=["head.*"]),
                   PruneMagnitude(sparsity=0.9, schedule="polynomial", initial_sparsity=0.3,
                                  epochs=4, update_every=5)):
        back = parse_step(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
        assert back == config
    assert parse_step({"prune_magnitude": {"threshold": 0.1}}).sparsity is None
    for bad in ({"threshold": 0.1, "sparsity": 0.5}, {"schedule": "polynomial"},
                {"sparsity": 1.0}):
        with pytest.raises(ValueError, match="prune_magnitude"):
            parse_step({"prune_magnitude": bad})


def test_sparse_encoding_round_trips_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(64, 33, generator=gen)
    sparse = dense * (torch.rand(64, 33, generator=gen) < 0.2)  # -0.0 where dense < 0
    tensors = {"dense": dense, "sparse": sparse, "half": sparse.to(torch.bfloat16),
               "int8": (sparse * 50).to(torch.int8), "scalar": torch.tensor(0.0)}
    stored = encode(tensors)
    assert "dense" in stored and "sparse" not in stored  # only the mostly-zero ones change
    assert "sparse::sparse_negative_zeros" in stored
    back = decode(stored)
    assert set(back) == set(tensors)
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape
        as_bytes = back[k].reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)
        assert torch.equal(*as_bytes), k


def test_pruned_digits_cnn_is_at_most_35_percent_of_dense_on_disk(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = DigitsCNN().eval()
    save_state(module, tmp_path / "dense.safetensors")
    model = TorchModel(module, [])
    prune(model, tmp_path, sparsity=0.8)
    save_state(module, tmp_path / "sparse.safetensors")
    dense = (tmp_path / "dense.safetensors").stat().st_size
    sparse = (tmp_path / "sparse.safetensors").stat().st_size
    assert sparse <= 0.35 * dense, (sparse, dense)
    again = DigitsCNN().eval()
    load_state(again, tmp_path / "sparse.safetensors")
    for k, v in module.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_reloaded_artifact_gives_identical_outputs_and_key(tmp_path: Path) -> None:
    model = load_model("tests.models:tiny_mlp")
    assert isinstance(model, TorchModel)
    step = parse_step({"prune_magnitude": {"sparsity": 0.75, "exclude": [], "epochs": 1,
                                           "lr": 1e-2, "batch_size": 32}})
    built = build(model, model_key(model), [step], "torch", Cache(tmp_path),
                  data=mlp_data(128))
    x = mlp_data(16, seed=3).inputs["x"]
    first = built.model
    assert isinstance(first, TorchModel)
    reloaded = load_artifact(built.path, trust_code=True)
    assert isinstance(reloaded, TorchModel)
    np.testing.assert_array_equal(eager(reloaded, x), eager(first, x))
    assert model_key(reloaded) == model_key(first)
    dense_bytes = sum(p.numel() * 4 for p in model.module.parameters())
    assert (built.path / "model.safetensors").stat().st_size < 0.5 * dense_bytes
