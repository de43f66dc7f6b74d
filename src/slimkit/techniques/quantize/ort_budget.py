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


def outputs(path: Path, data: Dataset, threads: int) -> np.ndarray:
    from slimkit.evaluate import collect_outputs
    from slimkit.model import load_onnx
    from slimkit.runtimes import RuntimeOptions, get_runtime

    session = get_runtime("onnxruntime", RuntimeOptions(threads=threads)).load(load_onnx(path))
    return collect_outputs(session, data, 32)


def quantize_within_budget(source: Path, out: Path, quantize: Quantize, nodes: list[str],
                           budget: Budget, data: Dataset, threads: int) -> dict[str, Any]:
    check = data.head(min(len(data), 256))
    n, labels = len(check), check.labels
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
