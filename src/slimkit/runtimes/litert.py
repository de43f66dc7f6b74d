"""LiteRT (TFLite) on the ai-edge-litert interpreter, XNNPACK on CPU.

XNNPACK is the interpreter's default delegate, so the rows measure what an app using LiteRT
on a CPU gets. The interpreter holds tensors of one shape: a batch of another size resizes the
inputs and reallocates, once per change, which a benchmark's warm-up absorbs.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np

from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.formats.base import first_line
from slimkit.formats.litert import input_names, open_interpreter, quiet
from slimkit.model import FileModel, Model
from slimkit.runtimes.base import Runtime, Session


class LiteRtSession(Session):
    def __init__(self, interpreter: Any, names: list[str]) -> None:
        self.it = interpreter
        self.names = names
        self.inputs = interpreter.get_input_details()
        self.shapes: list[tuple[int, ...]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays = [feeds[n] for n in self.names]
        shapes = [a.shape for a in arrays]
        if shapes != self.shapes:
            self._resize(shapes)
        for d, a in zip(self.inputs, arrays, strict=True):
            self.it.set_tensor(d["index"], _as_input(a, d))
        self.it.invoke()
        return [_as_output(self.it.get_tensor(d["index"]), d)
                for d in self.it.get_output_details()]

    def _resize(self, shapes: list[tuple[int, ...]]) -> None:
        try:
            with quiet():
                for d, s in zip(self.inputs, shapes, strict=True):
                    self.it.resize_tensor_input(d["index"], list(s), strict=False)
                self.it.allocate_tensors()
        except Exception as e:
            raise TechniqueError(f"litert cannot run inputs of shapes {shapes} "
                                 f"({first_line(e)})") from e
        self.shapes = shapes
        self.inputs = self.it.get_input_details()


def _as_input(a: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float data for an int8/uint8 input is quantized with the input's own scale."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if dtype.kind in "iu" and a.dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(a / scale) + zero, info.min, info.max).astype(dtype)
    return np.ascontiguousarray(a, dtype=dtype)


def _as_output(o: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if o.dtype.kind in "iu" and scale:
        return ((o.astype(np.float32) - zero) * scale).astype(np.float32)
    return o.astype(np.float32) if o.dtype == np.float16 else o


class LiteRtRuntime(Runtime):
    name = "litert"
    format = "litert"

    def load(self, model: Model) -> Session:
        if not isinstance(model, FileModel) or model.format != "litert":
            raise TechniqueError(f"litert runs LiteRT (.tflite) models, not {model.format}")
        try:
            it = open_interpreter(model.path, self.options.threads)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(f"{model.path}: LiteRT cannot load it ({e})") from e
        given = [i.name for i in model.inputs]
        if len(given) != len(it.get_input_details()):
            raise ModelLoadError(f"{model.path}: {len(it.get_input_details())} inputs, but its "
                                 f"signature names {len(given)}")
        own = input_names(it)  # fed by name where the names agree, else in order
        return LiteRtSession(it, own if sorted(own) == sorted(given) else given)

    def describe(self) -> dict[str, Any]:
        try:
            version = metadata.version("ai-edge-litert")
        except metadata.PackageNotFoundError:
            version = "not installed"
        return {"runtime": "litert", "version": version, "device": "cpu (XNNPACK)",
                "threads": self.options.threads}
