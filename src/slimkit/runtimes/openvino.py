"""OpenVINO, CPU plugin.

OpenVINO picks bf16 by itself on CPUs that support it. slimkit pins the inference precision to
f32 unless the artifact asks otherwise (the bf16 cast technique), so an "fp32" row really is fp32
and a faster row is explained by its recipe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import openvino as ov

from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.model import FileModel, Model
from slimkit.runtimes.base import Runtime, Session


class OvSession(Session):
    def __init__(self, compiled: ov.CompiledModel, names: list[str] | None = None) -> None:
        self.request = compiled.create_infer_request()
        # Compiling can give an input more names (a no-op Reshape after it is folded away, as
        # in tf2onnx's graphs); the one the model's signature uses is the one fed.
        wanted = set(names or ())
        self.names = [next((n for n in sorted(p.get_names()) if n in wanted), p.get_any_name())
                      for p in compiled.inputs]
        self.outputs = list(compiled.outputs)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = self.request.infer({n: feeds[n] for n in self.names})
        return [np.array(res[o]) for o in self.outputs]


class OpenVinoRuntime(Runtime):
    name = "openvino"
    format = "openvino"

    def load(self, model: Model) -> Session:
        if not isinstance(model, FileModel) or model.format != "openvino":
            raise TechniqueError(f"openvino runs OpenVINO IR models, not {model.format}")
        config = {
            "INFERENCE_NUM_THREADS": self.options.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": model.session_options.get("inference_precision", "f32"),
        }
        try:
            compiled = ov.Core().compile_model(str(model.path), "CPU", config)
        except Exception as e:
            raise ModelLoadError(f"{model.path}: OpenVINO cannot compile it ({e})") from e
        return OvSession(compiled, [i.name for i in model.inputs])

    def describe(self) -> dict[str, Any]:
        return {"runtime": "openvino", "version": ov.get_version(), "device": "CPU",
                "threads": self.options.threads}
