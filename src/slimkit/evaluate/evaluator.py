"""Task metrics of a runtime session on a dataset, against labels and the baseline's outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from slimkit.data import Dataset
from slimkit.errors import DataError
from slimkit.evaluate import metrics
from slimkit.runtimes.base import Session

Task = Literal["classification", "embedding", "generic"]

_PRIMARY = {"classification": "accuracy", "embedding": "mean_cosine", "generic": "sqnr_db"}


def primary_metric(task: Task, has_labels: bool) -> str:
    if task == "classification" and not has_labels:
        return "agreement"
    return _PRIMARY[task]


def collect_outputs(session: Session, data: Dataset, batch_size: int, output: int = 0,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Run the whole dataset and keep one output, concatenated over batches."""
    parts = []
    for batch in data.batches(batch_size):
        parts.append(np.asarray(session.run(batch)[output]))
        if progress:
            progress(len(next(iter(batch.values()))))
    return np.concatenate(parts)


def evaluate_outputs(task: Task, outputs: np.ndarray, reference: np.ndarray | None,
                     labels: np.ndarray | None, *, top_k: int = 10,
                     user_metric: Callable[..., Any] | None = None) -> dict[str, float]:
    """Metrics for one candidate. `reference` is the baseline's outputs on the same data."""
    result: dict[str, float] = {}
    if task == "classification":
        if labels is not None:
            result["accuracy"] = metrics.accuracy(outputs, labels)
            if reference is not None:
                ref_acc = metrics.accuracy(reference, labels)
                result["accuracy_delta"] = 100 * (result["accuracy"] - ref_acc)
        if reference is not None:
            result["agreement"] = metrics.agreement(outputs, reference)
    elif task == "embedding" and reference is not None:
        cos = metrics.cosine_rows(outputs, reference)
        result["mean_cosine"] = float(cos.mean())
        result["min_cosine"] = float(cos.min())
        result[f"top{top_k}_agreement"] = metrics.topk_agreement(outputs, reference, top_k)
    if reference is not None:
        fid = metrics.fidelity(outputs, reference)
        result["sqnr_db"] = fid["sqnr_db"]
        result["max_abs_error"] = fid["max_abs_error"]
        if task != "embedding":
            result["cosine"] = fid["cosine"]
    if user_metric is not None:
        result.update(_user(user_metric, outputs, labels, reference))
    return result


def _user(fn: Callable[..., Any], outputs: np.ndarray, labels: np.ndarray | None,
          reference: np.ndarray | None) -> dict[str, float]:
    value = fn(outputs=outputs, labels=labels, reference=reference)
    name = getattr(fn, "__name__", "user_metric")
    items = value.items() if isinstance(value, dict) else [(name, value)]
    out = {}
    for k, v in items:
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError) as e:
            raise DataError(f"user metric {name}: {k} is {v!r}, not a number") from e
    return out
