"""The shape of src/slimkit: no import cycle, short functions, and listing techniques loads
no backend.

Imports inside functions count: a low-level module that reaches up at call time still ties the
layers together (it cannot be read, tested or replaced alone). Registration tables owned by the
low-level module, filled by the modules above it, are how a lookup goes upward instead.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import slimkit

SRC = Path(slimkit.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(path: Path, known: set[str]) -> set[str]:
    """The slimkit modules a file imports anywhere in it, by statement or by a literal
    `importlib.import_module("...")`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # `from slimkit.x import y` where y is no module
            target = target.rpartition(".")[0]
        if target:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            for a in node.names:
                add(f"{base}.{a.name}")
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                node.func, "id", None)) == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    # Importing a.b.c runs a/__init__ and a/b/__init__ first; the root package is the public
    # face that imports the rest, so edges into it are left out.
    parts = name.split(".")
    del parts
    return {m for m in found if m.startswith("slimkit.") and m != name}


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in SRC.rglob("*.py")}
    return {m: imported(p, set(files)) for m, p in files.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_function_level_imports() -> None:
    edges = graph()
    assert "slimkit.registry" in edges["slimkit.techniques.cast"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_listing_techniques_loads_no_backend() -> None:
    code = ("import sys; from slimkit.cli import main; sys.argv = ['slimkit', 'list']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'onnxruntime', 'openvino', 'onnx', 'transformers') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "technique:" in out and "static_int8" in out
    assert out.strip().splitlines()[-1] == "HEAVY []"


LONGEST_FUNCTION = 80


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > LONGEST_FUNCTION:
                    long.append(f"{module_name(path)}.{node.name}: {lines}")
    assert long == []
