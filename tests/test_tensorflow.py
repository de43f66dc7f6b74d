"""TensorFlow models in: a Keras model trained here on digits, saved as a `.keras` file and as a
SavedModel, converted to ONNX and then compressed and measured like any ONNX model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from slimkit.errors import ModelLoadError
from slimkit.examples.digits import load_data
from slimkit.model import infer_format, load_model

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small CNN on the project's digits data as it is (NCHW): a Permute layer makes it the
    NHWC a Keras convolution takes."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(0)
    train, test = load_data("train"), load_data("test")
    model = keras.Sequential([
        keras.Input((1, 8, 8), name="image"),
        keras.layers.Permute((2, 3, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss)
    model.fit(train.inputs["image"], train.labels, epochs=20, batch_size=32, verbose=0)
    tmp = tmp_path_factory.mktemp("keras")
    model.save(tmp / "digits.keras")
    model.export(str(tmp / "saved"), verbose=False)
    logits = model.predict(test.inputs["image"], verbose=0)
    return {"keras": tmp / "digits.keras", "saved": tmp / "saved", "logits": logits,
            "x": test.inputs["image"], "labels": test.labels}


@pytest.mark.parametrize("kind", ["keras", "saved"])
def test_converted_model_matches_keras(keras_model: dict[str, Any], kind: str):
    import onnxruntime as ort

    source = str(keras_model[kind])
    assert infer_format(source) == "tensorflow"
    model = load_model(source)
    assert model.format == "onnx"
    assert [(i.name, i.shape) for i in model.inputs] == [("image", ["batch", 1, 8, 8])]
    session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": keras_model["x"]})[0]
    np.testing.assert_allclose(out, keras_model["logits"], rtol=1e-5, atol=1e-5)
    assert (out.argmax(1) == keras_model["labels"]).mean() >= 0.95


def test_a_second_load_is_cached(keras_model: dict[str, Any]):
    first = load_model(str(keras_model["keras"]))
    assert load_model(str(keras_model["keras"])).path == first.path


def slimkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slimkit.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)


def test_keras_model_runs_through_slimkit_run(keras_model: dict[str, Any], tmp_path: Path):
    recipe = {
        "name": "digits-keras",
        "model": {"source": str(keras_model["keras"])},
        "data": {"source": "example", "name": "digits", "split": "test"},
        "evaluation": {"task": "classification", "batch_size": 64},
        "benchmark": {"threads": 2, "batch_size": 64, "rounds": 1, "warmup": 1,
                      "latency_runs": 5, "throughput_runs": 1, "min_seconds": 0},
        "candidates": [
            {"name": "ort-fp32", "runtime": "onnxruntime", "baseline": True},
            {"name": "ort-int8-static", "runtime": "onnxruntime", "steps": [{"static_int8": {}}]},
            {"name": "ort-int8-dynamic", "runtime": "onnxruntime",
             "steps": [{"dynamic_int8": {}}]},
            {"name": "openvino-fp32", "runtime": "openvino"},
        ],
        "output": str(tmp_path / "run"),
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = slimkit("run", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    cands = {c["name"]: c for c in doc["candidates"]}
    for c in cands.values():
        assert c["error"] is None, c["error"]
    assert cands["ort-fp32"]["quality"]["accuracy"] >= 0.95
    assert abs(cands["openvino-fp32"]["quality"]["accuracy_delta"]) <= 1.0
    for name in ("ort-int8-static", "ort-int8-dynamic"):
        assert cands[name]["quality"]["accuracy_delta"] >= -1.0
    assert [s["step"] for s in cands["openvino-fp32"]["steps"]] == ["export_openvino"]
    assert "Traceback" not in proc.stderr


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    for w in words:
        assert w in lines[0], lines[0]


def bad_source(tmp_path: Path, kind: str) -> tuple[dict[str, str], str]:
    if kind == "missing":
        return {"source": str(tmp_path / "absent.keras")}, "no such file"
    if kind == "not_zip":
        (tmp_path / "bad.keras").write_text("not a zip")
        return {"source": str(tmp_path / "bad.keras")}, "not a .keras file"
    (tmp_path / "empty").mkdir()
    return {"source": str(tmp_path / "empty"), "format": "tensorflow"}, "no saved_model.pb"


@pytest.mark.parametrize("kind", ["missing", "not_zip", "no_saved_model"])
def test_a_bad_source_is_one_line(tmp_path: Path, kind: str):
    model, words = bad_source(tmp_path, kind)
    recipe = {"name": "bad", "model": model, "output": str(tmp_path / "run"),
              "data": {"source": "example", "name": "digits"},
              "candidates": [{"name": "ort", "runtime": "onnxruntime"}]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert_one_line_error(slimkit("run", str(path)), words)


def test_a_folder_of_neither_kind_names_both(tmp_path: Path):
    with pytest.raises(ModelLoadError, match=r"config\.json .* saved_model\.pb"):
        load_model(str(tmp_path))


def test_a_corrupt_keras_file(tmp_path: Path):
    import zipfile

    path = tmp_path / "broken.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("config.json", "{not json")
    with pytest.raises(ModelLoadError, match=r"broken.keras: not a loadable .keras file") as e:
        load_model(str(path))
    assert "\n" not in str(e.value)


def test_a_lambda_layer_is_not_run_from_a_file(tmp_path: Path):
    import keras

    model = keras.Sequential([keras.Input((4,), name="x"), keras.layers.Lambda(lambda t: t * 2)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelLoadError, match=r"Lambda layer.*safe_mode.*model.export"):
        load_model(str(tmp_path / "lambda.keras"))


def test_without_tensorflow_it_says_what_to_install(keras_model: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ModelLoadError, match=r"needs tensorflow: pip install 'slimkit\[tf\]'"):
        load_model(str(keras_model["keras"]))
