"""SmoothQuant keeps the float function, lowers the int8 error where outliers are, and rebuilds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import get_runtime
from slimkit.techniques.quantize.smooth import _int8_error
from tests.models import eager, trusted

REF = ModelRef(source="tests.models:tiny_mlp", kwargs={"width": 64})


def outlier_data(n: int = 256, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    x[:, 3] *= 60.0  # one input channel far larger than the rest
    return Dataset({"x": x}, None, "outliers")


def test_smoothing_lowers_int8_error_of_an_outlier_channel():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((512, 32)).astype(np.float32)
    x[:, 5] *= 80
    w = rng.standard_normal((16, 32)).astype(np.float32)
    s = np.abs(x).max(0) ** 0.5 / np.abs(w).max(0) ** 0.5
    assert _int8_error(x, w, s) < _int8_error(x, w, np.ones(32, np.float32)) / 3


def test_float_function_is_unchanged_and_the_record_rebuilds_it(tmp_path: Path):
    model = load_model(REF)
    assert isinstance(model, TorchModel)
    data = outlier_data()
    built = build(model, model_key(model), [parse_step("smooth_quant")], "torch",
                  Cache(tmp_path), data=data)
    report = json.loads((built.path / "report.json").read_text())
    assert [r["layer"] for r in report["layers"]] == ["net.0"]  # only the outlier input
    assert report["layers"][0]["int8_error"] < report["layers"][0]["int8_error_unsmoothed"]
    x = outlier_data(32, seed=5).inputs["x"]
    reloaded = trusted(built.path)  # rebuilt from the recorded layer list, then weights
    out = get_runtime("torch").load(reloaded).run({"x": x})[0]
    np.testing.assert_allclose(out, eager(model, x), rtol=1e-4, atol=1e-4)
    saved = json.loads((built.path / "artifact.json").read_text())["steps"][-1]
    assert saved["layers"] == ["net.0"]


def test_smoothing_helps_int8_on_onnxruntime(tmp_path: Path):
    model = load_model(REF)
    assert isinstance(model, TorchModel)
    data, x = outlier_data(), outlier_data(64, seed=7).inputs["x"]
    ref = eager(model, x)

    def error(steps: list) -> float:
        built = build(model, model_key(model), [parse_step(s) for s in steps], "onnx",
                      Cache(tmp_path), data=data)
        out = get_runtime("onnxruntime").load(trusted(built.path)).run({"x": x})[0]
        return float(((out - ref) ** 2).mean())

    plain = error([{"static_int8": {"calibration": "minmax"}}])
    smoothed = error(["smooth_quant", {"static_int8": {"calibration": "minmax"}}])
    assert smoothed < plain * 0.8


def test_named_layers_are_checked_before_calibration(tmp_path: Path):
    model = load_model(REF)
    assert isinstance(model, TorchModel)
    with pytest.raises(TechniqueError, match="not a Linear layer"):
        build(model, model_key(model), [parse_step({"smooth_quant": {"layers": ["net.1"]}})],
              "torch", Cache(tmp_path), data=outlier_data())
