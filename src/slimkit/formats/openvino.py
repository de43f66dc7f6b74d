"""OpenVINO IR: an `.xml` graph and its `.bin` weights, always together."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from slimkit.errors import ModelLoadError
from slimkit.formats.base import (
    FileFormat,
    FileModel,
    InputSpec,
    Model,
    check_io,
    first_line,
    get_format,
    is_file,
    register_format,
    shown,
)
from slimkit.formats.graph import converter

if TYPE_CHECKING:
    from slimkit.dataset import Dataset


class OpenvinoFormat(FileFormat):
    name = "openvino"
    files = ("model.xml", "model.bin")
    suffix = ".xml"
    companions = (".bin",)

    def read(self, path: Path, tokenizer: str | None = None) -> Model:
        return load_openvino(path, tokenizer)


OPENVINO = register_format(OpenvinoFormat())


def load_openvino(path: Path, tokenizer: str | None = None) -> FileModel:
    import openvino as ov

    text = shown(path)
    if not is_file(path):
        raise ModelLoadError(f"{text}: no such file")
    if not is_file(path.with_suffix(".bin")):
        raise ModelLoadError(f"{text}: the weights file {path.with_suffix('.bin').name} is "
                             f"missing")
    _check_ir_root(path, text)
    try:
        model = ov.Core().read_model(str(path), str(path.with_suffix(".bin")))
    except Exception as e:
        raise ModelLoadError(f"{text}: not a valid OpenVINO IR ({first_line(e)})") from e
    check_io(text, "OpenVINO IR", len(model.inputs), len(model.outputs))
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


def _check_ir_root(path: Path, text: str) -> None:
    """An .xml whose root is not `<net>` is no IR. OpenVINO would try every frontend it has on
    it (TensorFlow's prints parse errors to stderr) and answer with a line naming none."""
    import xml.etree.ElementTree as ET

    try:
        _, root = next(ET.iterparse(str(path), events=("start",)))
    except (ET.ParseError, StopIteration, OSError, UnicodeError) as e:
        raise ModelLoadError(f"{text}: not an OpenVINO IR (not XML: "
                             f"{first_line(e) if str(e) else 'empty'})") from e
    if root.tag != "net":
        raise ModelLoadError(f"{text}: not an OpenVINO IR (its root element is "
                             f"<{root.tag[:40]}>, not <net>)")


def _ov_dtype(name: str) -> str:
    return {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
            "i32": "int32", "u8": "uint8", "i8": "int8", "boolean": "bool"}.get(name, "float32")


@converter("onnx", "openvino")
def onnx_to_openvino(model: Model, workdir: Path, example: Dataset | None = None) -> Model:
    assert isinstance(model, FileModel)
    return to_openvino(model, workdir / get_format("openvino").files[0])


def to_openvino(model: FileModel, path: Path) -> FileModel:
    import openvino as ov

    ir = ov.convert_model(str(model.path))
    ov.save_model(ir, str(path), compress_to_fp16=False)
    return FileModel("openvino", path, model.inputs, model.tokenizer, dict(model.session_options))
