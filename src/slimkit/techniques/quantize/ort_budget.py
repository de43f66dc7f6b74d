"""The accuracy-aware loop for ONNX Runtime quantizers: quantize, score against the float
model on calibration data, keep nodes in float (most error per share of run time first) until
the budget holds on the search rows and on the held-out rows."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.data import Dataset
from slimkit.techniques.quantize.budget import Budget, Fallback, Rows, search_report
from slimkit.techniques.quantize.heldout import CHECK_ROWS, Split, split_data, take
from slimkit.techniques.quantize.layer_costs import onnx_costs

# quantize(output path, only these nodes or None for all, nodes to exclude)
Quantize = Callable[[Path, list[str] | None, list[str]], None]


def check_split(data: Dataset) -> Split:
    return split_data(data, CHECK_ROWS)


def outputs(path: Path, data: Dataset, threads: int) -> np.ndarray:
    from slimkit.evaluate import collect_outputs
    from slimkit.model import load_onnx
    from slimkit.runtimes import RuntimeOptions, get_runtime

    session = get_runtime("onnxruntime", RuntimeOptions(threads=threads)).load(load_onnx(path))
    return collect_outputs(session, data, 32)


def quantize_within_budget(source: Path, out: Path, quantize: Quantize, nodes: list[str],
                           budget: Budget, data: Dataset, threads: int,
                           fallback: Fallback = "latency",
                           split: Split | None = None) -> dict[str, Any]:
    split = split or check_split(data)
    search, held = take(data, split.search), take(data, split.heldout)
    with tempfile.TemporaryDirectory(prefix="slimkit-aaq-") as tmp:
        trial = Path(tmp) / "trial.onnx"
        last: list[tuple[list[str] | None, list[str]]] = []

        def run(rows: Dataset) -> Callable[[list[str] | None, list[str]], np.ndarray]:
            def trial_outputs(only: list[str] | None, exclude: list[str]) -> np.ndarray:
                # the held-out check follows the search trial of the same choice: reuse it
                if last != [(only, list(exclude))]:
                    quantize(trial, only, exclude)
                    last[:] = [(only, list(exclude))]
                return outputs(trial, rows, threads)
            return trial_outputs

        heldout = None
        if len(held):
            heldout = Rows(outputs(source, held, threads), held.labels, run(held))
        costs = partial(onnx_costs, source, nodes, search, threads) \
            if fallback == "latency" else None
        report = search_report(nodes, budget, outputs(source, search, threads), search.labels,
                               run(search), heldout=heldout, costs=costs)
    quantize(out, None, report["kept_float"])
    return {**report, **split.report()}
