from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.artifact import load_artifact, save_artifact
from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.model import FileModel, ModelRef, TorchModel, load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.registry import StepContext, TechniqueConfig, implementations
from slimkit.runtimes import RuntimeOptions, get_runtime, runtime_format
from slimkit.techniques.cast import Cast
from slimkit.techniques.dynamic_int8 import DynamicInt8, dynamic_int8_torch
from tests.models import applied, batch, cosine_min, eager, perturb, sqnr, trusted

# Width 256: the weights (72k parameters) dominate every file format's overhead.
WIDE = ModelRef(source="tests.models:tiny_mlp", kwargs={"width": 256})
MODEL_FILE = {"torch": "model.safetensors", "onnxruntime": "model.onnx", "openvino": "model.bin"}


def fresh_mlp(ref: ModelRef = WIDE) -> TorchModel:
    model = load_model(ref)
    assert isinstance(model, TorchModel)
    return perturb(model)


def build_run(model: TorchModel, steps: list[TechniqueConfig], runtime: str,
              cache_dir: Path, x: np.ndarray) -> tuple[Built, np.ndarray]:
    built = build(model, model_key(model), steps, runtime_format(runtime), Cache(cache_dir))
    session = get_runtime(runtime, RuntimeOptions(threads=1)).load(trusted(built.path))
    return built, session.run({"x": x})[0]


def model_bytes(built: Built, runtime: str) -> int:
    return (built.path / MODEL_FILE[runtime]).stat().st_size


@pytest.fixture(scope="module")
def fp32_bytes(shared_cache_dir: Path) -> dict[str, int]:
    x = batch(fresh_mlp().inputs, 2)["x"]
    return {rt: model_bytes(build_run(fresh_mlp(), [], rt, shared_cache_dir, x)[0], rt)
            for rt in MODEL_FILE}


@pytest.mark.parametrize(("runtime", "dtype"), [
    ("torch", "bf16"), ("torch", "fp16"), ("openvino", "bf16"), ("onnxruntime", "fp16"),
])
def test_cast(runtime: str, dtype: str, shared_cache_dir: Path,
              fp32_bytes: dict[str, int]) -> None:
    model = fresh_mlp()
    x = batch(model.inputs, 16)["x"]
    ref = eager(model, x)
    built, out = build_run(model, [Cast.model_validate({"dtype": dtype})], runtime,
                           shared_cache_dir, x)
    assert out.dtype == np.float32  # callers keep float32 in and out
    assert out.shape == ref.shape
    # 16-bit floats: close to fp32, but not bit-identical (the cast did happen)
    assert cosine_min(out, ref) > 0.999
    assert 30 < sqnr(ref, out) < 150
    # weights stored in 16 bits: about half the fp32 file
    assert model_bytes(built, runtime) < 0.6 * fp32_bytes[runtime]
    assert built.steps[-1].step == "cast"
    assert built.steps[-1].options == {"dtype": dtype}


def test_cast_openvino_asks_for_its_precision(shared_cache_dir: Path) -> None:
    model = fresh_mlp()
    x = batch(model.inputs, 2)["x"]
    for dtype, precision in (("bf16", "bf16"), ("fp16", "f16")):
        config = Cast.model_validate({"dtype": dtype})
        built, _ = build_run(model, [config], "openvino", shared_cache_dir, x)
        loaded = load_artifact(built.path, trust_code=True)
        assert isinstance(loaded, FileModel)
        assert loaded.session_options == {"inference_precision": precision}


def test_cast_bf16_on_onnx_raises(tmp_path: Path) -> None:
    model = fresh_mlp()
    with pytest.raises(TechniqueError, match="bf16"):
        build(model, model_key(model), [Cast(dtype="bf16")], "onnx", Cache(tmp_path))


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_dynamic_int8(runtime: str, per_channel: bool, shared_cache_dir: Path,
                      fp32_bytes: dict[str, int]) -> None:
    model = fresh_mlp()
    x = batch(model.inputs, 32)["x"]
    ref = eager(model, x)
    built, out = build_run(model, [DynamicInt8(per_channel=per_channel)], runtime,
                           shared_cache_dir, x)
    assert out.shape == ref.shape
    # int8 on a 3-layer MLP lands near 33-39 dB; 20 dB is a floor with margin, and a
    # bit-identical output would mean nothing was quantized.
    assert 20 < sqnr(ref, out) < 100
    assert cosine_min(out, ref) > 0.99
    assert model_bytes(built, runtime) < 0.4 * fp32_bytes[runtime]
    assert [s.step for s in built.steps][-1] == "dynamic_int8"
    assert built.steps[-1].format == runtime_format(runtime)


def test_dynamic_int8_op_types_limit_what_is_quantized(shared_cache_dir: Path,
                                                       fp32_bytes: dict[str, int]) -> None:
    model = fresh_mlp()
    x = batch(model.inputs, 8)["x"]
    built, out = build_run(model, [DynamicInt8(op_types=["Conv"])], "onnxruntime",
                           shared_cache_dir, x)
    # the MLP has no Conv: nothing is quantized, the model stays fp32
    assert model_bytes(built, "onnxruntime") > 0.9 * fp32_bytes["onnxruntime"]
    assert sqnr(eager(model, x), out) > 80


def test_dynamic_int8_for_openvino_is_refused(tmp_path: Path) -> None:
    # ORT's quantized graph converted to IR stores int8 weights as i32: bigger, not faster
    model = fresh_mlp()
    x = batch(model.inputs, 8)["x"]
    with pytest.raises(TechniqueError, match="dynamic_int8"):
        build_run(model, [DynamicInt8()], "openvino", tmp_path, x)


def test_cast_after_torch_int8_is_refused_or_runs(tmp_path: Path) -> None:
    model = fresh_mlp()
    x = batch(model.inputs, 4)["x"]
    try:
        _, out = build_run(model, [DynamicInt8(), Cast(dtype="fp16")], "torch", tmp_path, x)
    except TechniqueError:
        return  # refusing the combination at build time is fine too
    assert sqnr(eager(fresh_mlp(), x), out) > 20


@pytest.mark.parametrize("steps", [
    [],
    [DynamicInt8()],
    [DynamicInt8(per_channel=False)],
    [Cast(dtype="bf16")],
], ids=["fp32", "int8-per-channel", "int8-per-tensor", "bf16"])
def test_torch_artifact_round_trip(steps: list[TechniqueConfig], tmp_path: Path) -> None:
    model = fresh_mlp()
    for config in steps:  # as the pipeline runs each: its record appended to the lineage
        model = applied(implementations(config)["torch"].apply, model, config,
                        StepContext(tmp_path))
    x = batch(model.inputs, 6)["x"]
    before = eager(model, x)
    save_artifact(model, tmp_path / "artifact")
    loaded = load_artifact(tmp_path / "artifact", trust_code=True)
    assert isinstance(loaded, TorchModel)
    assert loaded.steps == steps
    assert loaded.ref == WIDE
    np.testing.assert_array_equal(eager(loaded, x), before)


def test_torch_artifact_holds_int8_weights(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = dynamic_int8_torch(fresh_mlp(), DynamicInt8(), StepContext(tmp_path))
    save_artifact(model, tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert tensors["net.2.weight_int8"].dtype == torch.int8
    assert tensors["net.2.weight_int8"].shape == (256, 256)
    assert tensors["net.2.weight_scale"].shape == (256,)  # per output channel
    assert "net.2.weight" not in tensors


def test_torch_artifact_with_foreign_weights_fails(tmp_path: Path) -> None:
    model = fresh_mlp()
    save_artifact(model, tmp_path / "a")
    small = load_model(ModelRef(source="tests.models:tiny_mlp", kwargs={"width": 32}))
    assert isinstance(small, TorchModel)
    save_artifact(small, tmp_path / "b")
    # weights of the wide model under the narrow model's record
    (tmp_path / "b" / "model.safetensors").write_bytes(
        (tmp_path / "a" / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        load_artifact(tmp_path / "b", trust_code=True)


def test_torch_model_without_ref_cannot_be_saved(tmp_path: Path) -> None:
    from tests.models import tiny_mlp

    with pytest.raises(ModelLoadError, match="without a source"):
        save_artifact(tiny_mlp(), tmp_path / "a")


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a slimkit artifact"):
        load_artifact(tmp_path, trust_code=True)
