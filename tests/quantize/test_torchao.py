"""torchao PTQ on the torch runtime: int8/int4 output close to float, the quantized weights
stored as their integers (smaller on disk) and rebuilt from the record exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slimkit.artifact import load_artifact
from slimkit.errors import TechniqueError
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import RuntimeOptions, get_runtime
from tests.models import eager, sqnr
from tests.quantize.test_ptq import calib, cosine_mean, mlp


def weights_bytes(path: Path) -> int:
    return (path / "model.safetensors").stat().st_size


@pytest.fixture(scope="module")
def fp32_bytes(shared_cache_dir: Path) -> int:
    model = mlp()
    built = build(model, model_key(model), [], "torch", Cache(shared_cache_dir))
    return weights_bytes(built.path)


@pytest.mark.parametrize(("step", "floor_db", "shrink"), [
    ({"torchao": {"scheme": "dynamic_int8"}}, 25, 0.35),
    ({"torchao": {"scheme": "static_int8"}}, 22, 0.35),
    ({"torchao": {"scheme": "static_int8", "calibration": "mse"}}, 22, 0.35),
    ({"torchao": {"scheme": "weight_int8"}}, 30, 0.35),
    ({"torchao": {"scheme": "weight_int4", "group_size": 16}}, 12, 0.3),
])
def test_torchao_output_stays_close_and_reloads_exactly(step: dict, floor_db: float,
                                                        shrink: float, shared_cache_dir: Path,
                                                        fp32_bytes: int) -> None:
    model = mlp()
    built = build(model, model_key(model), [parse_step(step)], "torch", Cache(shared_cache_dir),
                  data=calib())
    x = calib(32, seed=9).inputs["x"]
    ref = eager(model, x)
    out = eager(built.model, x)  # type: ignore[arg-type]
    assert floor_db < sqnr(ref, out) < 80
    reloaded = load_artifact(built.path, trust_code=True)
    np.testing.assert_array_equal(eager(reloaded, x), out)  # type: ignore[arg-type]
    session = get_runtime("torch", RuntimeOptions(threads=1)).load(reloaded)
    np.testing.assert_allclose(session.run({"x": x})[0], out, rtol=1e-5, atol=1e-6)
    # the integers, not float copies, are on disk: int8 about 1/4, int4 about 1/8 plus scales
    assert weights_bytes(built.path) < shrink * fp32_bytes


def test_static_scales_are_recorded_for_rebuild(shared_cache_dir: Path) -> None:
    model = mlp()
    built = build(model, model_key(model), [parse_step({"torchao": {"scheme": "static_int8"}})],
                  "torch", Cache(shared_cache_dir), data=calib())
    record = json.loads((built.path / "artifact.json").read_text())
    scales = record["steps"][-1]["scales"]
    assert sorted(scales) == ["net.0", "net.2", "net.4"]
    assert all(s > 0 and rank == 2 for s, rank in scales.values())


def test_budget_keeps_sensitive_linears_in_float(tmp_path: Path) -> None:
    model = mlp()
    data = calib()
    plain = build(model, model_key(model), [parse_step({"torchao": {"scheme": "static_int8"}})],
                  "torch", Cache(tmp_path), data=data)
    x = data.inputs["x"]
    plain_cos = cosine_mean(eager(model, x), eager(plain.model, x))  # type: ignore[arg-type]
    target = 1 - (1 - plain_cos) / 4
    step = {"torchao": {"scheme": "static_int8", "budget": {"min_cosine": float(target)}}}
    built = build(model, model_key(model), [parse_step(step)], "torch", Cache(tmp_path),
                  data=data)
    report = json.loads((built.path / "report.json").read_text())
    assert 1 <= len(report["kept_float"]) < 3 and report["cosine"] >= target
    record = json.loads((built.path / "artifact.json").read_text())
    assert record["steps"][-1]["exclude"] == report["kept_float"]
    reloaded = load_artifact(built.path, trust_code=True)
    np.testing.assert_array_equal(eager(reloaded, x), eager(built.model, x))  # type: ignore


def test_yaml_round_trip_and_clear_errors(tmp_path: Path) -> None:
    config = parse_step({"torchao": {"scheme": "weight_int4", "group_size": 64}})
    again = parse_step(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
    assert again == config
    with pytest.raises(ValueError, match="scheme"):
        parse_step({"torchao": {"scheme": "int3"}})
    model = mlp()
    with pytest.raises(TechniqueError, match="calibration data"):
        build(model, model_key(model), [parse_step({"torchao": {"scheme": "static_int8"}})],
              "torch", Cache(tmp_path))
    with pytest.raises(TechniqueError, match="exclude"):
        build(model, model_key(model), [parse_step({"torchao": {"exclude": ["nope"]}})],
              "torch", Cache(tmp_path))
    with pytest.raises(TechniqueError):  # torchao's tensors are for the torch runtime
        build(model, model_key(model), [parse_step("torchao")], "onnx", Cache(tmp_path))


def test_minmax_scales_are_the_exact_input_extremes(tmp_path: Path) -> None:
    model, data = mlp(), calib()
    step = {"torchao": {"scheme": "static_int8", "calibration": "minmax"}}
    built = build(model, model_key(model), [parse_step(step)], "torch", Cache(tmp_path),
                  data=data)
    scales = json.loads((built.path / "artifact.json").read_text())["steps"][-1]["scales"]
    h = torch.from_numpy(data.inputs["x"])
    with torch.no_grad():
        for i, layer in enumerate(model.module.net):
            if isinstance(layer, torch.nn.Linear):
                assert scales[f"net.{i}"][0] == float(h.abs().max()) / 127.0
            h = layer(h)
