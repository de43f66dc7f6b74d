from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slimkit.artifact import load_artifact
from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.model import FileModel, TorchModel, load_model
from slimkit.pipeline import Built, Cache, build, model_key
from slimkit.runtimes import RuntimeOptions, Session, get_runtime, runtime_format
from slimkit.runtimes.torch import _flatten
from tests.models import batch, cosine_min, eager, perturb, trusted

RUNTIMES = ["torch", "onnxruntime", "openvino"]


def build_for(model: TorchModel, runtime: str, cache_dir: Path) -> Built:
    return build(model, model_key(model), [], runtime_format(runtime), Cache(cache_dir))


def session_for(built: Built, runtime: str) -> Session:
    return get_runtime(runtime, RuntimeOptions(threads=1)).load(trusted(built.path))


@pytest.mark.parametrize("factory", ["tiny_mlp", "tiny_cnn"])
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_matches_torch_eager(runtime: str, factory: str, shared_cache_dir: Path) -> None:
    base = load_model(f"tests.models:{factory}")
    assert isinstance(base, TorchModel)
    perturb(base)  # the artifact must carry these weights, not the factory's
    built = build_for(base, runtime, shared_cache_dir)
    assert built.model.format == runtime_format(runtime)
    session = session_for(built, runtime)
    name = base.inputs[0].name
    for n in (1, 5):  # the batch axis stays dynamic through export
        feeds = batch(base.inputs, n, seed=n)
        outs = session.run(feeds)
        ref = eager(base, feeds[name])
        assert len(outs) == 1
        assert outs[0].shape == ref.shape
        assert outs[0].dtype == np.float32
        assert cosine_min(outs[0], ref) > 0.9999
        assert np.abs(outs[0] - ref).max() < 1e-3 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_rejects_other_formats(runtime: str, shared_cache_dir: Path) -> None:
    base = load_model("tests.models:tiny_mlp")
    assert isinstance(base, TorchModel)
    other = "onnxruntime" if runtime != "onnxruntime" else "torch"
    wrong = load_artifact(build_for(base, other, shared_cache_dir).path, trust_code=True)
    with pytest.raises(TechniqueError, match=runtime if runtime != "torch" else "torch runtime"):
        get_runtime(runtime).load(wrong)


@pytest.mark.parametrize(("runtime", "fmt", "name"), [
    ("onnxruntime", "onnx", "model.onnx"),
    ("openvino", "openvino", "model.xml"),
])
def test_runtime_load_of_a_corrupt_file(runtime: str, fmt: str, name: str,
                                        tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(512))
    path.with_suffix(".bin").write_bytes(b"\0" * 16)
    model = FileModel(fmt, path, [])  # type: ignore[arg-type]
    with pytest.raises(ModelLoadError, match=str(path)):
        get_runtime(runtime).load(model)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_describe(runtime: str) -> None:
    info = get_runtime(runtime, RuntimeOptions(threads=3)).describe()
    assert info["runtime"] == runtime
    assert info["threads"] == 3
    assert isinstance(info["version"], str) and info["version"]


def test_runtime_options_validate() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        RuntimeOptions(threads=0)


def test_torch_session_flattens_structured_outputs() -> None:
    a, b, c = torch.zeros(1), torch.ones(2), torch.full((3,), 2.0)
    assert [t.shape for t in _flatten((a, [b, c]))] == [a.shape, b.shape, c.shape]
    assert [t.shape for t in _flatten({"x": b, "meta": "text", "y": c})] == [b.shape, c.shape]
    with pytest.raises(TypeError, match="expected tensors"):
        _flatten("oops")


def test_runtime_installed_follows_the_packages() -> None:
    """A search leaves out runtimes whose packages are missing; the test extra installs
    every runtime's package but TensorRT's (it needs CUDA)."""
    from slimkit.errors import ConfigError
    from slimkit.runtimes import base, register_runtime, runtime_installed

    assert all(runtime_installed(r) for r in ["torch", "onnxruntime", "openvino", "litert"])
    register_runtime("absent", "slimkit.runtimes.onnxruntime", "OrtRuntime", "onnx",
                     needs=("slimkit_no_such_package",))
    try:
        assert not runtime_installed("absent")
    finally:
        del base._RUNTIMES["absent"], base._NEEDS["absent"]
    with pytest.raises(ConfigError, match="unknown runtime"):
        runtime_installed("nonesuch")
