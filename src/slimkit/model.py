"""Models and how to load them.

A model arrives as a Python factory (`package.module:function`), a Hugging Face directory, an
`.onnx` file or an OpenVINO IR `.xml`. Whatever the source, the loaded model carries its input
signature, so data, export and benchmarks never guess names, dtypes or dynamic axes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from slimkit.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

Format = Literal["torch", "onnx", "openvino"]
SourceFormat = Literal["torch", "hf", "onnx", "openvino"]
Head = Literal["embedding", "classification", "base"]


class InputSpec(BaseModel):
    """One model input; a string in `shape` names a dynamic axis."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dtype: str = "float32"
    shape: list[int | str]


class ModelRef(BaseModel):
    """Where a model comes from and how to build it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="path to a file or directory, or `package.module:function`")
    format: SourceFormat | None = Field(None, description="inferred from `source` when left out")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="a factory's arguments")
    inputs: list[InputSpec] | None = Field(None, description="input signature of a bare nn.Module")
    head: Head = Field("embedding", description="what a Hugging Face encoder returns")

    def resolved_format(self) -> SourceFormat:
        return self.format or infer_format(self.source)


@dataclass
class TorchModel:
    """An eager PyTorch module with its input signature."""

    module: torch.nn.Module
    inputs: list[InputSpec]
    tokenizer: str | None = None
    # Where the module came from and the steps applied since: enough to rebuild its structure
    # in another process before its weights are loaded from the artifact.
    ref: ModelRef | None = None
    steps: list[Any] = field(default_factory=list)
    format: Format = "torch"


@dataclass
class FileModel:
    """A model that lives in files (ONNX or OpenVINO IR) with its input signature.

    `session_options` are runtime settings that belong to the artifact, such as OpenVINO's
    inference precision for a bf16 candidate.
    """

    format: Format
    path: Path
    inputs: list[InputSpec]
    tokenizer: str | None = None
    session_options: dict[str, Any] = field(default_factory=dict)


Model = TorchModel | FileModel


def infer_format(source: str) -> SourceFormat:
    path = Path(source)
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".xml":
        return "openvino"
    if path.is_dir() and (path / "config.json").exists():
        return "hf"
    if ":" in source and not path.exists():
        return "torch"
    if path.is_dir():
        raise ModelLoadError(f"{source}: directory has no config.json (not a Hugging Face model)")
    if not path.exists():
        raise ModelLoadError(f"{source}: no such file or directory")
    raise ModelLoadError(
        f"{source}: unknown model format (expected .onnx, .xml, a Hugging Face directory or "
        "package.module:function)"
    )


def import_object(spec: str, what: str = "factory") -> Any:
    """Resolve `package.module:attribute`, with one clear line when it does not exist."""
    if ":" not in spec:
        raise ModelLoadError(f"{spec}: a {what} is written package.module:function")
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelLoadError(f"{spec}: cannot import module {mod_name!r} ({e})") from e
    try:
        return getattr(mod, attr)
    except AttributeError as e:
        raise ModelLoadError(f"{spec}: module {mod_name!r} has no attribute {attr!r}") from e


def load_model(ref: ModelRef | str) -> Model:
    """Load a model from any supported source."""
    if isinstance(ref, str):
        ref = ModelRef(source=ref)
    fmt = ref.resolved_format()
    if fmt in ("torch", "hf"):
        if fmt == "torch":
            model = _load_factory(ref)
        else:
            from slimkit.hf import load_hf

            model = load_hf(Path(ref.source), ref.head)
        model.ref = ref
        return model
    if fmt == "onnx":
        return load_onnx(Path(ref.source))
    return load_openvino(Path(ref.source))


def _load_factory(ref: ModelRef) -> TorchModel:
    import torch

    fn = import_object(ref.source)
    try:
        obj = fn(**ref.kwargs)
    except TypeError as e:
        raise ModelLoadError(f"{ref.source}: factory rejected its arguments ({e})") from e
    if isinstance(obj, TorchModel):
        obj.module.eval()
        return obj
    if isinstance(obj, torch.nn.Module):
        if not ref.inputs:
            raise ModelLoadError(
                f"{ref.source}: returns a bare nn.Module; give model.inputs (name, dtype, shape)"
            )
        return TorchModel(obj.eval(), list(ref.inputs))
    raise ModelLoadError(f"{ref.source}: returned {type(obj).__name__}, not a torch module")


_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 2: "uint8",
                3: "int8", 9: "bool", 11: "float64"}


def load_onnx(path: Path, tokenizer: str | None = None) -> FileModel:
    import onnx

    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelLoadError(f"{path}: not a valid ONNX model ({_first_line(e)})") from e
    init = {i.name for i in proto.graph.initializer}
    inputs = []
    for i in proto.graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        shape: list[int | str] = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or f"d{k}")
            for k, d in enumerate(t.shape.dim)
        ]
        inputs.append(InputSpec(name=i.name, dtype=_ONNX_DTYPES.get(t.elem_type, "float32"),
                                shape=shape))
    return FileModel("onnx", path, inputs, tokenizer)


def load_openvino(path: Path, tokenizer: str | None = None) -> FileModel:
    import openvino as ov

    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if not path.with_suffix(".bin").is_file():
        raise ModelLoadError(f"{path}: the weights file {path.with_suffix('.bin').name} is missing")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:
        raise ModelLoadError(f"{path}: not a valid OpenVINO IR ({_first_line(e)})") from e
    inputs = []
    for k, port in enumerate(model.inputs):
        ps = port.get_partial_shape()
        shape: list[int | str] = [
            d.get_length() if d.is_static else f"d{k}_{j}" for j, d in enumerate(ps)
        ]
        name = port.get_any_name() if port.get_names() else f"input{k}"
        inputs.append(InputSpec(name=name, dtype=_ov_dtype(port.get_element_type().get_type_name()),
                                shape=shape))
    return FileModel("openvino", path, inputs, tokenizer)


def _ov_dtype(name: str) -> str:
    return {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
            "i32": "int32", "u8": "uint8", "i8": "int8", "boolean": "bool"}.get(name, "float32")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__
