"""Activation histograms of an ONNX model, gathered with ONNX Runtime.

The graph is augmented to expose the tensors a quantizer needs (inputs and outputs of the
nodes to quantize) and the shared observers (`slimkit.observe`) read them. Two passes: exact
min/max first, then histograms on edges fixed by that range, so the histograms are those of
all the values at once without storing any activation.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import cast

from slimkit.data import Dataset
from slimkit.observe import HistogramObserver, MinMax, OnnxTaps
from slimkit.progress import progress_bar
from slimkit.techniques.quantize.calibrate import Histogram


def tensors_to_calibrate(model_path: Path, op_types: list[str]) -> list[str]:
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    floats = {vi.name for vi in [*model.graph.value_info, *model.graph.input,
                                 *model.graph.output]
              if vi.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT,
                                                   onnx.TensorProto.FLOAT16)}
    init = {i.name for i in model.graph.initializer}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type in op_types:
            for t in [*node.input, *node.output]:
                if t in floats and t not in init and t not in names:
                    names.append(t)
    return names


def collect(model_path: Path, data: Dataset, op_types: list[str], *, batch_size: int = 8,
            bins: int = 2048, threads: int = 2) -> dict[str, Histogram]:
    names = tensors_to_calibrate(model_path, op_types)
    taps = OnnxTaps(model_path, names, threads)
    steps = 2 * ((len(data) + batch_size - 1) // batch_size)
    with progress_bar("calibrating", total=steps) as advance:
        ranges = {n: {"range": MinMax()} for n in names}
        taps.feed(data, ranges, batch_size, partial(advance, note="pass 1"))
        hists = {n: {"histogram": _fixed(cast(MinMax, ranges[n]["range"]), bins)}
                 for n in names}
        taps.feed(data, hists, batch_size, partial(advance, note="pass 2"))
    return {n: cast(HistogramObserver, hists[n]["histogram"]).histogram() for n in names}


def _fixed(bounds: MinMax, bins: int) -> HistogramObserver:
    lo, hi = bounds.range()
    return HistogramObserver(bins, lo, hi)
