"""ONNX Runtime, CPU execution provider."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from slimkit.errors import ModelLoadError, TechniqueError
from slimkit.model import FileModel, Model
from slimkit.runtimes.base import Runtime, Session


class OrtSession(Session):
    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.names = [i.name for i in session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outs = self.session.run(None, {n: feeds[n] for n in self.names})
        return [np.asarray(o, dtype=np.float32) if o.dtype == np.float16 else o for o in outs]


class OrtRuntime(Runtime):
    name = "onnxruntime"
    format = "onnx"

    def load(self, model: Model) -> Session:
        if not isinstance(model, FileModel) or model.format != "onnx":
            raise TechniqueError(f"onnxruntime runs ONNX models, not {model.format}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            sess = ort.InferenceSession(str(model.path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelLoadError(f"{model.path}: onnxruntime cannot load it ({e})") from e
        return OrtSession(sess)

    def describe(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "version": ort.__version__,
                "device": "cpu (CPUExecutionProvider)", "threads": self.options.threads}
