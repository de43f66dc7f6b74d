from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest

from slimkit import registry
from slimkit.errors import ConfigError
from slimkit.model import Model
from slimkit.registry import (
    StepContext,
    TechniqueConfig,
    config_class,
    implementations,
    parse_step,
    technique,
    technique_names,
)
from slimkit.runtimes import get_runtime, runtime_format, runtime_names
from slimkit.techniques.cast import Cast
from slimkit.techniques.dynamic_int8 import DynamicInt8


def test_builtin_techniques_registered() -> None:
    names = technique_names()
    assert {"cast", "dynamic_int8"} <= set(names)
    assert names == sorted(names)
    assert config_class("cast") is Cast
    assert config_class("dynamic_int8") is DynamicInt8


def test_unknown_technique_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown technique 'prune' \(known: .*cast"):
        config_class("prune")


def test_formats_each_builtin_supports() -> None:
    assert set(implementations(Cast())) == {"torch", "onnx", "openvino"}
    assert set(implementations(DynamicInt8())) == {"torch", "onnx"}
    assert not any(i.requires_data for i in implementations(DynamicInt8()).values())


@pytest.mark.parametrize("raw", [
    "dynamic_int8",
    {"technique": "dynamic_int8"},
    {"dynamic_int8": None},
    {"dynamic_int8": {}},
    DynamicInt8(),
])
def test_parse_step_spellings(raw: object) -> None:
    assert parse_step(raw) == DynamicInt8()


def test_parse_step_options() -> None:
    assert parse_step({"cast": {"dtype": "fp16"}}) == Cast(dtype="fp16")
    assert parse_step({"technique": "dynamic_int8", "per_channel": False}) == DynamicInt8(
        per_channel=False)


@pytest.mark.parametrize(("raw", "message"), [
    ({"dynamic_int8": {"per_channl": True}}, "dynamic_int8.per_channl: unknown field"),
    ({"cast": {"dtype": "int4"}}, "cast.dtype"),
    ({"prune": {}}, "unknown technique 'prune'"),
    ({"a": 1, "b": 2}, "needs the field 'technique'"),
    (3, "a step is a mapping"),
])
def test_parse_step_errors_are_value_errors(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_step(raw)
    assert "\n" not in str(info.value)


def test_short_lists_options() -> None:
    assert Cast(dtype="fp16").short() == "cast(dtype=fp16)"
    assert DynamicInt8().short().startswith("dynamic_int8(per_channel=True, int8_mode=auto")


def test_configs_are_frozen_and_strict() -> None:
    with pytest.raises(ValueError, match="frozen"):
        Cast().dtype = "fp16"  # type: ignore[misc]
    with pytest.raises(ValueError, match="extra"):
        Cast(dtyp="fp16")  # type: ignore[call-arg]


class _Noop(TechniqueConfig):
    technique: Literal["test_noop"] = "test_noop"
    factor: int = 1


class _NoopChild(_Noop):
    pass


@pytest.fixture
def noop_registered() -> Iterator[None]:
    configs, impls = dict(registry._CONFIGS), dict(registry._IMPLS)

    @technique(_Noop, format="onnx")
    def _onnx(model: Model, config: _Noop, ctx: StepContext) -> Model:
        return model

    @technique(_Noop, format="torch", requires_data=True)
    def _torch(model: Model, config: _Noop, ctx: StepContext) -> Model:
        return model

    yield
    registry._CONFIGS.clear()
    registry._CONFIGS.update(configs)
    registry._IMPLS.clear()
    registry._IMPLS.update(impls)


def test_register_a_technique(noop_registered: None) -> None:
    assert "test_noop" in technique_names()
    assert parse_step({"test_noop": {"factor": 3}}) == _Noop(factor=3)
    impls = implementations(_Noop())
    assert set(impls) == {"onnx", "torch"}
    assert impls["torch"].requires_data and not impls["onnx"].requires_data
    # a subclass inherits its parent's implementations
    assert set(implementations(_NoopChild())) == {"onnx", "torch"}


def test_runtime_registry() -> None:
    assert runtime_names()[:3] == ["torch", "onnxruntime", "openvino"]
    assert [runtime_format(n) for n in ("torch", "onnxruntime", "openvino")] == [
        "torch", "onnx", "openvino"]
    with pytest.raises(ConfigError, match="unknown runtime 'tvm'"):
        runtime_format("tvm")
    with pytest.raises(ConfigError, match="unknown runtime"):
        get_runtime("tvm")
