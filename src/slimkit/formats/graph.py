"""Conversions as registered edges between formats, and the way from one format to another.

A line of formats cannot say torch -> LiteRT beside torch -> ONNX -> OpenVINO; a graph can.
Each conversion registers itself (`@converter("torch", "onnx")`), and the way between two
formats is the shortest chain of registered conversions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.errors import TechniqueError
from slimkit.formats.base import Model, format_names

if TYPE_CHECKING:
    from slimkit.dataset import Dataset

# Part of every conversion step's cache key: bump it when converted graphs change.
# 2: Hugging Face attention exported in eager form. 3, 4: constant QuantizeLinear folded.
EXPORT_VERSION = 4

# (model, folder to write into, example inputs or None) -> the converted model
Converter = Callable[[Any, Path, "Dataset | None"], Model]

_EDGES: dict[tuple[str, str], Converter] = {}


def converter(source: str, target: str) -> Callable[[Converter], Converter]:
    """Register the decorated function as the conversion from `source` to `target`."""

    def register(fn: Converter) -> Converter:
        if (source, target) in _EDGES:
            raise ValueError(f"a conversion from {source} to {target} is registered already")
        _EDGES[source, target] = fn
        return fn

    return register


def unregister_converter(source: str, target: str) -> None:
    _EDGES.pop((source, target), None)


def edges() -> list[tuple[str, str]]:
    return list(_EDGES)


def _known(name: str) -> None:
    nodes = dict.fromkeys([*format_names(), *(f for e in _EDGES for f in e)])
    if name not in nodes:
        raise TechniqueError(f"unknown format {name!r} (known: {', '.join(nodes)})")


def _hops(origin: str, *, towards: bool) -> dict[str, int]:
    """Conversions from each format to `origin` (`towards`), or from `origin` to each format,
    for the formats connected to it that way; breadth first, so the fewest."""
    dist = {origin: 0}
    todo = deque([origin])
    while todo:
        node = todo.popleft()
        for a, b in _EDGES:
            near, far = (b, a) if towards else (a, b)
            if near == node and far not in dist:
                dist[far] = dist[node] + 1
                todo.append(far)
    return dist


def _distances_to(end: str) -> dict[str, int]:
    return _hops(end, towards=True)


def reachable(start: str) -> list[str]:
    """The formats a `start` model can be converted into, nearest first."""
    return [f for f in _hops(start, towards=False) if f != start]


def path_between(start: str, end: str) -> list[str]:
    """Formats from `start` to `end` inclusive, along the fewest conversions.

    Among ways of equal length the first registered conversion wins at each format, so the way
    from any format on a path is the rest of that path: a planner may stop at a format on the
    way and carry on later without taking another route.
    """
    _known(start)
    _known(end)
    dist = _distances_to(end)
    if start not in dist:
        ahead = ", ".join(reachable(start)) or "none"
        if start in reachable(end):
            raise TechniqueError(f"{_a(start)} {start} model cannot be turned back into {end} "
                                 f"(reachable from {start}: {ahead})")
        raise TechniqueError(f"no conversion leads from {start} to {end} (reachable from "
                             f"{start}: {ahead})")
    path = [start]
    while path[-1] != end:
        here = path[-1]
        path.append(next(b for a, b in _EDGES if a == here and dist.get(b) == dist[here] - 1))
    return path


def convert(model: Model, target: str, workdir: Path, example: Dataset | None = None) -> Model:
    """Convert one hop: the registered conversion from the model's format to `target`."""
    fn = _EDGES.get((model.format, target))
    if fn is None:
        raise TechniqueError(f"cannot convert a {model.format} model to {target}")
    return fn(model, workdir, example)


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"
