from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import StepContext, parse_step
from slimkit.runtimes import RuntimeOptions, get_runtime
from slimkit.techniques.low_rank.factorise import (
    Layer,
    options,
    step_for,
    svd_factors,
    tucker2_factors,
)
from slimkit.techniques.low_rank.scan import eligible
from slimkit.techniques.low_rank.technique import LowRank, low_rank_torch
from slimkit.techniques.prune.channels import recalibrate
from slimkit.techniques.prune.graph import example_inputs, layer_flops
from tests.models import applied, batch, eager, perturb, token_data, trusted

CNN = ModelRef(source="slimkit.examples.digits:student", kwargs={"width": 16})
MLP = ModelRef(source="tests.models:tiny_mlp")


def torch_model(ref: ModelRef) -> TorchModel:
    model = load_model(ref)
    assert isinstance(model, TorchModel)
    return perturb(model)


def images(n: int, seed: int, labels: bool = True) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8)).astype(np.float32)
    return Dataset({"image": x}, rng.integers(0, 10, n) if labels else None, "images")


def correlated(n: int, seed: int) -> Dataset:
    """Inputs that use a few directions strongly and the rest barely, as activations do."""
    rng = np.random.default_rng(seed)
    mix = np.linalg.qr(np.random.default_rng(99).standard_normal((16, 16)))[0]
    scales = np.array([8.0, 6.0, 4.0, 3.0] + [0.05] * 12)
    x = (rng.standard_normal((n, 16)) * scales) @ mix.T
    return Dataset({"x": x.astype(np.float32)}, None, "correlated")


def full_ranks(model: TorchModel) -> dict[str, int | tuple[int, int]]:
    ranks: dict[str, int | tuple[int, int]] = {}
    for name, m in eligible(model.module).items():
        w = m.weight
        if w.ndim == 4 and w.shape[2:] != (1, 1):
            ranks[name] = (w.shape[1], w.shape[0])
        else:
            ranks[name] = min(w.shape[0], w[0].numel())
    return ranks


def factorised(model: TorchModel, config: LowRank, tmp_path: Path,
               data: Dataset | None = None) -> TorchModel:
    out = applied(low_rank_torch, model, config, StepContext(tmp_path, data))
    assert isinstance(out, TorchModel)
    return out


@pytest.mark.parametrize(("ref", "whiten"), [(MLP, False), (CNN, False), (CNN, True)])
def test_full_rank_reproduces_the_outputs(ref: ModelRef, whiten: bool, tmp_path: Path) -> None:
    model = torch_model(ref)
    x = batch(model.inputs, 16)[model.inputs[0].name]
    before = eager(model, x)
    data = images(64, 0) if whiten else None
    ranks = full_ranks(model)
    out = factorised(model, LowRank(ranks=ranks, whiten=whiten), tmp_path, data)
    assert all(isinstance(out.module.get_submodule(n), torch.nn.Sequential) for n in ranks)
    np.testing.assert_allclose(eager(out, x), before, atol=1e-4)


def test_pure_factors_are_exact_at_full_rank_and_lossy_below() -> None:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(12, 6, 3, 3, generator=gen)
    x = torch.randn(500, 6, generator=gen)
    cov = x.T @ x / 500
    for c in (None, cov):
        into, core, out = tucker2_factors(w, 6, 12, c)
        back = torch.einsum("or,rshw,si->oihw", out, core, into)
        torch.testing.assert_close(back.float(), w, atol=1e-5, rtol=0)
        into, core, out = tucker2_factors(w, 3, 6, c)
        assert torch.linalg.norm(torch.einsum("or,rshw,si->oihw", out, core, into) - w) > 0.1
    first, second = svd_factors(w[:, :, 0, 0], 6, cov)
    torch.testing.assert_close((second @ first).float(), w[:, :, 0, 0], atol=1e-5, rtol=0)


def test_flops_target_holds_on_the_counted_flops(tmp_path: Path) -> None:
    model = torch_model(CNN)
    data = images(96, 1)
    example = example_inputs(model.inputs, data.inputs)
    before = layer_flops(model.module, example)
    out = factorised(model, LowRank(flops=0.5, samples=96), tmp_path, data)
    report = json.loads((tmp_path / "report.json").read_text())
    chosen = [r["layer"] for r in report["layers"]]
    after = layer_flops(out.module, example)
    counted = sum(v for n, v in after.items() if any(n.startswith(c + ".") or n == c
                                                        for c in chosen))
    assert counted <= 0.5 * sum(before[c] for c in chosen)
    assert counted == pytest.approx(report["flops_after"])
    ranks = out.steps[-1].ranks
    assert ranks and set(ranks) <= set(chosen)
    for row in report["layers"]:  # multiples of 8, of less in layers too narrow for that
        fulls = row["shape"][1::-1] if len(row["shape"]) == 4 else [min(row["shape"])]
        for r, full in zip(row["rank"] or [], fulls, strict=True):
            assert r % step_for(full, 8) == 0 and r <= full
    assert report["params_after"] < report["params_before"]


def test_params_target_and_out_of_reach(tmp_path: Path) -> None:
    out = factorised(torch_model(CNN), LowRank(params=0.4, samples=64), tmp_path, images(64, 2))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["params_after_layers"] <= 0.4 * report["params_before_layers"]
    assert out.steps[-1].flops is None
    with pytest.raises(TechniqueError, match="out of reach"):
        factorised(torch_model(CNN), LowRank(flops=0.01, samples=32), tmp_path, images(32, 2))


def test_ranks_rebuild_from_the_record(tmp_path: Path) -> None:
    model = torch_model(CNN)
    data = images(64, 3)
    x = images(8, 4).inputs["image"]
    direct = factorised(torch_model(CNN), LowRank(flops=0.5, whiten=True, samples=64),
                        tmp_path / "direct", data)
    built = build(model, model_key(model), [LowRank(flops=0.5, whiten=True, samples=64)],
                  "torch", Cache(tmp_path / "cache"), data=data)
    assert isinstance(built.model, TorchModel)
    assert built.model.steps[-1].ranks == direct.steps[-1].ranks
    np.testing.assert_allclose(eager(built.model, x), eager(direct, x), atol=1e-6)
    again = trusted(built.path)  # rebuilt from the record alone, no data
    np.testing.assert_array_equal(eager(again, x), eager(built.model, x))
    record = yaml.safe_load(yaml.safe_dump(built.model.steps[-1].model_dump(mode="json")))
    assert parse_step(record) == built.model.steps[-1]


def test_whitening_lowers_the_output_error_at_the_same_rank(tmp_path: Path) -> None:
    held_out = correlated(256, 5).inputs["x"]

    def error(whiten: bool) -> float:
        model = torch_model(MLP)
        reference = eager(model, held_out)
        out = factorised(model, LowRank(ranks={"net.0": 4, "net.2": 8}, whiten=whiten),
                         tmp_path, correlated(256, 6))
        return float(np.linalg.norm(eager(out, held_out) - reference)
                     / np.linalg.norm(reference))

    plain, whitened = error(False), error(True)
    assert whitened < 0.5 * plain, (whitened, plain)


def test_recovery_brings_the_outputs_back_towards_the_unfactorised_model(tmp_path: Path) -> None:
    model, data = torch_model(CNN), images(128, 7, labels=False)
    recalibrate(model.module, data, ["image"])  # BatchNorm statistics as training leaves them
    config = LowRank(flops=0.3, epochs=2, lr=1e-3, samples=128, batch_size=32)
    factorised(model, config, tmp_path, data)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fine_tuning"]["steps"] == 8
    assert report["quality_loss"] < report["quality_loss_factorised"]


def test_encoder_linears_chosen_by_pattern(tmp_path: Path) -> None:
    model = torch_model(ModelRef(source="tests.models:tiny_bert"))
    data = token_data(32)
    config = LowRank(flops=0.6, layers=["*.attention.self.query", "*.intermediate.dense"],
                     round_to=4, samples=32)
    out = factorised(model, config, tmp_path, data)
    ranks = out.steps[-1].ranks
    assert ranks and all(n.endswith(("query", "intermediate.dense")) for n in ranks)
    report = json.loads((tmp_path / "report.json").read_text())
    assert len(report["layers"]) == 4 and report["flops_ratio"] <= 0.6
    feeds = {k: torch.from_numpy(v) for k, v in token_data(4, seed=9).inputs.items()}
    with torch.no_grad():
        assert torch.isfinite(out.module(**feeds)).all()


def test_factorised_model_runs_on_onnxruntime(tmp_path: Path) -> None:
    model = torch_model(CNN)
    step = LowRank(ranks={"stem.1.0": (8, 16), "body.0": (24, 32), "res.0": (32, 32),
                          "head.2": 8})
    x = images(8, 8).inputs["image"]
    cache = Cache(tmp_path)
    reference = build(model, model_key(model), [step], "torch", cache).model
    assert isinstance(reference, TorchModel)
    built = build(model, model_key(model), [step], "onnx", cache)
    out = get_runtime("onnxruntime", RuntimeOptions(threads=1)).load(trusted(built.path))
    np.testing.assert_allclose(out.run({"image": x})[0], eager(reference, x), atol=1e-4)
    assert not np.allclose(eager(reference, x), eager(model, x), atol=1e-4)


def test_only_ranks_below_break_even_are_tried() -> None:
    linear = Layer("fc", "svd", 256, 10, (1, 1), 1, 1, True)
    assert options(linear, [0.75, 0.5, 0.25], 8, "flops")
    assert all(r[0] * (256 + 10) < 256 * 10 for r in options(linear, [0.9, 0.5], 8, "flops"))
    stem = Layer("stem", "tucker2", 1, 64, (3, 3), 64, 64, False)
    assert options(stem, [0.75, 0.5, 0.25, 0.125], 8, "flops") == []
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(8, 4, 1),
                              torch.nn.Conv2d(4, 4, 3, groups=2))
    assert list(eligible(net)) == ["1"]  # depthwise and grouped convs are left alone


@pytest.mark.parametrize(("raw", "field"), [
    ({"flops": 1.5}, "low_rank.flops"),
    ({"params": 0}, "low_rank.params"),
    ({"ranks": {"fc": 0}}, "low_rank.ranks"),
    ({"levels": [0.5, 1.5]}, "levels"),
    ({"flops": 0.5, "params": 0.5}, "not both"),
    ({"round_to": 0}, "low_rank.round_to"),
    ({"whitten": True}, "did you mean 'whiten'"),
])
def test_a_bad_option_names_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_step({"low_rank": raw})


def test_a_wrong_layer_in_the_ranks_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(TechniqueError, match="'nope' is not a Linear or conv") as info:
        factorised(torch_model(CNN), LowRank(ranks={"nope": 4}), tmp_path)
    assert "\n" not in str(info.value)
    with pytest.raises(TechniqueError, match=r"full rank \[10\]"):
        factorised(torch_model(CNN), LowRank(ranks={"head.2": 12}), tmp_path)
