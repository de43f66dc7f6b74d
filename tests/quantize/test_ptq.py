"""Post-training quantization on every runtime: int8 output close to float, files smaller,
and the accuracy-aware search keeping layers in float until its budget holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.model import ModelRef, TorchModel, load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import RuntimeOptions, get_runtime, runtime_format
from tests.models import eager, perturb, sqnr, trusted

WIDE = ModelRef(source="tests.models:tiny_mlp", kwargs={"width": 256})
FILES = {"onnxruntime": ["model.onnx"], "openvino": ["model.xml", "model.bin"]}


def mlp() -> TorchModel:
    model = load_model(WIDE)
    assert isinstance(model, TorchModel)
    return perturb(model)


def calib(n: int = 64, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset({"x": rng.standard_normal((n, 16)).astype(np.float32)}, None, "calib")


def run(model: TorchModel, steps: list[dict], runtime: str, cache: Path,
        x: np.ndarray) -> tuple[Built, np.ndarray]:
    built = build(model, model_key(model), [parse_step(s) for s in steps],
                  runtime_format(runtime), Cache(cache), data=calib())
    session = get_runtime(runtime, RuntimeOptions(threads=1)).load(trusted(built.path))
    return built, session.run({"x": x})[0]


def cosine_mean(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(1)
    return float((num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).mean())


def size(built: Built, runtime: str) -> int:
    return sum((built.path / f).stat().st_size for f in FILES[runtime])


@pytest.fixture(scope="module")
def fp32_size(shared_cache_dir: Path) -> dict[str, int]:
    x = calib(4).inputs["x"]
    return {rt: size(run(mlp(), [], rt, shared_cache_dir, x)[0], rt) for rt in FILES}


@pytest.mark.parametrize(("runtime", "step", "floor_db"), [
    ("onnxruntime", {"static_int8": {}}, 25),
    ("onnxruntime", {"static_int8": {"calibration": "mse"}}, 25),
    ("onnxruntime", {"static_int8": {"calibration": "minmax", "per_channel": False}}, 20),
    ("onnxruntime", {"dynamic_int8": {}}, 25),
    ("openvino", {"nncf_int8": {"samples": 64}}, 15),
    ("onnxruntime", {"weight_only_int4": {"group_size": 16}}, 12),
    ("openvino", {"weight_compress": {"mode": "int4_sym", "group_size": 16,
                                      "all_layers": True}}, 12),
    ("openvino", {"weight_compress": {"mode": "int8_asym"}}, 25),
])
def test_quantized_output_stays_close_and_file_shrinks(runtime: str, step: dict, floor_db: float,
                                                       shared_cache_dir: Path,
                                                       fp32_size: dict[str, int]) -> None:
    model = mlp()
    x = calib(32, seed=9).inputs["x"]
    built, out = run(model, [step], runtime, shared_cache_dir, x)
    ref = eager(model, x)
    assert sqnr(ref, out) > floor_db
    assert sqnr(ref, out) < 80, "nothing was quantized"
    assert size(built, runtime) < 0.5 * fp32_size[runtime]


def test_static_int8_puts_qdq_around_matmuls_only_by_default(shared_cache_dir: Path) -> None:
    built, _ = run(mlp(), [{"static_int8": {}}], "onnxruntime", shared_cache_dir,
                   calib(2).inputs["x"])
    graph = onnx.load(str(built.path / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "DequantizeLinear" in ops and "QuantizeLinear" in ops
    report = json.loads((built.path / "report.json").read_text())
    assert report["kept_float"] == [] and report["layers_total"] == 3
    assert (built.path / "calibration_ranges.json").is_file()


@pytest.mark.parametrize("technique", ["static_int8", "dynamic_int8"])
def test_budget_keeps_the_most_sensitive_layers_in_float(technique: str, tmp_path: Path) -> None:
    model = mlp()
    x = calib().inputs["x"]  # the rows the search checks its budget on
    _, plain = run(model, [{technique: {}}], "onnxruntime", tmp_path, x)
    plain_cos = cosine_mean(eager(model, x), plain)
    # Half the error of full quantization: some, not all, layers go back to float. The three
    # layers' errors roughly add up, so two in float always suffice, whether the error sits
    # in one layer (u8s8 saturating on AVX2) or is spread evenly (7-bit weights, VNNI).
    target = 1 - (1 - plain_cos) / 2
    built, out = run(model, [{technique: {"budget": {"min_cosine": float(target)}}}],
                     "onnxruntime", tmp_path, x)
    report = json.loads((built.path / "report.json").read_text())
    assert 1 <= len(report["kept_float"]) < 3
    assert report["cosine"] >= target
    assert {r["precision"] for r in report["layers"]} == {"int8", "float"}
    ranked = [r["sensitivity"] for r in report["layers"]]
    assert ranked == sorted(ranked, reverse=True)
    assert cosine_mean(eager(model, x), out) > plain_cos


def test_budget_is_part_of_the_cache_key(tmp_path: Path) -> None:
    model = mlp()
    key = model_key(model)
    a = build(model, key, [parse_step({"static_int8": {}})], "onnx", Cache(tmp_path),
              data=calib(seed=1))
    b = build(model, key, [parse_step({"static_int8": {}})], "onnx", Cache(tmp_path),
              data=calib(seed=2))
    assert a.key != b.key  # other calibration data, other artifact


def test_static_int8_without_data_is_refused(tmp_path: Path) -> None:
    model = mlp()
    with pytest.raises(TechniqueError, match="calibration data"):
        build(model, model_key(model), [parse_step("static_int8")], "onnx", Cache(tmp_path))


def test_int8_is_refused_where_it_would_not_run(tmp_path: Path) -> None:
    model = mlp()
    for step, runtime in [("nncf_int8", "onnx"), ("static_int8", "openvino"),
                          ("weight_only_int4", "openvino")]:
        with pytest.raises(TechniqueError):
            build(model, model_key(model), [parse_step(step)], runtime, Cache(tmp_path),
                  data=calib())


def test_nncf_accuracy_control_meets_its_budget(tmp_path: Path) -> None:
    model = mlp()
    x = calib(32, seed=4).inputs["x"]
    built, out = run(model, [{"nncf_int8": {"samples": 64, "budget": {"min_cosine": 0.999}}}],
                     "openvino", tmp_path, x)
    assert cosine_mean(eager(model, x), out) > 0.995
    import openvino as ov

    ir = ov.Core().read_model(str(built.path / "model.xml"))
    ops = {op.get_type_name() for op in ir.get_ops()}
    assert "FakeQuantize" in ops or cosine_mean(eager(model, x), out) > 0.9999
