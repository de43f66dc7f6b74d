from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from slimkit.artifact import is_artifact, load_artifact
from slimkit.data import Dataset
from slimkit.errors import TechniqueError
from slimkit.export import path_between
from slimkit.io import atomic_dir
from slimkit.model import FileModel, Model, ModelRef, TorchModel, load_model
from slimkit.pipeline import Cache, build, default_cache_dir, model_key, plan, step_key
from slimkit.registry import StepContext
from slimkit.techniques.cast import Cast
from slimkit.techniques.dynamic_int8 import DynamicInt8, dynamic_int8_torch
from slimkit.techniques.quantize.ort_kernels import pick_int8_mode
from tests.models import batch, eager, perturb


def mlp(width: int = 32, seed: int = 0) -> TorchModel:
    model = load_model(ModelRef(source="tests.models:tiny_mlp",
                                kwargs={"width": width, "seed": seed}))
    assert isinstance(model, TorchModel)
    return model


def cache_entries(root: Path) -> list[Path]:
    """Every directory two levels under artifacts/, hidden temporaries included."""
    base = root / "artifacts"
    return sorted(p for prefix in base.iterdir() for p in prefix.iterdir()) if base.exists() else []


# --- plan -----------------------------------------------------------------------------------

def test_path_between() -> None:
    assert path_between("torch", "openvino") == ["torch", "onnx", "openvino"]
    assert path_between("onnx", "onnx") == ["onnx"]
    with pytest.raises(TechniqueError, match="cannot be turned back"):
        path_between("openvino", "torch")


@pytest.mark.parametrize(("steps", "target", "expected"), [
    ([DynamicInt8()], "onnx", ["onnx"]),
    ([DynamicInt8()], "torch", ["torch"]),
    ([Cast()], "torch", ["torch"]),
    ([Cast(dtype="fp16")], "onnx", ["onnx"]),
    ([Cast()], "openvino", ["openvino"]),
    ([Cast(dtype="fp16"), DynamicInt8()], "onnx", ["onnx", "onnx"]),
    ([], "openvino", []),
])
def test_plan_picks_the_latest_supported_format(steps: list, target: str,
                                                expected: list[str]) -> None:
    assert plan("torch", steps, target) == expected  # type: ignore[arg-type]


def test_plan_refuses_an_implementation_meant_for_another_runtime() -> None:
    # ORT's int8 operators would only be unpacked again by OpenVINO: no gain, so no plan
    with pytest.raises(TechniqueError, match="dynamic_int8 cannot run between torch and openvino"):
        plan("torch", [DynamicInt8()], "openvino")


def test_plan_never_moves_back() -> None:
    # once the model is OpenVINO IR, dynamic_int8 (torch, onnx) has nowhere to run
    with pytest.raises(TechniqueError, match="dynamic_int8 cannot run between openvino"):
        plan("openvino", [DynamicInt8()], "openvino")
    # a step after a cast to openvino cannot go back to onnx either
    with pytest.raises(TechniqueError, match="dynamic_int8"):
        plan("torch", [Cast(), DynamicInt8()], "openvino")
    with pytest.raises(TechniqueError, match="cannot be turned back"):
        plan("onnx", [Cast(dtype="fp16")], "torch")


# --- build and the cache ----------------------------------------------------------------------

def test_build_lineage_and_rebuild_is_cached(tmp_path: Path) -> None:
    base = mlp()
    key = model_key(base)
    steps = [DynamicInt8()]
    seen: list[str] = []
    first = build(base, key, steps, "onnx", Cache(tmp_path), on_step=seen.append)
    assert [s.step for s in first.steps] == ["export_onnx", "dynamic_int8"]
    assert [s.format for s in first.steps] == ["onnx", "onnx"]
    assert seen == ["export_onnx", "dynamic_int8"]
    assert not any(s.cached for s in first.steps)
    assert first.key == first.steps[-1].key != key
    assert first.path == Cache(tmp_path).path(first.key)
    assert is_artifact(first.path)
    assert isinstance(first.model, FileModel) and first.model.format == "onnx"
    lineage = first.lineage()
    # all defaults but the int8 mode this CPU chose; the key still covers every option
    assert lineage[1]["options"] == {"int8_mode": pick_int8_mode()[0]}
    changed = build(base, key, [DynamicInt8(per_channel=False)], "onnx", Cache(tmp_path / "b"))
    assert changed.lineage()[1]["options"] == {"per_channel": False,
                                             "int8_mode": pick_int8_mode()[0]}

    again = build(mlp(), model_key(mlp()), steps, "onnx", Cache(tmp_path))
    assert all(s.cached for s in again.steps)
    assert again.key == first.key
    assert [s.key for s in again.steps] == [s.key for s in first.steps]
    assert again.path == first.path
    assert len(cache_entries(tmp_path)) == 2


def test_changing_an_option_changes_the_key(tmp_path: Path) -> None:
    base = mlp()
    key = model_key(base)
    a = build(base, key, [DynamicInt8(per_channel=True)], "onnx", Cache(tmp_path))
    b = build(base, key, [DynamicInt8(per_channel=False)], "onnx", Cache(tmp_path))
    assert a.key != b.key
    # the shared export is reused, the changed step is not
    assert a.steps[0].key == b.steps[0].key and b.steps[0].cached
    assert not b.steps[1].cached
    c = build(base, key, [DynamicInt8(int8_mode="u8u8")], "onnx", Cache(tmp_path))
    assert len({a.key, b.key, c.key}) == 3


def test_changing_the_weights_changes_the_key() -> None:
    assert model_key(mlp()) == model_key(mlp())
    assert model_key(mlp(seed=1)) != model_key(mlp())
    assert model_key(perturb(mlp())) != model_key(mlp())
    # the same weights from another source are another model
    other = mlp()
    other.ref = ModelRef(source="tests.models:tiny_mlp", kwargs={"width": 32, "seed": 0},
                         head="base")
    assert model_key(other) != model_key(mlp())


def test_file_model_key_follows_content_and_session_options(tmp_path: Path) -> None:
    built = build(mlp(), model_key(mlp()), [], "onnx", Cache(tmp_path / "c"))
    model = load_artifact(built.path, trust_code=True)
    assert isinstance(model, FileModel)
    key = model_key(model)
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(model.path.read_bytes())
    assert model_key(FileModel("onnx", copy, model.inputs)) == key
    assert model_key(FileModel("onnx", copy, model.inputs, None, {"x": 1})) != key
    copy.write_bytes(model.path.read_bytes() + b"\0")
    assert model_key(FileModel("onnx", copy, model.inputs)) != key


def test_quantized_torch_key_follows_weights(tmp_path: Path) -> None:
    ctx = StepContext(tmp_path)
    a = dynamic_int8_torch(mlp(), DynamicInt8(), ctx)
    b = dynamic_int8_torch(perturb(mlp()), DynamicInt8(), ctx)
    assert model_key(a) != model_key(b)


def test_build_without_steps_keeps_the_model(tmp_path: Path) -> None:
    base = mlp()
    key = model_key(base)
    built = build(base, key, [], "torch", Cache(tmp_path))
    assert [(s.step, s.cached) for s in built.steps] == [("save", False)]
    assert built.key == key
    assert is_artifact(built.path)
    again = build(base, key, [], "torch", Cache(tmp_path))
    assert [(s.step, s.cached) for s in again.steps] == [("save", True)]
    x = batch(base.inputs, 3)["x"]
    loaded = again.model
    assert isinstance(loaded, TorchModel)
    np.testing.assert_array_equal(eager(loaded, x), eager(base, x))


def test_a_failing_step_leaves_nothing_in_the_cache(tmp_path: Path) -> None:
    base = mlp()
    with pytest.raises(TechniqueError, match="cast bf16"):
        build(base, model_key(base), [Cast(dtype="bf16")], "onnx", Cache(tmp_path))
    entries = cache_entries(tmp_path)
    # only the finished export remains, complete; no half-written cast directory
    assert len(entries) == 1
    assert is_artifact(entries[0]) and not entries[0].name.startswith(".")
    assert (entries[0] / "model.onnx").is_file()


def test_an_interrupted_step_leaves_nothing(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    key = "ab" + "0" * 62

    def make(d: Path) -> Model:
        (d / "model.onnx").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.produce(key, make)
    assert cache.get(key) is None
    assert not cache.path(key).exists()
    assert list(cache.path(key).parent.iterdir()) == []


def test_atomic_dir_replaces_whole_or_keeps_old(tmp_path: Path) -> None:
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b").write_text("2")
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_step_key_depends_on_input_step_and_data() -> None:
    ds1 = Dataset({"x": np.zeros((2, 16), np.float32)})
    ds2 = Dataset({"x": np.ones((2, 16), np.float32)})
    k = step_key("in", {"step": "s", "a": 1}, None)
    assert k == step_key("in", {"step": "s", "a": 1}, None)
    assert len({k, step_key("in2", {"step": "s", "a": 1}, None),
                step_key("in", {"step": "s", "a": 2}, None),
                step_key("in", {"step": "s", "a": 1}, ds1),
                step_key("in", {"step": "s", "a": 1}, ds2)}) == 5


def test_default_cache_dir_honours_env(session_cache_dir: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_cache_dir() == session_cache_dir == Path(os.environ["SLIMKIT_CACHE"])
    assert Cache().root == session_cache_dir
    monkeypatch.delenv("SLIMKIT_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "slimkit"


def test_cast_on_torch_leaves_the_base_model_alone(tmp_path: Path) -> None:
    base = mlp()
    key = model_key(base)
    x = batch(base.inputs, 4)["x"]
    before = eager(base, x)
    # CastIO casts its inner module in place; build must hand techniques a private copy
    build(base, key, [Cast(dtype="fp16")], "torch", Cache(tmp_path))
    assert all(p.dtype == torch.float32 for p in base.module.parameters())
    np.testing.assert_array_equal(eager(base, x), before)
    assert model_key(base) == key
    # what run_recipe does next with the same base: another candidate
    build(base, key, [], "onnx", Cache(tmp_path))


def test_a_candidate_trains_on_its_own_calibration_data(tmp_path: Path) -> None:
    from slimkit.config import parse_recipe
    from slimkit.run import run_recipe

    data = {"source": "factory", "factory": "tests.models:mlp_data", "kwargs": {"n": 64}}
    steps = [{"distill": {"teacher": "tests.models:tiny_mlp", "epochs": 1, "batch_size": 8}}]
    recipe = parse_recipe({
        "name": "own-data", "model": {"source": "tests.models:tiny_mlp"},
        "data": {**data, "limit": 8}, "calibration": data,
        "benchmark": {"threads": 1, "rounds": 1, "latency_runs": 1, "throughput_runs": 1},
        "candidates": [
            {"name": "base", "runtime": "torch", "baseline": True},
            {"name": "shared", "runtime": "torch", "steps": steps},
            {"name": "own", "runtime": "torch", "steps": steps,
             "calibration": {**data, "limit": 16}}],
        "output": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")})
    doc = run_recipe(recipe)
    shared, own = doc["candidates"][1:]
    assert shared["steps"][-1]["key"] != own["steps"][-1]["key"]
    reports = {c["name"]: c["details"]["0:distill"]["steps"] for c in doc["candidates"][1:]}
    assert reports == {"shared": 8, "own": 2}  # 64 and 16 rows in batches of 8, one epoch


def test_the_output_folder_holds_this_run_alone(tmp_path: Path) -> None:
    """A candidate renamed, or failed, and an error log from an earlier run are not left
    behind to pass as this run's."""
    from slimkit.config import parse_recipe
    from slimkit.run import run_recipe

    def recipe(candidates: list[dict]) -> Any:
        return parse_recipe({
            "name": "twice", "model": {"source": "tests.models:tiny_mlp"},
            "data": {"source": "factory", "factory": "tests.models:mlp_data", "kwargs": {"n": 8}},
            "benchmark": {"threads": 1, "rounds": 1, "latency_runs": 1, "throughput_runs": 1},
            "candidates": [{"name": "base", "runtime": "torch", "baseline": True}, *candidates],
            "output": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")})

    out = tmp_path / "run"
    run_recipe(recipe([{"name": "first", "runtime": "torch"},
                       {"name": "broken", "runtime": "torch",
                        "model": {"source": "tests.models:broken_model"}}]))
    assert (out / "errors.log").is_file()
    assert "broken on purpose" in (out / "errors.log").read_text()
    assert sorted(p.name for p in (out / "candidates").iterdir()) == ["base", "first"]
    run_recipe(recipe([{"name": "second", "runtime": "torch"}]))
    assert not (out / "errors.log").exists()
    assert sorted(p.name for p in (out / "candidates").iterdir()) == ["base", "second"]
