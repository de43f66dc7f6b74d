"""Models and how to load them.

A model arrives as a Python factory (`package.module:function`), a Hugging Face directory, an
`.onnx` file, an OpenVINO IR `.xml`, a LiteRT `.tflite`, or a TensorFlow model (`.keras` or
SavedModel directory, converted to ONNX on loading). Whatever the source, the loaded model
carries its input signature, so data, export and benchmarks never guess names, dtypes or dynamic
axes. Each source is a registered format (`slimkit.formats`); this module is the public face
of them. `Format` here names a format (the type of `model.format`); the objects are
`slimkit.formats.Format`.
"""

from __future__ import annotations

from pydantic import ValidationError

from slimkit.errors import ModelLoadError
from slimkit.formats import get_format
from slimkit.formats.base import (
    MAX_PATH_CHARS,
    FileModel,
    Head,
    InputSpec,
    Model,
    ModelRef,
    SourceFormat,
    TorchModel,
    check_path_text,
    import_object,
    infer_format,
    shown,
)
from slimkit.formats.base import FormatName as Format
from slimkit.formats.onnx import load_onnx
from slimkit.formats.openvino import load_openvino

__all__ = ["MAX_PATH_CHARS", "FileModel", "Format", "Head", "InputSpec", "Model", "ModelRef",
           "SourceFormat", "TorchModel", "check_path_text", "import_object", "infer_format",
           "load_model", "load_onnx", "load_openvino"]


def load_model(ref: ModelRef | str) -> Model:
    """Load a model from any supported source."""
    if isinstance(ref, str):
        try:
            ref = ModelRef(source=ref)
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise ModelLoadError(f"{shown(ref) or repr(ref)}: {msg}") from None
    return get_format(ref.resolved_format()).load(ref)
