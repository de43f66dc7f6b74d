"""LiteRT (TFLite): export through litert-torch, the `litert` runtime on the ai-edge-litert
interpreter, `.tflite` files as models, and `litert_int8` through `slimkit run` on digits.

Each conversion takes seconds, so converted models are shared per module: the tiny CNN is
exported once, and the digits candidates are built once by the CLI run the later tests read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from slimkit.api import export
from slimkit.artifact import load_artifact
from slimkit.config import load_recipe, parse_recipe
from slimkit.errors import ConfigError, ModelLoadError, TechniqueError
from slimkit.model import FileModel, ModelRef, TorchModel, infer_format, load_model
from slimkit.pipeline import Cache, build, model_key, plan
from slimkit.runtimes.base import RuntimeOptions, get_runtime
from slimkit.techniques.cast import Cast
from slimkit.techniques.quantize.litert import LitertInt8
from tests.e2e.test_digits_run import slimkit
from tests.models import batch, eager, tiny_cnn
from tests.test_import import loaded_after

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TorchModel, Path]:
    """The tiny CNN and its fp32 `.tflite`, exported as `slimkit export --to litert` does."""
    tmp = tmp_path_factory.mktemp("tiny")
    out = export(ModelRef(source="tests.models:tiny_cnn"), "litert", tmp / "out",
                 cache_dir=tmp / "cache")
    return tiny_cnn(), out / "model.tflite"


def test_fp32_matches_torch_at_any_batch(tiny: tuple[TorchModel, Path]) -> None:
    model, path = tiny
    session = get_runtime("litert", RuntimeOptions(threads=2)).load(
        FileModel("litert", path, model.inputs))
    for n in (1, 32, 5, 1):  # exported at 2: every other batch is a resize
        x = batch(model.inputs, n, seed=n)["image"]
        (out,) = session.run({"image": x})
        assert out.shape == (n, 4)
        np.testing.assert_allclose(out, eager(model, x), atol=1e-5, rtol=1e-5)


def test_a_tflite_file_is_a_model(tiny: tuple[TorchModel, Path]) -> None:
    _, path = tiny
    assert infer_format(str(path)) == "litert"
    model = load_model(str(path))
    assert isinstance(model, FileModel) and model.format == "litert"
    # the signature keeps the torch argument's name, and the batch is free
    assert [(i.name, i.dtype, i.shape) for i in model.inputs] == \
        [("image", "float32", ["batch", 3, 8, 8])]


def test_the_runtime_describes_itself() -> None:
    info = get_runtime("litert", RuntimeOptions(threads=3)).describe()
    assert info["runtime"] == "litert" and info["threads"] == 3
    assert "XNNPACK" in info["device"] and info["version"][0].isdigit()


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer at all", b"\x00\x00\x00\x00TFL3"
                                     + b"\xff" * 40])
def test_a_corrupt_tflite_is_one_line(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(path))
    text = str(err.value)
    assert "\n" not in text and "broken.tflite" in text and "LiteRT" in text


def test_a_missing_tflite_says_so(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(str(tmp_path / "absent.tflite"))


def test_without_the_extra_one_line_names_it(tiny: tuple[TorchModel, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from slimkit.formats.litert_export import litert_torch

    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    with pytest.raises(ModelLoadError, match=r"pip install 'slimkit\[litert\]'"):
        load_model(str(tiny[1]))
    with pytest.raises(TechniqueError, match=r"pip install 'slimkit\[litert\]'"):
        litert_torch()


def test_importing_slimkit_loads_no_litert_library() -> None:
    code = ("import slimkit, slimkit.formats, slimkit.runtimes.litert, "
            "slimkit.techniques.quantize.litert")
    assert loaded_after(code, ["litert_torch", "ai_edge_litert", "tensorflow"]) == []


def test_litert_int8_converts_as_it_goes() -> None:
    """Placed on torch, made for litert only, and the model is litert after it."""
    assert plan("torch", [LitertInt8()], "litert") == ["torch"]
    assert plan("torch", [Cast(), LitertInt8()], "litert") == ["torch", "torch"]
    with pytest.raises(TechniqueError, match="cast cannot run between litert"):
        plan("torch", [LitertInt8(), Cast()], "litert")  # the model is litert by then
    raw = {"name": "r", "model": {"source": "tests.models:tiny_cnn"},
           "data": {"source": "npz", "path": "d.npz"},
           "candidates": [{"name": "a", "runtime": "onnxruntime", "steps": ["litert_int8"]}]}
    with pytest.raises(ConfigError, match="litert_int8"):
        parse_recipe(raw)


def test_the_bundled_recipe_loads() -> None:
    recipe = load_recipe(ROOT / "examples" / "digits-litert.yaml")
    assert [c.runtime for c in recipe.candidates] == ["onnxruntime", "litert", "litert", "litert"]
    assert [s.mode for c in recipe.candidates for s in c.steps] == ["dynamic", "static"]


def test_static_int8_needs_calibration_data(tmp_path: Path) -> None:
    model = tiny_cnn()
    with pytest.raises(TechniqueError, match="calibration data"):
        build(model, model_key(model), [LitertInt8(mode="static")], "litert", Cache(tmp_path))


def step_report(candidate: dict, technique: str) -> dict:
    (found,) = [r for r in candidate["details"].values() if r["technique"] == technique]
    return found


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory,
               session_cache_dir: Path) -> tuple[Path, str]:
    """The bundled LiteRT recipe through the CLI, with a short benchmark, on the session's
    cache: the digits CNN is trained once for every test that uses it."""
    tmp = tmp_path_factory.mktemp("digits-litert")
    recipe = yaml.safe_load((ROOT / "examples" / "digits-litert.yaml").read_text())
    recipe["benchmark"].update(rounds=1, latency_runs=5, throughput_runs=2, warmup=1)
    recipe["output"] = str(tmp / "run")
    path = tmp / "digits-litert.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = slimkit("run", str(path), cache=session_cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run", proc.stdout + proc.stderr


@pytest.mark.slow
def test_litert_candidates_run_on_digits(digits_run: tuple[Path, str]) -> None:
    run, printed = digits_run
    doc = json.loads((run / "results.json").read_text())
    by_name = {c["name"]: c for c in doc["candidates"]}
    assert list(by_name) == ["ort-fp32", "litert-fp32", "litert-int8-dynamic",
                             "litert-int8-static"]
    assert by_name["ort-fp32"]["quality"]["accuracy"] >= 0.97
    for name in ("litert-fp32", "litert-int8-dynamic", "litert-int8-static"):
        c = by_name[name]
        assert c["error"] is None, c["error"]
        assert c["runtime_info"]["runtime"] == "litert"
        assert c["bench"]["latency_ms"]["p50"] > 0 and c["ratios"]["throughput"] > 0
        assert (run / c["artifact"] / "model.tflite").is_file()
    fp32 = by_name["litert-fp32"]
    assert fp32["quality"]["accuracy_delta"] == pytest.approx(0.0, abs=0.3)
    assert [s["step"] for s in fp32["steps"]] == ["export_litert"]
    for mode in ("dynamic", "static"):
        c = by_name[f"litert-int8-{mode}"]
        assert c["quality"]["accuracy_delta"] >= -1.0
        assert c["ratios"]["size"] < 0.3
        assert [s["step"] for s in c["steps"]] == ["litert_int8"]
        assert step_report(c, "litert_int8")["mode"] == mode
    assert step_report(by_name["litert-int8-static"], "litert_int8")["calibration_rows"] > 0
    # the converters' own logging stays out of slimkit's output
    for noise in ("absl", "I0000", "XNNPACK delegate", "[START]", "FutureWarning"):
        assert noise not in printed


@pytest.mark.slow
def test_litert_artifacts_match_torch(digits_run: tuple[Path, str]) -> None:
    """fp32 to float tolerance, int8 to the top-1 agreement the other int8 paths keep."""
    from slimkit.examples import digits

    run, _ = digits_run
    model = load_model("slimkit.examples.digits:load_model")
    assert isinstance(model, TorchModel)
    x = digits.load_data("test").inputs["image"]
    reference = eager(model, x)
    doc = json.loads((run / "results.json").read_text())
    runtime = get_runtime("litert")
    for c in doc["candidates"][1:]:
        session = runtime.load(load_artifact(run / c["artifact"]))
        out = np.concatenate([session.run({"image": x[i : i + 64]})[0]
                              for i in range(0, len(x), 64)])
        if c["name"] == "litert-fp32":
            np.testing.assert_allclose(out, reference, atol=1e-4, rtol=1e-4)
        else:
            assert (out.argmax(1) == reference.argmax(1)).mean() >= 0.98, c["name"]
