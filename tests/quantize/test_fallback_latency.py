"""Which layers a budget keeps in float: most error removed per share of the float model's
measured run time, so a cheap sensitive layer goes back to float before a costly one that is
only slightly more sensitive; ranking by error alone remains an option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.data import Dataset
from slimkit.evaluate.fidelity import Budget, Fidelity
from slimkit.model import InputSpec, TorchModel
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.techniques.quantize.budget import float_order, keep_sensitive_in_float
from slimkit.techniques.quantize.layer_costs import LayerCosts

CHEAP, COSTLY = "/cheap/Gemm", "/costly/Gemm"


def test_error_per_time_share_puts_a_cheap_sensitive_layer_first() -> None:
    sensitivity = {"costly": 1.0, "cheap": 0.8, "mild": 0.1}
    shares = {"costly": 0.6, "cheap": 0.05, "mild": 0.35}
    assert float_order(list(sensitivity), sensitivity, shares) == ["cheap", "costly", "mild"]
    same = dict.fromkeys(shares, 1 / 3)  # equal costs: a plain sort by error
    assert float_order(list(sensitivity), sensitivity, same) == ["costly", "cheap", "mild"]
    # a layer that measured no time at all still goes back, and first: it costs nothing
    zero = {**shares, "mild": 0.0}
    assert float_order(list(sensitivity), sensitivity, zero)[0] == "mild"


def _additive(errors: dict[str, float]) -> Any:
    def evaluate(only: list[str] | None, exclude: list[str]) -> Fidelity:
        return Fidelity(1.0 - sum(errors[n] for n in (only or errors) if n not in exclude))
    return evaluate


def test_the_walk_keeps_the_cheap_layer_and_says_why() -> None:
    errors = {"costly": 0.010, "cheap": 0.008, "mild": 0.001}
    budget = Budget(min_cosine=0.985)  # either big layer alone in float is enough
    costs = LayerCosts({"costly": 0.6, "cheap": 0.05, "mild": 0.35}, "measured", True)
    by_time = keep_sensitive_in_float(list(errors), budget, _additive(errors),
                                      costs=lambda: costs)
    by_error = keep_sensitive_in_float(list(errors), budget, _additive(errors))
    assert by_time.kept_float == ["cheap"] and by_error.kept_float == ["costly"]
    rows = {r["layer"]: r for r in by_time.layers}
    assert rows["cheap"]["time_share"] == 0.05 and rows["cheap"]["float_rank"] == 1
    assert "per share of run time" in rows["cheap"]["why"]
    assert "search rows" in rows["cheap"]["why"]
    assert rows["costly"]["precision"] == "int8" and "held before" in rows["costly"]["why"]
    assert [r["layer"] for r in by_time.layers] == ["costly", "cheap", "mild"]
    assert all(r["time_share"] is None for r in by_error.layers)


class Branches(nn.Module):
    """Two Linear layers side by side, each on half of the input, each giving half of the
    output: a tiny one, and a wide one of which 8 outputs are used (its cost is the whole
    layer). A single large weight per row swamps each row's int8 step, so quantizing either
    hurts, the wide one somewhat more; the wide one costs many times the tiny one."""

    def __init__(self, wide: int = 16384) -> None:
        super().__init__()
        self.cheap = nn.Linear(8, 8)
        self.costly = nn.Linear(8, wide)
        for layer, spike, seed in ((self.cheap, 40.0, 1), (self.costly, 30.0, 2)):
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                w = torch.randn(layer.weight.shape, generator=gen) / 3
                w[:, 0] *= spike
                layer.weight.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cheap(x[:, :8]), self.costly(x[:, 8:])[:, :8]], 1)


@pytest.fixture(scope="module")
def branches() -> TorchModel:
    torch.manual_seed(0)
    return TorchModel(Branches().eval(), [InputSpec(name="x", dtype="float32",
                                                    shape=["batch", 16])])


def quantize(model: TorchModel, cache: Path, min_cosine: float,
             fallback: str) -> dict[str, Any]:
    x = np.random.default_rng(0).standard_normal((192, 16)).astype(np.float32)
    step = parse_step({"static_int8": {"budget": {"min_cosine": min_cosine},
                                       "fallback": fallback}})
    built = build(model, model_key(model), [step], "onnx", Cache(cache),
                  data=Dataset({"x": x}, None, "normal"))
    return json.loads((built.path / "report.json").read_text())


def test_onnxruntime_keeps_the_cheap_layer_where_error_alone_keeps_the_costly(
        branches: TorchModel, tmp_path: Path) -> None:
    scan = quantize(branches, tmp_path, 0.9999999, "sensitivity")  # each layer's error
    error = {r["layer"]: r["sensitivity"] for r in scan["layers"]}
    assert error[COSTLY] > error[CHEAP]
    # Quantized together, the two errors add up (their noise is independent): this budget
    # fails with both in int8, and holds with either alone back in float.
    target = 1 - (error[COSTLY] + error[CHEAP] / 2)
    by_error = quantize(branches, tmp_path, target, "sensitivity")
    assert by_error["kept_float"] == [COSTLY]
    by_time = quantize(branches, tmp_path, target, "latency")
    assert by_time["kept_float"] == [CHEAP], by_time["layers"]
    assert by_time["fallback"] == "latency"
    assert by_time["layer_costs"].startswith("ONNX Runtime profile of the float model")
    rows = {r["layer"]: r for r in by_time["layers"]}
    assert rows[CHEAP]["time_share"] * 2 < rows[COSTLY]["time_share"]
    assert rows[CHEAP]["float_rank"] == 1 and rows[CHEAP]["precision"] == "float"
    assert by_time["within_budget"] and by_time["within_budget_heldout"]
    assert by_error["fallback"] == "sensitivity"
    assert by_error["layer_costs"] == "equal: ranked by sensitivity alone"


def test_torchao_times_each_linear_with_the_torch_profiler(tmp_path: Path) -> None:
    from slimkit.techniques.quantize.layer_costs import torch_costs

    torch.manual_seed(0)
    model = TorchModel(Branches().eval(), [InputSpec(name="x", dtype="float32",
                                                     shape=["batch", 16])])
    data = Dataset({"x": np.ones((128, 16), np.float32)}, None, "ones")
    costs = torch_costs(model, ["cheap", "costly"], data, threads=1)
    assert costs.measured and costs.source.startswith("torch profile")
    assert costs.shares["cheap"] < costs.shares["costly"]
    assert 0 < sum(costs.shares.values()) <= 1.0
