"""ONNX models: one `.onnx` graph, its weights inside or in a `.onnx.data` file beside it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from slimkit.errors import ModelLoadError
from slimkit.formats.base import (
    FileFormat,
    FileModel,
    InputSpec,
    Model,
    check_io,
    first_line,
    is_file,
    register_format,
    shown,
)

_ONNX_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16", 7: "int64", 6: "int32", 2: "uint8",
                3: "int8", 9: "bool", 11: "float64"}


class OnnxFormat(FileFormat):
    name = "onnx"
    files = ("model.onnx", "model.onnx.data")
    suffix = ".onnx"

    def read(self, path: Path, tokenizer: str | None = None) -> Model:
        return load_onnx(path, tokenizer)

    def extras(self, main: Path) -> list[Path]:
        data = main.with_name(main.name + ".data")
        return [data] if data.exists() else []

    def owns(self, name: str) -> bool:
        # the weights file keeps the name the graph gives it, whatever that is
        return name == self.files[0] or name.endswith(".onnx.data")


def load_onnx(path: Path, tokenizer: str | None = None) -> FileModel:
    import onnx

    text = shown(path)
    if not is_file(path):
        raise ModelLoadError(f"{text}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelLoadError(f"{text}: not a valid ONNX model ({first_line(e)})") from e
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
    check_io(text, "ONNX model", len(inputs), len(proto.graph.output))
    missing = _missing_external_data(proto, path.parent)
    if missing:
        raise ModelLoadError(f"{text}: its weights file {shown(missing)[:120]} is missing")
    unknown = _unknown_to_ort(proto)
    if unknown:
        raise ModelLoadError(f"{text}: ONNX Runtime has no operator {unknown[:80]} (the ONNX "
                             f"checker does not check custom domains)")
    return FileModel("onnx", path, inputs, tokenizer)


def _missing_external_data(proto: Any, folder: Path) -> str | None:
    """The first external weights file the model names that is not there: the checker does not
    look (the model was read without it), and a runtime would fail only when it loads."""
    for t in proto.graph.initializer:
        if t.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        where = next((e.value for e in t.external_data if e.key == "location"), "")
        try:
            present = bool(where) and (folder / where).is_file()
        except (OSError, ValueError):  # a NUL byte or a name too long
            present = False
        if not present:
            return where or f"(none named for {t.name[:60]})"
    return None


def _unknown_to_ort(proto: Any) -> str | None:
    """The first operator of the main graph that ONNX Runtime has no schema for.

    The ONNX checker skips domains it does not know, so such a file loads here and fails only
    in a runtime, far from its cause. Looking the operators up in ONNX Runtime's registry costs
    milliseconds; creating an InferenceSession would catch more (a kernel missing for one
    dtype) but takes seconds and the model's size in memory for a big model, at every artifact
    load, so those cases stay with the runtime, which reports them per candidate."""
    known = _ort_operators()
    if known is None:
        return None
    known = known | {(f.domain, f.name) for f in proto.functions}
    for node in proto.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        if (domain, node.op_type) not in known:
            return f"{domain}:{node.op_type}" if domain else node.op_type
    return None


@functools.cache
def _ort_operators() -> frozenset[tuple[str, str]] | None:
    try:
        from onnxruntime.capi import _pybind_state
    except ImportError:
        return None
    return frozenset((d.domain, d.name) for d in _pybind_state.get_all_operator_schema())


ONNX = register_format(OnnxFormat())
