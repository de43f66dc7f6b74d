"""Observers fed from an ONNX model run by ONNX Runtime.

The tensors to observe become extra graph outputs, so each batch's values come back with the
model's own outputs and go straight to the same observer classes the torch hooks feed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.observe.base import Observer
from slimkit.observe.requests import Factory

if TYPE_CHECKING:
    from slimkit.data import Dataset


class OnnxTaps:
    """An inference session whose outputs are the tensors to observe. No graph fusions: the
    tensors asked for must exist as they are in the file."""

    def __init__(self, model_path: Path, tensors: list[str], threads: int = 2) -> None:
        import onnx
        import onnxruntime as ort

        model = onnx.load(str(model_path))
        present = {o.name for o in model.graph.output}
        for n in tensors:
            if n not in present:
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(model.SerializeToString(), so,
                                            providers=["CPUExecutionProvider"])
        self.tensors = tensors
        self.feeds = [i.name for i in self.session.get_inputs()]

    def feed(self, data: Dataset, observers: Mapping[str, Mapping[str, Observer]],
             batch_size: int = 8, advance: Callable[..., Any] | None = None) -> None:
        """One pass over `data`, each batch's tensors handed to their observers."""
        wanted = [n for n in self.tensors if observers.get(n)]
        for batch in data.batches(batch_size):
            outs = self.session.run(wanted, {k: batch[k] for k in self.feeds})
            for name, value in zip(wanted, outs, strict=True):
                for obs in observers[name].values():
                    obs.update(value)
            if advance is not None:
                advance(1)


def collect_onnx(model_path: Path, data: Dataset, watch: Mapping[str, Mapping[str, Factory]],
                 *, batch_size: int = 8, threads: int = 2,
                 title: str = "calibrating") -> dict[str, dict[str, Observer]]:
    """One pass; the observers asked for, by tensor name and key."""
    from slimkit.progress import progress_bar

    observers = {t: {k: make() for k, make in asks.items()} for t, asks in watch.items()}
    taps = OnnxTaps(model_path, list(watch), threads)
    with progress_bar(title, total=(len(data) + batch_size - 1) // batch_size) as advance:
        taps.feed(data, observers, batch_size, advance)
    return observers
