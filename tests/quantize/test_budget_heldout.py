"""A budget must hold on calibration rows the search never chose layers with: the report gives
both figures, a held-out failure makes the search keep more layers in float (NNCF's walk, which
cannot be continued, reports it), and `slimkit run` warns where the evaluation data breaks a
budget that held on calibration data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.config import parse_recipe
from slimkit.data import Dataset
from slimkit.evaluate.fidelity import Budget, Fidelity
from slimkit.model import InputSpec, ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.run import run_recipe
from slimkit.techniques.quantize.budget import keep_sensitive_in_float
from slimkit.techniques.quantize.heldout import MIN_ROWS, split_data, split_rows, take
from tests.models import mlp_data

WIDE = ModelRef(source="tests.models:tiny_mlp", kwargs={"width": 256})


def test_rows_from_one_source_are_held_out_together() -> None:
    groups = np.arange(300) % 15  # 15 photos, 20 crops each, interleaved
    data = Dataset({"x": np.zeros((300, 2), np.float32)}, None, "crops", groups)
    split = split_data(data, 300)
    assert split.by == "groups" and split.report()["heldout_by"] == "groups"
    assert not set(groups[split.search]) & set(groups[split.heldout])
    assert len(split.heldout) >= 100 and len(split.search) + len(split.heldout) == 300
    assert set(take(data, split.heldout).groups) == set(groups[split.heldout])  # type: ignore[arg-type]
    # too few sources to hold any out whole: rows one by one
    assert split_rows(300, groups=np.arange(300) % 2).by == "rows"
    # one photo with most of the crops: holding it out would leave little to search on
    assert split_rows(300, groups=np.r_[np.zeros(250), np.arange(50) % 5 + 1]).by == "rows"


def test_split_is_seeded_disjoint_and_holds_out_a_third_or_64() -> None:
    split = split_rows(384)
    assert len(split.heldout) == 128 and len(split.search) == 256
    assert not set(split.search) & set(split.heldout)
    assert np.array_equal(split.heldout, split_rows(384).heldout)
    assert len(split_rows(150).heldout) == 64  # at least 64 where the data allows
    assert len(split_rows(64).heldout) == 32  # never more than half
    tiny = split_rows(MIN_ROWS - 1)
    assert len(tiny.heldout) == 0 and "no held-out check" in str(tiny.report()["heldout_note"])


def test_walk_goes_on_when_only_the_held_out_rows_fail() -> None:
    errors = {"a": 0.004, "b": 0.003, "c": 0.001}
    held_errors = {"a": 0.004, "b": 0.010, "c": 0.001}  # b does worse on rows it never saw

    def search(only: list[str] | None, exclude: list[str]) -> Fidelity:
        return Fidelity(1 - sum(errors[n] for n in (only or errors) if n not in exclude))

    def held(exclude: list[str]) -> Fidelity:
        return Fidelity(1 - sum(v for n, v in held_errors.items() if n not in exclude))

    budget = Budget(min_cosine=0.995)
    alone = keep_sensitive_in_float(list(errors), budget, search)
    assert alone.kept_float == ["a"]
    checked = keep_sensitive_in_float(list(errors), budget, search, heldout=held)
    assert checked.kept_float == ["a", "b"] and checked.heldout is not None
    assert checked.heldout.within(budget)
    why = {r["layer"]: r["why"] for r in checked.layers}
    assert "failed on the search rows" in why["a"] and "failed on the held-out rows" in why["b"]


def mlp() -> TorchModel:
    model = load_model(WIDE)
    assert isinstance(model, TorchModel)
    return model


def shifted(n: int = 96, scale: float = 6.0) -> Dataset:
    """Normal rows, except that the rows the split holds out are `scale` times larger: the
    activation ranges, fitted without them, clip them."""
    x = np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)
    x[split_rows(n).heldout] *= scale
    return Dataset({"x": x}, None, "shifted")


def report_of(step: dict[str, Any], fmt: str, data: Dataset, cache: Path) -> dict[str, Any]:
    model = mlp()
    built = build(model, model_key(model), [parse_step(step)], fmt, Cache(cache), data=data)
    return json.loads((built.path / "report.json").read_text())


@pytest.mark.parametrize(("technique", "fmt"), [("static_int8", "onnx"), ("torchao", "torch")])
def test_held_out_failure_keeps_more_layers_in_float(technique: str, fmt: str,
                                                     tmp_path: Path) -> None:
    options: dict[str, Any] = {"budget": {"min_cosine": 0.999}, "fallback": "sensitivity"}
    if technique == "torchao":
        options["scheme"] = "static_int8"
    step = {technique: options}
    normal = report_of(step, fmt, shifted(scale=1.0), tmp_path)
    assert normal["kept_float"] == [] and normal["within_budget_heldout"] is True
    assert normal["search_rows"] == 48 and normal["heldout_rows"] == 48
    report = report_of(step, fmt, shifted(), tmp_path)
    assert report["kept_float"], "the clipped held-out rows must send layers back to float"
    assert report["within_budget"] and report["within_budget_heldout"]
    assert report["heldout_cosine"] >= 0.999 and report["cosine"] >= 0.999
    first = next(r for r in report["layers"] if r["float_rank"] == 1)
    assert "failed on the held-out rows" in first["why"]


def test_tiny_data_says_there_was_no_held_out_check(tmp_path: Path) -> None:
    report = report_of({"dynamic_int8": {"budget": {"min_cosine": 0.9}}}, "onnx",
                       shifted(12, 1.0), tmp_path)
    assert report["heldout_rows"] == 0 and "heldout_cosine" not in report
    assert "no held-out check" in report["heldout_note"]


def test_nncf_reports_a_held_out_failure_it_cannot_repair(tmp_path: Path) -> None:
    # NNCF's int8 keeps a cosine near 0.995 on this MLP, so it meets 0.99 with every layer
    # quantized on the search rows; the clipped held-out rows fall far below that
    step = {"nncf_int8": {"samples": 48, "budget": {"min_cosine": 0.99}}}
    report = report_of(step, "openvino", shifted(), tmp_path)
    assert report["within_budget"] is True and report["cosine"] >= 0.99
    assert report["within_budget_heldout"] is False and report["heldout_cosine"] < 0.99
    assert report["search_rows"] == 48 and report["heldout_rows"] == 48


def test_keeping_every_layer_of_a_cnn_in_float_leaves_nothing_quantized(tmp_path: Path) -> None:
    """static_int8 quantizes a CNN's activations and residual Adds too; a budget that keeps
    every convolution in float must keep those in float with them, or it cannot get back to
    the float model at all (on MobileNetV2 it stayed 13.5 points down with all 53 layers
    "in float")."""
    import onnx

    model = load_model(ModelRef(source="tests.models:tiny_cnn"))
    x = np.random.default_rng(0).standard_normal((48, 3, 8, 8)).astype(np.float32)
    step = parse_step({"static_int8": {"budget": {"min_cosine": 0.9999999}}})
    built = build(model, model_key(model), [step], "onnx", Cache(tmp_path),
                  data=Dataset({"image": x}, None, "noise"))
    report = json.loads((built.path / "report.json").read_text())
    assert report["all_float"] and report["within_budget"] and report["cosine"] >= 0.9999999
    ops = {n.op_type for n in onnx.load(str(built.path / "model.onnx")).graph.node}
    assert "QuantizeLinear" not in ops and "Add" in ops
    plain = build(model, model_key(model), [parse_step("static_int8")], "onnx",
                  Cache(tmp_path), data=Dataset({"image": x}, None, "noise"))
    graph = onnx.load(str(plain.path / "model.onnx")).graph
    quantized = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert any("Add" in t or "Relu" in t for t in quantized)  # the chain is int8 otherwise


class TwoBranches(nn.Module):
    """Two Linear layers, each on half of the input. Branch b's weights have one large entry
    per row on an input that the data leaves at zero: its outputs stay ordinary, but each row's
    int8 step swamps its other weights, so b does most of the int8 damage."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for layer in (self.a, self.b):
                layer.weight.copy_(torch.randn(8, 8, generator=gen) / 3)
            self.b.weight[:, 0] *= 100

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x[:, :8]), self.b(x[:, 8:])], 1)


def test_nncf_reverts_the_most_damaging_layer_first(tmp_path: Path) -> None:
    """Handed outputs per item, NNCF reverted first the layer that helped least (both went
    back to float here); handed a score per item it reverts b, and b alone is enough."""
    torch.manual_seed(0)
    model = TorchModel(TwoBranches().eval(), [InputSpec(name="x", dtype="float32",
                                                        shape=["batch", 16])])
    x = np.random.default_rng(0).standard_normal((96, 16)).astype(np.float32)
    x[:, 8] = 0.0
    step = parse_step({"nncf_int8": {"samples": 48, "budget": {"min_cosine": 0.995}}})
    built = build(model, model_key(model), [step], "openvino", Cache(tmp_path),
                  data=Dataset({"x": x}, None, "zero-feature"))
    report = json.loads((built.path / "report.json").read_text())
    assert report["kept_float"] == ["/b/Gemm/WithoutBiases"] and report["layers_total"] == 2
    assert report["within_budget"] and report["within_budget_heldout"]


def bright(n: int = 64) -> Dataset:
    """Evaluation rows four times larger than the calibration rows: ranges fitted on the
    calibration data clip them."""
    data = mlp_data(n, seed=1)
    return Dataset({"x": data.inputs["x"] * 4}, data.labels, "bright")


def test_run_warns_when_the_evaluation_data_breaks_the_budget(tmp_path: Path) -> None:
    recipe = parse_recipe({
        "name": "budget", "model": {"source": "tests.models:tiny_mlp"},
        "data": {"source": "factory", "factory": "tests.quantize.test_budget_heldout:bright"},
        "calibration": {"source": "factory", "factory": "tests.models:mlp_data",
                        "kwargs": {"n": 96}},
        "evaluation": {"task": "classification"},
        "benchmark": {"threads": 1, "rounds": 1, "latency_runs": 1, "throughput_runs": 1},
        "candidates": [{"name": "base", "runtime": "onnxruntime", "baseline": True},
                       {"name": "int8", "runtime": "onnxruntime",
                        "steps": [{"static_int8": {"budget": {"min_cosine": 0.999}}}]}],
        "output": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")})
    doc = run_recipe(recipe)
    cand = next(c for c in doc["candidates"] if c["name"] == "int8")
    assert cand["quality"]["cosine"] < 0.999
    warned = [w for w in doc["warnings"] if w.startswith("int8: static_int8 budget")]
    assert len(warned) == 1, doc["warnings"]
    assert "min_cosine 0.999 held on calibration (" in warned[0]
    assert " search / " in warned[0] and " held out) but the evaluation cosine is " in warned[0]
    md = (tmp_path / "run" / "report.md").read_text()
    assert warned[0] in md and "on 48 held out" in md
