"""One trial: a pure function of (model, steps, runtime, data) -> artifact + quality figures.

It runs wherever the search sends it (this process, or a Ray worker on another node), takes
and returns only small JSON-able dicts, and keeps every artifact and output in the shared
cache, so a resumed search or another worker skips what is done. Quality is scored coarse to
fine: on a slice of the data first, and on all of it only when the slice leaves the trial a
chance to meet the budget.
"""

from __future__ import annotations

import functools
import json
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.data import DataSpec, load_data
from slimkit.dataset import Dataset
from slimkit.errors import SlimkitError
from slimkit.evaluate import evaluate_outputs
from slimkit.evaluate.fidelity import Budget, Fidelity, accuracy_targets, score
from slimkit.model import Model, ModelRef, load_model
from slimkit.outputs import model_outputs, outputs_key
from slimkit.pipeline import Cache, build, model_key
from slimkit.registry import parse_step
from slimkit.runtimes import runtime_format


@dataclass
class Context:
    """What every trial of one search shares, loaded once per process."""

    model: Model
    key: str
    data: Dataset
    calibration: Dataset | None
    reference: np.ndarray
    targets: np.ndarray | None
    cache: Cache
    evaluation: dict[str, Any]
    budget: Budget
    slice: int
    threads: int


@functools.cache
def _context(text: str) -> Context:
    spec = json.loads(text)
    model = load_model(ModelRef.model_validate(spec["model"]))
    data = load_data(DataSpec.model_validate(spec["data"]), model)
    calib = load_data(DataSpec.model_validate(spec["calibration"]), model) \
        if spec.get("calibration") else None
    with np.load(spec["reference"], allow_pickle=False) as z:
        reference = z["outputs"]
    budget = Budget.model_validate(spec["budget"])
    targets = accuracy_targets(budget, reference, data.labels) \
        if budget.max_drop is not None or reference.ndim == 2 else None
    return Context(model, model_key(model), data, calib, reference, targets,
                   Cache(Path(spec["cache"])), spec["evaluation"], budget,
                   min(int(spec["slice"]), len(data)), int(spec["threads"]))


def clearly_outside(fid: Fidelity, budget: Budget, rows: int) -> bool:
    """Whether a slice's figure is so far outside the budget that the rest of the data
    cannot bring it back: twice the allowed loss, plus two rows' worth of accuracy."""
    if budget.max_drop is not None:
        return (fid.accuracy_drop or 0.0) > 2 * budget.max_drop + 200.0 / max(rows, 1)
    allowed = 1.0 - (budget.min_cosine or 0.0)
    return not fid.cosine >= 1.0 - 2 * allowed - 1e-6


def _fidelity(fid: Fidelity, budget: Budget) -> dict[str, Any]:
    return {"cosine": fid.cosine, "accuracy_drop": fid.accuracy_drop,
            "error": fid.error(budget), "within": fid.within(budget)}


def run_trial(payload: dict[str, Any]) -> dict[str, Any]:
    """Build the trial's steps for its runtime and score its quality; a failure is a result
    (state `failed`, one line and the traceback), never an exception, so a batch goes on."""
    t0 = time.perf_counter()
    node = socket.gethostname()
    try:
        return {**_run(payload), "seconds": time.perf_counter() - t0, "node": node}
    except SlimkitError as e:
        return {"state": "failed", "error": str(e)[:500], "seconds": time.perf_counter() - t0,
                "node": node}
    except Exception as e:
        return {"state": "failed", "error": f"{type(e).__name__}: {str(e)[:300]}",
                "traceback": traceback.format_exc(), "seconds": time.perf_counter() - t0,
                "node": node}


def _run(payload: dict[str, Any]) -> dict[str, Any]:
    from slimkit.run import model_bytes, technique_reports

    ctx = _context(payload["context"])
    runtime = payload["runtime"]
    steps = [parse_step(s) for s in payload["steps"]]
    built = build(ctx.model, ctx.key, steps, runtime_format(runtime), ctx.cache,
                  data=ctx.calibration, threads=ctx.threads)
    ev = ctx.evaluation
    head = ctx.data.head(ctx.slice)
    outputs = model_outputs(built.path, outputs_key(built.key, runtime, ev, head), runtime,
                            head, ctx.cache.root, batch_size=ev["batch_size"],
                            output=ev["output"], threads=ctx.threads)
    n = ctx.slice
    first = score(outputs, ctx.reference[:n], None if ctx.targets is None else ctx.targets[:n])
    found: dict[str, Any] = {
        "key": built.key, "artifact": str(built.path), "lineage": built.lineage(),
        "size_bytes": model_bytes(built.path), "slice": {"rows": n, **_fidelity(first,
                                                                                 ctx.budget)},
        "reports": technique_reports(ctx.cache, built)}
    if clearly_outside(first, ctx.budget, n):
        return {"state": "pruned", **found}
    if n < len(ctx.data):
        outputs = model_outputs(built.path, outputs_key(built.key, runtime, ev, ctx.data),
                                runtime, ctx.data, ctx.cache.root, batch_size=ev["batch_size"],
                                output=ev["output"], threads=ctx.threads)
    fid = score(outputs, ctx.reference, ctx.targets)
    quality = evaluate_outputs(ev["task"], outputs, ctx.reference, ctx.data.labels,
                               top_k=ev["top_k"])
    return {"state": "complete", **found, "fidelity": _fidelity(fid, ctx.budget),
            "quality": quality}
