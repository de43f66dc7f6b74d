"""The accuracy-aware loop for ONNX Runtime quantizers: quantize, score against the float
model on calibration data, keep the most sensitive nodes in float until the budget holds."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.data import Dataset
from slimkit.techniques.quantize.budget import Budget, search_report

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
    reference = outputs(source, check, threads)
    with tempfile.TemporaryDirectory(prefix="slimkit-aaq-") as tmp:
        trial = Path(tmp) / "trial.onnx"

        def trial_outputs(only: list[str] | None, exclude: list[str]) -> np.ndarray:
            quantize(trial, only, exclude)
            return outputs(trial, check, threads)

        report = search_report(nodes, budget, reference, check.labels, trial_outputs)
    quantize(out, None, report["kept_float"])
    return report
