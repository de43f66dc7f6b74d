"""Formats as registered objects, and conversions as a graph searched for the shortest way."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.formats import (
    FileModel,
    Model,
    convert,
    converter,
    get_format,
    path_between,
    reachable,
    unregister_converter,
)


def test_path_torch_to_openvino_goes_through_onnx() -> None:
    assert path_between("torch", "openvino") == ["torch", "onnx", "openvino"]
    assert reachable("torch") == ["litert", "onnx", "openvino"]


def _fake_ncnn(model: Model, workdir: Path, example: object = None) -> Model:
    assert isinstance(model, FileModel)
    out = workdir / "model.ncnn"
    out.write_bytes(model.path.read_bytes())
    return FileModel("ncnn", out, model.inputs)  # type: ignore[arg-type]


@pytest.fixture
def ncnn_edge() -> Iterator[None]:
    converter("onnx", "ncnn")(_fake_ncnn)
    try:
        yield
    finally:
        unregister_converter("onnx", "ncnn")


def test_a_registered_edge_makes_a_new_path(ncnn_edge: None, tmp_path: Path) -> None:
    assert path_between("torch", "ncnn") == ["torch", "onnx", "ncnn"]
    assert "ncnn" in reachable("onnx")
    src = tmp_path / "m.onnx"
    src.write_bytes(b"graph")
    out = convert(FileModel("onnx", src, []), "ncnn", tmp_path)
    assert out.format == "ncnn" and out.path.read_bytes() == b"graph"


def test_a_direct_edge_is_preferred_and_then_unregistered(ncnn_edge: None) -> None:
    converter("torch", "ncnn")(_fake_ncnn)
    try:
        assert path_between("torch", "ncnn") == ["torch", "ncnn"]
    finally:
        unregister_converter("torch", "ncnn")
    assert path_between("torch", "ncnn") == ["torch", "onnx", "ncnn"]


def test_an_edge_gone_takes_its_path_with_it() -> None:
    converter("onnx", "ncnn")(_fake_ncnn)
    unregister_converter("onnx", "ncnn")
    with pytest.raises(TechniqueError, match="unknown format 'ncnn'"):
        path_between("torch", "ncnn")


def test_the_way_from_a_format_on_a_path_is_the_rest_of_it(ncnn_edge: None) -> None:
    # two ways of equal length: the planner may stop at onnx and must carry on the same way
    converter("torch", "tvm")(_fake_ncnn)
    converter("tvm", "ncnn")(_fake_ncnn)
    try:
        full = path_between("torch", "ncnn")
        for k, fmt in enumerate(full):
            assert path_between(fmt, "ncnn") == full[k:]
    finally:
        unregister_converter("torch", "tvm")
        unregister_converter("tvm", "ncnn")


def test_a_missing_path_is_refused_in_one_line(ncnn_edge: None) -> None:
    with pytest.raises(TechniqueError) as back:
        path_between("openvino", "torch")
    assert "cannot be turned back" in str(back.value)
    assert "reachable from openvino: none" in str(back.value)
    converter("torch", "tflm")(_fake_ncnn)
    try:
        with pytest.raises(TechniqueError) as aside:
            path_between("onnx", "tflm")
    finally:
        unregister_converter("torch", "tflm")
    text = str(aside.value)
    assert "no conversion leads from onnx to tflm" in text
    assert "openvino" in text and "ncnn" in text
    for e in (back.value, aside.value):
        assert "\n" not in str(e)


def test_a_registered_edge_is_not_registered_twice() -> None:
    with pytest.raises(ValueError, match="registered already"):
        converter("torch", "onnx")(_fake_ncnn)


def test_convert_refuses_an_edge_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(TechniqueError, match="cannot convert a openvino model to onnx"):
        convert(FileModel("openvino", tmp_path / "m.xml", []), "onnx", tmp_path)


def test_formats_know_their_files_and_size(tmp_path: Path) -> None:
    onnx, ov, torch = get_format("onnx"), get_format("openvino"), get_format("torch")
    assert onnx.files[0] == "model.onnx" and ov.files == ("model.xml", "model.bin")
    assert torch.files == ("model.safetensors",)
    for name, size in [("model.onnx", 3), ("weights.onnx.data", 5), ("source.onnx", 7),
                       ("quantization.json", 11)]:
        (tmp_path / name).write_bytes(b"x" * size)
    assert onnx.size(tmp_path) == 8  # the graph and its weights, not the reports beside them
    assert ov.missing(tmp_path) == ["model.xml", "model.bin"]
    (tmp_path / "model.xml").write_text("<net/>")
    assert ov.missing(tmp_path) == ["model.bin"]


def test_an_unknown_format_is_named_with_the_known_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown format 'pickle' \(known: .*onnx"):
        get_format("pickle")


def test_formats_load_no_heavy_library() -> None:
    code = ("import json, sys\nimport slimkit.formats, slimkit.model, slimkit.export, "
            "slimkit.data\nprint(json.dumps([m for m in ('torch', 'onnx', 'openvino', "
            "'onnxruntime', 'transformers') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_parsing_an_onnx_recipe_loads_no_torch() -> None:
    code = ("import json, sys\nfrom slimkit.config import parse_recipe\n"
            "parse_recipe({'name': 'r', 'model': {'source': 'm.onnx'}, 'data': {'source': "
            "'npz', 'path': 'd.npz'}, 'candidates': [{'name': 'a', 'runtime': 'onnxruntime', "
            "'baseline': True}, {'name': 'b', 'runtime': 'openvino'}]})\n"
            "print(json.dumps('torch' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False


# Models, formats and data: the modules that must not import each other in a circle.
_LAYER = ("slimkit.model", "slimkit.hf", "slimkit.data", "slimkit.dataset", "slimkit.export",
          "slimkit.formats", "slimkit.examples")


def _imports(path: Path) -> set[str]:
    """Every slimkit module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("slimkit")}


def test_models_formats_and_data_import_no_circle() -> None:
    root = Path(__file__).resolve().parents[1] / "src"
    modules = {}
    for p in (root / "slimkit").rglob("*.py"):
        name = ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if name.startswith(_LAYER):
            modules[name] = p
    graph = {m: {i for i in _imports(p) if i in modules and i != m} for m, p in modules.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                raise AssertionError(" -> ".join([*trail[trail.index(n):], n]))
            if n not in state:
                visit(n, [*trail, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
