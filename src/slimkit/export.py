"""Format conversions, run as pipeline steps like any technique, so they are cached and appear
in a candidate's lineage. The conversions themselves are registered edges of the format graph
(`slimkit.formats`); this module keeps their public names."""

from __future__ import annotations

from slimkit.formats.graph import EXPORT_VERSION, convert, path_between
from slimkit.formats.onnx_export import OPSET, to_onnx
from slimkit.formats.openvino import to_openvino

__all__ = ["EXPORT_VERSION", "OPSET", "convert", "path_between", "to_onnx",
           "to_openvino"]
