"""Models and how to load them.

A model arrives as a Python factory (`package.module:function`), a Hugging Face directory, an
`.onnx` file or an OpenVINO IR `.xml`. Whatever the source, the loaded model carries its input
signature, so data, export and benchmarks never guess names, dtypes or dynamic axes.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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

    @field_validator("source")
    @classmethod
    def _usable_source(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty: give a model file, a directory or package.module:function")
        return check_path_text(v)

    def resolved_format(self) -> SourceFormat:
        return self.format or infer_format(self.source)


# Longest path Linux accepts; anything longer fails only when a file is opened.
MAX_PATH_CHARS = 4096


def check_path_text(v: str) -> str:
    """A path as written in a recipe, refused early when no file system would take it: a NUL
    byte crashes `open`, a line break or other control character makes a name no one can type
    or read back from a log."""
    if not v:
        raise ValueError("empty: give a path")
    if len(v) > MAX_PATH_CHARS:
        raise ValueError(f"a path of {len(v)} characters; at most {MAX_PATH_CHARS}")
    bad = next((c for c in v if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ValueError(f"contains the control character {bad!r} at {v.index(bad)}; not a "
                         f"usable path")
    return v


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
    try:
        return _infer_format(source)
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, no permission
        raise ModelLoadError(f"{_shown(source)}: not a usable path ({_first_line(e)})") from e


def _infer_format(source: str) -> SourceFormat:
    path = Path(source)
    shown = _shown(source)
    if path.suffix == ".onnx":
        return "onnx"
    if path.suffix == ".xml":
        return "openvino"
    if path.is_dir() and (path / "config.json").exists():
        return "hf"
    if ":" in source and not path.exists():
        return "torch"
    if path.is_dir():
        raise ModelLoadError(f"{shown}: directory has no config.json (not a Hugging Face model)")
    if not path.exists():
        raise ModelLoadError(f"{shown}: no such file or directory")
    raise ModelLoadError(
        f"{shown}: unknown model format (expected .onnx, .xml, a Hugging Face directory or "
        "package.module:function)"
    )


def _shown(source: str | Path) -> str:
    """A source as quoted in a message: one line, and short even when the path is not."""
    text = " ".join(str(source).splitlines()).replace("\x00", " ")
    return text if len(text) <= 160 else "..." + text[-157:]


def import_object(spec: str, what: str = "factory") -> Any:
    """Resolve `package.module:attribute`, with one clear line when it does not exist."""
    shown = _shown(spec)
    if ":" not in spec:
        raise ModelLoadError(f"{shown}: a {what} is written package.module:function")
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except (ImportError, ValueError, TypeError) as e:  # ValueError, TypeError: '' or '.x'
        raise ModelLoadError(f"{shown}: cannot import module {mod_name[:80]!r} "
                             f"({_first_line(e)})") from e
    try:
        return getattr(mod, attr)
    except AttributeError as e:
        raise ModelLoadError(f"{shown}: module {mod_name[:80]!r} has no attribute "
                             f"{attr[:80]!r}") from e


def load_model(ref: ModelRef | str) -> Model:
    """Load a model from any supported source."""
    if isinstance(ref, str):
        try:
            ref = ModelRef(source=ref)
        except ValidationError as e:
            msg = e.errors()[0]["msg"].removeprefix("Value error, ")
            raise ModelLoadError(f"{_shown(ref) or repr(ref)}: {msg}") from None
    fmt = ref.resolved_format()
    if fmt in ("torch", "hf"):
        if fmt == "torch":
            model = _load_factory(ref)
        else:
            from slimkit.hf import load_hf

            _check_hf_config(Path(ref.source))
            try:
                model = load_hf(Path(ref.source), ref.head)
            except ModelLoadError as e:  # it quotes transformers, whose text spans lines
                raise ModelLoadError(" ".join(str(e).split())[:400]) from e
        model.ref = ref
        return model
    if fmt == "onnx":
        return load_onnx(Path(ref.source))
    return load_openvino(Path(ref.source))


def _check_hf_config(path: Path) -> None:
    """A config.json that is not a JSON object, found before transformers reads it (and
    answers with a paragraph)."""
    import json

    try:
        config = json.loads((path / "config.json").read_bytes())
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise ModelLoadError(f"{_shown(path)}: config.json is not readable JSON "
                             f"({_first_line(e)})") from e
    if not isinstance(config, dict):
        raise ModelLoadError(f"{_shown(path)}: config.json is not a JSON object")


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

    shown = _shown(path)
    if not _is_file(path):
        raise ModelLoadError(f"{shown}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:
        raise ModelLoadError(f"{shown}: not a valid ONNX model ({_first_line(e)})") from e
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
    _check_io(shown, "ONNX model", len(inputs), len(proto.graph.output))
    missing = _missing_external_data(proto, path.parent)
    if missing:
        raise ModelLoadError(f"{shown}: its weights file {_shown(missing)[:120]} is missing")
    unknown = _unknown_to_ort(proto)
    if unknown:
        raise ModelLoadError(f"{shown}: ONNX Runtime has no operator {unknown[:80]} (the ONNX "
                             f"checker does not check custom domains)")
    return FileModel("onnx", path, inputs, tokenizer)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


def _check_io(shown: str, what: str, inputs: int, outputs: int) -> None:
    """A graph without inputs or outputs passes the checkers, but there is nothing to feed or
    to measure, and the first batch would fail far from the cause."""
    if not inputs:
        raise ModelLoadError(f"{shown}: the {what} has no inputs")
    if not outputs:
        raise ModelLoadError(f"{shown}: the {what} has no outputs")


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


def load_openvino(path: Path, tokenizer: str | None = None) -> FileModel:
    import openvino as ov

    shown = _shown(path)
    if not _is_file(path):
        raise ModelLoadError(f"{shown}: no such file")
    if not _is_file(path.with_suffix(".bin")):
        raise ModelLoadError(f"{shown}: the weights file {path.with_suffix('.bin').name} is "
                             f"missing")
    _check_ir_root(path, shown)
    try:
        model = ov.Core().read_model(str(path), str(path.with_suffix(".bin")))
    except Exception as e:
        raise ModelLoadError(f"{shown}: not a valid OpenVINO IR ({_first_line(e)})") from e
    _check_io(shown, "OpenVINO IR", len(model.inputs), len(model.outputs))
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


def _check_ir_root(path: Path, shown: str) -> None:
    """An .xml whose root is not `<net>` is no IR. OpenVINO would try every frontend it has on
    it (TensorFlow's prints parse errors to stderr) and answer with a line naming none."""
    import xml.etree.ElementTree as ET

    try:
        _, root = next(ET.iterparse(str(path), events=("start",)))
    except (ET.ParseError, StopIteration, OSError, UnicodeError) as e:
        raise ModelLoadError(f"{shown}: not an OpenVINO IR (not XML: "
                             f"{_first_line(e) if str(e) else 'empty'})") from e
    if root.tag != "net":
        raise ModelLoadError(f"{shown}: not an OpenVINO IR (its root element is "
                             f"<{root.tag[:40]}>, not <net>)")


def _ov_dtype(name: str) -> str:
    return {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i64": "int64",
            "i32": "int32", "u8": "uint8", "i8": "int8", "boolean": "bool"}.get(name, "float32")


def _first_line(e: BaseException) -> str:
    """The line of a library's message that says what is wrong: OpenVINO's begins with
    `Exception from src/...cpp:84:` and `Check '...' failed at ...` lines naming its sources."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    said = [x for x in lines if not x.startswith(("Exception from ", "Check '"))]
    text = (said or lines or [type(e).__name__])[0]
    return text[:300]
