"""Model artifacts on disk: one directory, one `artifact.json`, the model files beside it.

ONNX and OpenVINO artifacts are their own files. A torch artifact is a small readable record
(the model's source and the steps applied to it) plus its weights in safetensors: loading
rebuilds the structure from the record and then loads the weights, so nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from slimkit.errors import ModelLoadError
from slimkit.io import atomic_write_json
from slimkit.model import FileModel, InputSpec, Model, ModelRef, TorchModel

ARTIFACT_JSON = "artifact.json"


def save_artifact(model: Model, dest: Path) -> Model:
    """Write `model` into the directory `dest` and return it as loaded from there."""
    dest.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "format": model.format,
        "inputs": [i.model_dump() for i in model.inputs],
        "tokenizer": model.tokenizer,
    }
    if isinstance(model, TorchModel):
        if model.ref is None:
            raise ModelLoadError("a torch model without a source (ModelRef) cannot be saved")
        from slimkit.torch_state import save_state

        save_state(model.module, dest / "model.safetensors")
        meta["ref"] = model.ref.model_dump()
        meta["steps"] = [s.model_dump() for s in model.steps]
        atomic_write_json(dest / ARTIFACT_JSON, meta)
        return model
    name = "model.onnx" if model.format == "onnx" else "model.xml"
    target = dest / name
    if model.path.resolve() != target.resolve():
        shutil.copy2(model.path, target)
        if model.format == "openvino":
            shutil.copy2(model.path.with_suffix(".bin"), target.with_suffix(".bin"))
        data = model.path.with_name(model.path.name + ".data")
        if data.exists():
            shutil.copy2(data, dest / data.name)
    meta["session_options"] = model.session_options
    atomic_write_json(dest / ARTIFACT_JSON, meta)
    return FileModel(model.format, target, model.inputs, model.tokenizer, model.session_options)


def load_artifact(path: Path) -> Model:
    meta_path = path / ARTIFACT_JSON
    if not meta_path.is_file():
        raise ModelLoadError(f"{path}: not a slimkit artifact (no {ARTIFACT_JSON})")
    meta = json.loads(meta_path.read_text())
    inputs = [InputSpec.model_validate(i) for i in meta["inputs"]]
    if meta["format"] == "torch":
        return _load_torch(path, meta)
    name = "model.onnx" if meta["format"] == "onnx" else "model.xml"
    return FileModel(meta["format"], path / name, inputs, meta.get("tokenizer"),
                     meta.get("session_options", {}))


def _load_torch(path: Path, meta: dict[str, Any]) -> TorchModel:
    from slimkit.model import load_model
    from slimkit.registry import StepContext, implementations, parse_step
    from slimkit.torch_state import load_state

    model = load_model(ModelRef.model_validate(meta["ref"]))
    assert isinstance(model, TorchModel)
    ctx = StepContext(workdir=path)
    for raw in meta["steps"]:
        config = parse_step(raw)
        impl = implementations(config)["torch"]
        model = (impl.rebuild or impl.apply)(model, config, ctx)  # type: ignore[assignment]
    load_state(model.module, path / "model.safetensors")
    return model


def is_artifact(path: Path) -> bool:
    return (path / ARTIFACT_JSON).is_file()
