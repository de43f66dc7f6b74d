"""Accuracy against latency as the threshold moves, measured on a real runtime.

Early exits pay off per input, so the rows go through the session one at a time, the way a
latency-bound server sees them; each threshold gets its own copy of the model (the threshold is
a constant of the graph) and a fresh session.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slimkit.errors import TechniqueError
from slimkit.model import FileModel, Model, TorchModel

if TYPE_CHECKING:
    from slimkit.data import Dataset
    from slimkit.registry import StepContext
    from slimkit.runtimes import Session

WARMUP = 10


def at_threshold(model: Model, threshold: float, workdir: Path) -> Model:
    """The same early-exit model deciding at `threshold`."""
    from slimkit.techniques.early_exit.net import EarlyExitNet

    if isinstance(model, TorchModel):
        if not isinstance(model.module, EarlyExitNet):
            raise TechniqueError("early_exit: this torch model has no exits")
        net = copy.copy(model.module)  # shares the weights; only the threshold differs
        net.threshold = threshold
        return TorchModel(net, model.inputs, model.tokenizer, ref=model.ref)
    import onnx

    from slimkit.techniques.early_exit.onnx_graph import THRESHOLD

    limit = threshold if threshold < 1.0 else float("inf")
    dest = workdir / f"threshold-{threshold:g}"
    dest.mkdir(parents=True, exist_ok=True)
    if model.format == "onnx":
        proto = onnx.load(str(model.path))
        held = [t for t in proto.graph.initializer if t.name == THRESHOLD]
        if not held:
            raise TechniqueError(f"{model.path}: not an early-exit model (no {THRESHOLD})")
        held[0].CopyFrom(onnx.helper.make_tensor(THRESHOLD, onnx.TensorProto.FLOAT, [], [limit]))
        onnx.save(proto, str(dest / "model.onnx"))
        return FileModel("onnx", dest / "model.onnx", model.inputs, model.tokenizer,
                         dict(model.session_options))
    return _openvino_at(model, limit, dest)


def _openvino_at(model: FileModel, limit: float, dest: Path) -> FileModel:
    """OpenVINO copies the threshold into each `If` body, so every exit's comparison (named
    `e<k>/hit` in the ONNX graph, a name OpenVINO keeps) gets the new constant."""
    import openvino as ov

    ir = ov.Core().read_model(str(model.path))
    if not _set_limit(ir, limit):
        raise TechniqueError(f"{model.path}: not an early-exit model (no exit comparisons)")
    ov.save_model(ir, str(dest / "model.xml"), compress_to_fp16=False)
    return FileModel("openvino", dest / "model.xml", model.inputs, model.tokenizer,
                     dict(model.session_options))


def _set_limit(ir: Any, limit: float) -> int:
    import re

    import openvino as ov

    changed = 0
    for op in ir.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "If":
            changed += sum(_set_limit(op.get_function(k), limit) for k in range(2))
        elif kind == "GreaterEqual" and re.fullmatch(r"e\d+/hit", op.get_friendly_name()):
            source = op.input(1).get_source_output().get_node()
            if source.get_type_name() == "Constant":
                op.input(1).replace_source_output(
                    ov.op.Constant(np.array(limit, dtype=np.float32)).output(0))
                changed += 1
    return changed


def run_rows(session: Session, data: Dataset) -> tuple[list[list[np.ndarray]], np.ndarray]:
    """Every row on its own: the outputs and the seconds each row took."""
    rows = [data.slice(i, i + 1) for i in range(len(data))]
    for i in range(min(WARMUP, len(rows))):
        session.run(rows[i])
    outs, times = [], np.empty(len(rows))
    for i, feeds in enumerate(rows):
        t = time.perf_counter()
        outs.append(session.run(feeds))
        times[i] = time.perf_counter() - t
    return outs, times


def summary(logits: np.ndarray, times: np.ndarray, labels: np.ndarray | None,
            reference: np.ndarray) -> dict[str, Any]:
    top = logits.argmax(1)
    row: dict[str, Any] = {"agreement": round(float((top == reference.argmax(1)).mean()), 4)}
    if labels is not None:
        row["accuracy"] = round(float((top == labels).mean()), 4)
    row["mean_ms"] = round(float(times.mean()) * 1e3, 4)
    row["p99_ms"] = round(float(np.percentile(times, 99)) * 1e3, 4)
    return row


def exit_curve(model: Model, data: Dataset, thresholds: Sequence[float], *,
               runtime: str = "onnxruntime", threads: int = 2, workdir: Path,
               full: Model | None = None) -> dict[str, Any]:
    """For each threshold, the rows one at a time on `runtime`: accuracy (with labels), top-1
    agreement with the final head, the share of rows each exit answered (the last entry is
    the final head) and mean and p99 latency. `full`, the model without exits, is measured the
    same way as the row to compare against."""
    from slimkit.progress import progress_bar
    from slimkit.runtimes import RuntimeOptions, get_runtime

    rt = get_runtime(runtime, RuntimeOptions(threads=threads))
    reference, rows = None, []
    with progress_bar(f"early-exit curve ({runtime})", len(thresholds) + 1) as advance:
        # the final head's answers first: threshold 1.0 is the network without early answers
        for t in [1.0, *thresholds]:
            outs, times = run_rows(rt.load(at_threshold(model, t, workdir)), data)
            logits = np.concatenate([o[0] for o in outs])
            which = np.concatenate([o[1] for o in outs])
            if reference is None:
                reference = logits
                exits = int(which.max()) + 1 if len(which) else 1
                advance(1, "final head")
                continue
            rate = np.bincount(which, minlength=exits) / max(1, len(which))
            rows.append({"threshold": t, **summary(logits, times, data.labels, reference),
                         "exit_rate": [round(float(r), 4) for r in rate]})
            advance(1, f"threshold {t:g}")
    assert reference is not None
    result: dict[str, Any] = {"runtime": rt.describe(), "rows": len(data), "thresholds": rows}
    if full is not None:
        outs, times = run_rows(rt.load(full), data)
        result["full_model"] = summary(np.concatenate([o[0] for o in outs]), times, data.labels,
                                       reference)
    return result


def report_curve(source: TorchModel, made: TorchModel, data: Dataset,
                 thresholds: Sequence[float], ctx: StepContext) -> dict[str, Any]:
    """The curve on ONNX Runtime for the step's report, against the model it started from."""
    from slimkit.formats.onnx_export import to_onnx

    where = ctx.workdir / "curve"
    try:
        full = to_onnx(source, where / "full" / "model.onnx")
        exits = to_onnx(made, where / "exits" / "model.onnx")
        curve = exit_curve(exits, data, thresholds, threads=ctx.threads, workdir=where,
                           full=full)
    finally:
        import shutil

        shutil.rmtree(where, ignore_errors=True)  # scratch: not part of the artifact
    curve["measured_on"] = f"{len(data)} held-out rows of the step's data, batch size 1"
    return curve


def in_words(curve: dict[str, Any]) -> str:
    """The curve on one line, for reports that show a step's plain facts."""
    full = curve.get("full_model") or {}
    base = full.get("mean_ms")
    parts = [f"full model {base:.3g} ms"] if base else []
    for row in curve["thresholds"]:
        ratio = f" ({row['mean_ms'] / base:.2f}x)" if base else ""
        quality = (f"accuracy {row['accuracy']:.1%}" if "accuracy" in row
                   else f"agreement {row['agreement']:.1%}")
        exits = "/".join(f"{r:.0%}" for r in row["exit_rate"])
        parts.append(f"{row['threshold']:g}: {row['mean_ms']:.3g} ms{ratio}, {quality}, "
                     f"exits {exits}")
    return f"{curve['runtime']['runtime']}, batch 1, mean latency by threshold: " + \
        "; ".join(parts)
