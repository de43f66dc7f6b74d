"""Model formats as objects, and conversions as a graph between them.

Importing the package registers the built-in formats (torch, hf, onnx, openvino, tensorflow,
litert) and their conversions; each module imports its heavy library (torch, onnx, openvino,
tensorflow, litert-torch) only when used.
"""

from slimkit.formats import (
    hf,
    litert,
    litert_export,
    onnx,
    onnx_export,
    openvino,
    tensorflow,
    torch,
)
from slimkit.formats.base import (
    FileFormat,
    FileModel,
    Format,
    FormatName,
    InputSpec,
    Model,
    ModelRef,
    TorchModel,
    format_names,
    get_format,
    infer_format,
    register_format,
    unregister_format,
)
from slimkit.formats.graph import (
    EXPORT_VERSION,
    convert,
    converter,
    edges,
    path_between,
    reachable,
    unregister_converter,
)

__all__ = [
    "EXPORT_VERSION", "FileFormat", "FileModel", "Format", "FormatName", "InputSpec", "Model",
    "ModelRef", "TorchModel", "convert", "converter", "edges", "format_names", "get_format", "hf",
    "infer_format", "litert", "litert_export", "onnx", "onnx_export", "openvino", "path_between",
    "reachable", "register_format", "tensorflow", "torch", "unregister_converter",
    "unregister_format",
]
