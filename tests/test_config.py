from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from slimkit.config import load_recipe, parse_recipe
from slimkit.errors import ConfigError
from slimkit.registry import config_class, parse_step, technique_names
from slimkit.techniques.cast import Cast
from slimkit.techniques.dynamic_int8 import DynamicInt8


def raw_recipe() -> dict[str, Any]:
    return {
        "name": "tiny",
        "model": {"source": "tests.models:tiny_mlp", "kwargs": {"width": 32}},
        "data": {"source": "factory", "factory": "tests.models:mlp_data", "limit": 8},
        "evaluation": {"task": "classification", "batch_size": 4},
        "benchmark": {"threads": 1, "rounds": 2},
        "candidates": [
            {"name": "torch-fp32", "runtime": "torch", "baseline": True},
            {"name": "ort-int8", "runtime": "onnxruntime",
             "steps": [{"technique": "dynamic_int8", "per_channel": False}]},
            {"name": "ov-bf16", "runtime": "openvino", "steps": [{"cast": {"dtype": "bf16"}}]},
        ],
    }


def config_error(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_recipe(raw)
    msg = str(info.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    return msg


def test_parse_valid_recipe() -> None:
    r = parse_recipe(raw_recipe())
    assert [c.name for c in r.candidates] == ["torch-fp32", "ort-int8", "ov-bf16"]
    assert r.baseline.name == "torch-fp32"
    assert r.candidates[1].steps == [DynamicInt8(per_channel=False)]
    assert r.candidates[2].steps == [Cast(dtype="bf16")]
    assert r.benchmark.rounds == 2 and r.benchmark.threads == 1
    assert r.output_dir == Path("runs/tiny")


def test_baseline_defaults_to_first_candidate() -> None:
    raw = raw_recipe()
    raw["candidates"][0]["baseline"] = False
    assert parse_recipe(raw).baseline.name == "torch-fp32"
    raw["candidates"][1]["baseline"] = True
    assert parse_recipe(raw).baseline.name == "ort-int8"


def test_two_baselines_rejected() -> None:
    raw = raw_recipe()
    raw["candidates"][1]["baseline"] = True
    assert "more than one is marked baseline" in config_error(raw)


def test_misspelled_top_level_key() -> None:
    raw = raw_recipe()
    raw["benchmrk"] = raw.pop("benchmark")
    msg = config_error(raw)
    assert "benchmrk: unknown field" in msg
    assert "did you mean 'benchmark'" in msg


def test_misspelled_candidate_key() -> None:
    raw = raw_recipe()
    raw["candidates"][0]["runtme"] = "torch"
    msg = config_error(raw)
    assert "candidates[0].runtme" in msg
    assert "unknown field" in msg
    assert "did you mean 'runtime'" in msg


def test_misspelled_required_candidate_key() -> None:
    raw = raw_recipe()
    raw["candidates"][0]["runtme"] = raw["candidates"][0].pop("runtime")
    msg = config_error(raw)
    assert "candidates[0].runtme" in msg
    assert "did you mean 'runtime'" in msg


def test_misspelled_nested_section_key() -> None:
    raw = raw_recipe()
    raw["benchmark"] = {"thread": 2}
    msg = config_error(raw)
    assert "benchmark.thread" in msg
    assert "did you mean 'threads'" in msg


def test_misspelled_key_in_model_inputs() -> None:
    raw = raw_recipe()
    raw["model"]["inputs"] = [{"name": "x", "shape": ["batch", 16], "dtyp": "float32"}]
    msg = config_error(raw)
    assert "model.inputs[0].dtyp: unknown field" in msg
    assert "did you mean 'dtype'" in msg


@pytest.mark.parametrize("step", [
    {"dynamic_int8": {"per_channl": True}},
    {"technique": "dynamic_int8", "per_channl": True},
])
def test_misspelled_step_option(step: dict[str, Any]) -> None:
    raw = raw_recipe()
    raw["candidates"][1]["steps"] = [step]
    msg = config_error(raw)
    assert "candidates[1].steps[0]" in msg
    assert "dynamic_int8.per_channl: unknown field" in msg


def test_bad_step_option_value() -> None:
    raw = raw_recipe()
    raw["candidates"][2]["steps"] = [{"cast": {"dtype": "fp8"}}]
    msg = config_error(raw)
    assert "candidates[2].steps[0]" in msg and "cast.dtype" in msg


def test_unknown_runtime() -> None:
    raw = raw_recipe()
    raw["candidates"][1]["runtime"] = "tvm"
    msg = config_error(raw)
    assert "candidates[1].runtime" in msg
    assert "unknown runtime 'tvm'" in msg
    assert "onnxruntime" in msg  # lists the known ones


def test_unknown_technique() -> None:
    raw = raw_recipe()
    raw["candidates"][1]["steps"] = [{"technique": "prune"}]
    msg = config_error(raw)
    assert "candidates[1].steps[0]" in msg
    assert "unknown technique 'prune'" in msg
    assert "dynamic_int8" in msg


def test_duplicate_candidate_names() -> None:
    raw = raw_recipe()
    raw["candidates"][2]["name"] = "ort-int8"
    msg = config_error(raw)
    assert "duplicate name(s) ort-int8" in msg


@pytest.mark.parametrize(("data", "field"), [
    ({"source": "npz"}, "path"),
    ({"source": "factory"}, "factory"),
    ({"source": "example"}, "name"),
])
def test_data_spec_missing_required_field(data: dict[str, Any], field: str) -> None:
    raw = raw_recipe()
    raw["data"] = data
    msg = config_error(raw)
    assert msg.startswith("recipe: data")
    assert f"needs the field {field!r}" in msg


def test_missing_required_top_level_field() -> None:
    raw = raw_recipe()
    del raw["model"]
    assert "model: required field is missing" in config_error(raw)


def test_no_candidates() -> None:
    raw = raw_recipe()
    raw["candidates"] = []
    assert "candidates" in config_error(raw)


def test_load_recipe_reports_file_and_path(tmp_path: Path) -> None:
    raw = raw_recipe()
    raw["candidates"][0]["runtme"] = "torch"
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: candidates[0].runtme")
    assert "\n" not in msg


def test_load_recipe_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw_recipe()))
    assert load_recipe(path) == parse_recipe(raw_recipe())


def test_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: tiny\nmodel: {source: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "not valid YAML" in msg and "line " in msg
    assert "\n" not in msg


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="a recipe is a mapping"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such recipe file"):
        load_recipe(tmp_path / "absent.yaml")


def test_round_trip_without_steps() -> None:
    raw = raw_recipe()
    for c in raw["candidates"]:
        c.pop("steps", None)
    raw["candidates"][1]["name"] = "ort-fp32"
    raw["candidates"][2]["name"] = "ov-fp32"
    recipe = parse_recipe(raw)
    again = parse_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe


def test_round_trip_with_steps() -> None:
    recipe = parse_recipe(raw_recipe())
    again = parse_recipe(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe


@pytest.mark.parametrize("tag", technique_names())
def test_every_technique_round_trips_in_a_recipe(tag: str) -> None:
    from slimkit.registry import implementations

    raw = raw_recipe()
    # the last runtime the step can be placed before (a recipe that misplaces it is refused)
    targets = set().union(*((i.targets or {"torch", "onnx", "openvino"})
                            for i in implementations(config_class(tag)()).values()))
    runtime = next(r for r in ("openvino", "onnxruntime", "torch", "litert")
                   if {"openvino": "openvino", "onnxruntime": "onnx", "torch": "torch",
                       "litert": "litert"}[r] in targets)
    raw["candidates"] = [{"name": "c", "runtime": runtime, "steps": [{"technique": tag}]}]
    recipe = parse_recipe(raw)
    assert parse_recipe(yaml.safe_load(recipe.to_yaml())) == recipe


@pytest.mark.parametrize("tag", technique_names())
def test_every_technique_config_round_trips_through_yaml(tag: str) -> None:
    cls = config_class(tag)
    config = cls()
    assert config.technique == tag
    text = yaml.safe_dump(config.model_dump(mode="json"))
    back = parse_step(yaml.safe_load(text))
    assert type(back) is cls
    assert back == config
    # the `{name: {options}}` spelling reads the same
    opts = config.model_dump(mode="json", exclude={"technique"})
    assert parse_step({tag: opts}) == config


def test_technique_config_with_options_round_trips() -> None:
    for config in (Cast(dtype="fp16"),
                   DynamicInt8(per_channel=False, int8_mode="reduce_range", op_types=["MatMul"])):
        back = parse_step(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
        assert back == config
        assert back != type(config)()


def test_step_with_scalar_options_is_a_config_error() -> None:
    raw = raw_recipe()
    raw["candidates"][2]["steps"] = [{"cast": "fp16"}]
    msg = config_error(raw)
    assert "candidates[2].steps[0]" in msg


def test_recipe_is_frozen() -> None:
    recipe = parse_recipe(raw_recipe())
    with pytest.raises(ValidationError, match="frozen"):
        recipe.name = "other"  # type: ignore[misc]
    # parse does not mutate its input
    raw = raw_recipe()
    before = copy.deepcopy(raw)
    parse_recipe(raw)
    assert raw == before
