"""The accuracy-aware loop for ONNX Runtime quantizers: quantize, score against the float
model on calibration data, keep the most sensitive nodes in float until the budget holds."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.data import Dataset
from slimkit.techniques.quantize.budget import Budget, Quality, keep_sensitive_in_float, measure

# quantize(output path, only these nodes or None for all, nodes to exclude)
Quantize = Callable[[Path, list[str] | None, list[str]], None]


def outputs(path: Path, feeds: dict[str, np.ndarray], threads: int) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    n = len(next(iter(feeds.values())))
    parts = [sess.run(None, {k: feeds[k][i : i + 32] for k in names})[0] for i in range(0, n, 32)]
    return np.concatenate(parts)


def quantize_within_budget(source: Path, out: Path, quantize: Quantize, nodes: list[str],
                           budget: Budget, data: Dataset, threads: int) -> dict[str, Any]:
    n = min(len(data), 256)
    check = data.slice(0, n)
    labels = None if data.labels is None else data.labels[:n]
    reference = outputs(source, check, threads)
    with tempfile.TemporaryDirectory(prefix="slimkit-aaq-") as tmp:
        trial = Path(tmp) / "trial.onnx"

        def evaluate(only: list[str] | None, exclude: list[str]) -> Quality:
            quantize(trial, only, exclude)
            return measure(outputs(trial, check, threads), reference, labels)

        result = keep_sensitive_in_float(nodes, budget, evaluate)
    quantize(out, None, result.kept_float)
    return {"kept_float": result.kept_float, "budget": budget.model_dump(),
            "cosine": result.quality.cosine, "accuracy_drop": result.quality.accuracy_drop,
            "trials": result.tried, "layers": result.layers, "checked_on": n}
