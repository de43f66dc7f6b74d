"""Mixed-precision allocation: the knapsack by hand, and the result rebuilt from its record."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimkit.artifact import load_artifact
from slimkit.errors import TechniqueError
from slimkit.examples import digits
from slimkit.model import load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import get_runtime
from slimkit.techniques.quantize.mixed import allocate

SENS = [{4: 1.0, 8: 0.1, 16: 0.0},   # a sensitive layer
        {4: 0.05, 8: 0.01, 16: 0.0},  # a robust one
        {4: 0.5, 8: 0.02, 16: 0.0}]


def test_precision_goes_where_it_removes_most_error_per_bit():
    sizes = [100, 100, 100]
    assert allocate(sizes, SENS, [4, 8, 16], 100 * (4 + 4 + 4)) == [4, 4, 4]
    # room for one upgrade to 8 bits: the sensitive layer gets it
    assert allocate(sizes, SENS, [4, 8, 16], 100 * (8 + 4 + 4)) == [8, 4, 4]
    assert allocate(sizes, SENS, [4, 8, 16], 100 * (8 + 4 + 8)) == [8, 4, 8]
    assert allocate(sizes, SENS, [4, 8, 16], 100 * 48) == [16, 16, 16]
    with pytest.raises(TechniqueError, match="exceed the budget"):
        allocate(sizes, SENS, [4, 8, 16], 100)


def test_cost_counts_bytes_not_layers():
    # the sensitive layer is ten times larger: upgrading the small one buys more per bit
    assert allocate([1000, 100, 100], SENS, [4, 8], 1000 * 4 + 100 * 8 + 100 * 8) == [4, 8, 8]


@pytest.mark.slow
def test_digits_under_a_tight_budget_beats_uniform_2bit(tmp_path: Path):
    model = load_model("slimkit.examples.digits:load_model")
    train, test, cache = digits.load_data("train"), digits.load_data("test"), Cache(tmp_path)

    def accuracy(step: dict, runtime: str, fmt: str) -> tuple[float, Path]:
        built = build(model, model_key(model), [parse_step(step)], fmt, cache, data=train)
        out = get_runtime(runtime).load(load_artifact(built.path)).run(test.inputs)[0]
        return float((out.argmax(1) == test.labels).mean()), built.path

    uniform, _ = accuracy({"qat": {"weight_bits": 2, "epochs": 0}}, "onnxruntime", "onnx")
    step = {"mixed_precision": {"size_budget": 0.07, "bits": [2, 4, 8, 16]}}
    mixed, _ = accuracy(step, "onnxruntime", "onnx")
    reloaded, path = accuracy(step, "torch", "torch")  # rebuilt from the recorded allocation
    assert mixed > uniform + 0.05
    assert reloaded == pytest.approx(mixed, abs=0.01)
    report = json.loads((path / "report.json").read_text())
    assert report["weight_size_ratio"] <= 0.07
    assert set(report["bits"].values()) <= {2, 4, 8, 16} and len(set(report["bits"].values())) > 1
    saved = json.loads((path / "artifact.json").read_text())["steps"][-1]
    assert saved["allocation"] == report["bits"]
    assert np.isfinite([r["sensitivity"] for r in report["layers"]]).all()
