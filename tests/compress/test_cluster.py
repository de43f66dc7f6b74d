"""Weight sharing keeps at most k values per layer or group, keeps pruning's zeros, shrinks the
artifact by about 32/bits (less again with the coder), and comes back from disk bit for bit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit import cluster_state
from slimkit.artifact import load_artifact
from slimkit.data import Dataset
from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.model import TorchModel, load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.registry import StepContext, TechniqueConfig, parse_step
from slimkit.run import model_bytes
from slimkit.techniques.cluster import Cluster, cluster_torch, kmeans_1d
from slimkit.techniques.prune.magnitude import PruneMagnitude, prune_magnitude_torch
from slimkit.torch_state import flatten_state, load_state, save_state
from tests.models import applied, eager, mlp_data, tiny_mlp

MLP = "tests.models:tiny_mlp"
CNN = "slimkit.examples.digits:student"  # an untrained DigitsCNN of width 16: 60k weights


def layers(model: TorchModel) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in model.module.named_modules()
            if isinstance(m, torch.nn.Linear | torch.nn.Conv2d)}


def clustered(model: TorchModel, tmp_path: Path, data: Dataset | None = None,
              **options: object) -> TorchModel:
    out = applied(cluster_torch, model, Cluster(**options), StepContext(tmp_path, data))
    assert isinstance(out, TorchModel)
    return out


def built(source: str, steps: list[TechniqueConfig], tmp_path: Path,
          data: Dataset | None = None) -> Built:
    model = load_model(source)
    return build(model, model_key(model), steps, "torch", Cache(tmp_path), data=data)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if not a.is_floating_point():
        return torch.equal(a, b)
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


def test_enough_clusters_reproduce_the_model_exactly(tmp_path: Path) -> None:
    model = tiny_mlp()
    with torch.no_grad():  # each layer holds 12 distinct values, zero (+0.0) among them
        for m in model.module.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.round(m.weight * 50).clamp(-6, 5) / 50 + 0.0)
    before = layers(model)
    after = layers(clustered(model, tmp_path, clusters=16))
    for name, w in before.items():
        assert w.unique().numel() == 12
        assert same_bits(after[name], w), name


@pytest.mark.parametrize(("k", "scope", "group_size", "init"), [
    (4, "layer", None, "linear"), (16, "layer", None, "kmeans++"),
    (8, "channel_group", 24, "linear"), (16, "channel_group", 8, "kmeans++")])
def test_each_layer_or_group_keeps_at_most_k_values(k: int, scope: str, group_size: int | None,
                                                    init: str, tmp_path: Path) -> None:
    out = clustered(tiny_mlp(), tmp_path, clusters=k, scope=scope, group_size=group_size,
                    init=init)
    rows_per_group = group_size or 10**9
    for name, w in layers(out).items():
        groups = w.split(rows_per_group)
        assert all(g.unique().numel() <= k for g in groups), name
        if scope == "channel_group" and len(groups) > 1:  # the groups have codebooks of their own
            assert w.unique().numel() > k, name
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["layer"] for r in report["layers"]] == ["net.0", "net.2", "net.4"]
    assert all(r["index_bits"] == math.ceil(math.log2(k)) for r in report["layers"])
    assert "no speed-up" in report["note"]


def test_kmeans_finds_separated_clusters() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([-3.0, -1.0, 0.5, 2.0])
    values = np.concatenate([c + 0.01 * rng.standard_normal(500) for c in centres])
    for init in ("linear", "kmeans++"):
        found = kmeans_1d(values, 4, init, seed=0)
        np.testing.assert_allclose(found, centres, atol=0.01)


@pytest.mark.parametrize("k", [4, 16])
def test_artifact_shrinks_by_about_32_over_bits(k: int, tmp_path: Path) -> None:
    dense = built(CNN, [], tmp_path)
    shared = built(CNN, [Cluster(clusters=k, coding="none")], tmp_path)
    weights = sum(w.numel() for w in layers(dense.model).values())  # type: ignore[arg-type]
    bits = math.ceil(math.log2(k))
    saved = weights * 4 - math.ceil(weights * bits / 8)
    # what the weights lose, the file loses: codebooks and headers cost a few hundred bytes
    lost = model_bytes(dense.path) - model_bytes(shared.path)
    assert 0.99 * saved < lost <= saved, (lost, saved)
    report = json.loads((shared.path / "report.json").read_text())
    assert report["model_bytes_after"] == model_bytes(shared.path)
    # per layer, a codebook and three header entries; the 144-weight stem feels them most
    assert 0.85 * 32 / bits < report["size_x"] <= 32 / bits


def test_reload_is_bit_exact_and_keeps_the_key(tmp_path: Path) -> None:
    step = parse_step({"cluster": {"clusters": 8, "scope": "channel_group", "group_size": 16,
                                   "epochs": 1, "lr": 1e-3, "batch_size": 32}})
    made = built(MLP, [step], tmp_path, data=mlp_data(128))
    first = made.model
    assert isinstance(first, TorchModel)
    again = load_artifact(made.path, trust_code=True)
    assert isinstance(again, TorchModel)
    x = mlp_data(16, seed=3).inputs["x"]
    np.testing.assert_array_equal(eager(again, x), eager(first, x))
    state, back = flatten_state(first.module), flatten_state(again.module)
    assert all(same_bits(back[k], v) for k, v in state.items())
    assert model_key(again) == model_key(first)
    assert again.steps[0].chosen == ["net.0", "net.2", "net.4"]  # type: ignore[attr-defined]
    # saved again from the reloaded model, the weights are shared on disk again
    save_state(again.module, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").stat().st_size == model_bytes(made.path)


def test_pruned_zeros_stay_zero_through_clustering_and_fine_tuning(tmp_path: Path) -> None:
    data = mlp_data(128)
    pruned = applied(prune_magnitude_torch, tiny_mlp(),
                     PruneMagnitude(sparsity=0.8, exclude=[]), StepContext(tmp_path, None))
    zeros = {n: w == 0 for n, w in layers(pruned).items()}
    out = clustered(pruned, tmp_path, data, clusters=16, epochs=2, lr=1e-2, batch_size=32)
    for name, w in layers(out).items():
        assert torch.equal(w == 0, zeros[name]), name
        assert w.unique().numel() <= 16


def test_fine_tuning_keeps_assignments_and_moves_towards_the_original(tmp_path: Path) -> None:
    data = mlp_data(256)
    x = torch.from_numpy(mlp_data(64, seed=5).inputs["x"])
    original = tiny_mlp()
    with torch.no_grad():
        want = original.module(x)
    once = clustered(tiny_mlp(), tmp_path / "a", clusters=4)
    tuned = clustered(tiny_mlp(), tmp_path / "b", data, clusters=4, epochs=4, lr=1e-3,
                      batch_size=32)
    for name, w in layers(once).items():
        after = layers(tuned)[name]
        assert not torch.equal(after, w), name  # the centroids moved
        for value in w.unique():  # but every weight still shares its cluster's value
            assert after[w == value].unique().numel() == 1, name
    with torch.no_grad():
        loss_once = float(((once.module(x) - want) ** 2).mean())
        loss_tuned = float(((tuned.module(x) - want) ** 2).mean())
    assert loss_tuned < 0.9 * loss_once, (loss_tuned, loss_once)
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    assert report["distill_mse_after"] < report["distill_mse_before"]
    # the module is left as it was found: plain trainable weights, its own train()
    assert not any(hasattr(m, "parametrizations") for m in tuned.module.modules())
    assert all(p.requires_grad for p in tuned.module.parameters())
    assert "train" not in vars(tuned.module)


def test_coding_makes_a_pruned_model_smaller_than_packed_indices(tmp_path: Path) -> None:
    prune = PruneMagnitude(sparsity=0.8)
    packed = built(CNN, [prune, Cluster(clusters=16, coding="none")], tmp_path)
    coded = built(CNN, [prune, Cluster(clusters=16, coding="lzma")], tmp_path)
    assert model_bytes(coded.path) < 0.7 * model_bytes(packed.path)
    a, b = load_artifact(packed.path, trust_code=True), load_artifact(coded.path, trust_code=True)
    assert all(same_bits(v, flatten_state(b.module)[k])  # type: ignore[attr-defined]
               for k, v in flatten_state(a.module).items())  # type: ignore[attr-defined]


def test_shared_storage_keeps_every_bit() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.tensor([0.0, -0.0, float("nan"), 1.5, -2.25, 3e-8])
    t = values[torch.randint(0, 6, (200, 70), generator=gen)]
    for dtype, rows in ((torch.float32, 200), (torch.float16, 60), (torch.bfloat16, 7)):
        w = t.to(dtype)
        for coding in ("none", "lzma"):
            parts = cluster_state.encode_one(w, cluster_state.Sharing(rows, coding))
            assert parts is not None
            back = cluster_state.decode({f"w{k}": v for k, v in parts.items()})["w"]
            assert back.dtype == dtype
            assert torch.equal(back.view(torch.int16 if dtype != torch.float32 else torch.int32),
                               w.view(torch.int16 if dtype != torch.float32 else torch.int32))


def test_a_tensor_with_many_values_stays_as_it_was(tmp_path: Path) -> None:
    model = tiny_mlp()
    cluster_state.mark(model.module, "net.2.weight", cluster_state.Sharing(64, "lzma"))
    assert cluster_state.encode_one(model.module.net[2].weight, cluster_state.Sharing(64, "lzma")) \
        is None  # 4096 distinct values
    save_state(model.module, tmp_path / "w.safetensors")
    again = tiny_mlp(seed=1)
    load_state(again.module, tmp_path / "w.safetensors")
    assert torch.equal(again.module.net[2].weight, model.module.net[2].weight)


def test_corrupt_shared_weights_are_a_load_error(tmp_path: Path) -> None:
    w = torch.tensor([[1.0, 2.0] * 32] * 4)
    parts = cluster_state.encode_one(w, cluster_state.Sharing(4, "lzma"))
    assert parts is not None
    parts[cluster_state.INDICES] = parts[cluster_state.INDICES][:3]
    with pytest.raises(ModelLoadError, match="w: its shared weights cannot be decoded"):
        cluster_state.decode({f"w{k}": v for k, v in parts.items()})


@pytest.mark.parametrize(("options", "field"), [
    ({"clusters": 300}, "cluster.clusters"), ({"clusters": 2}, "cluster.clusters"),
    ({"group_size": 8}, "group_size applies to scope channel_group"),
    ({"scope": "channel_group"}, "needs group_size"), ({"coding": "zip"}, "cluster.coding"),
    ({"init": "random"}, "cluster.init"), ({"epochs": -1}, "cluster.epochs")])
def test_a_bad_option_names_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_step({"cluster": options})


def test_layers_that_match_nothing_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TechniqueError, match="no Conv/Linear layer matches"):
        clustered(tiny_mlp(), tmp_path, layers=["nothing.*"])
    with pytest.raises(TechniqueError, match="needs training data"):
        clustered(tiny_mlp(), tmp_path, epochs=1)


def test_layers_choose_what_is_shared(tmp_path: Path) -> None:
    before = layers(tiny_mlp())
    after = layers(clustered(tiny_mlp(), tmp_path, layers=["net.2"]))
    assert after["net.2"].unique().numel() <= 16
    assert torch.equal(after["net.0"], before["net.0"])
    assert torch.equal(after["net.4"], before["net.4"])
