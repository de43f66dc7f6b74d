"""Activation histograms of an ONNX model, gathered with ONNX Runtime.

The graph is augmented to expose the tensors a quantizer needs (inputs and outputs of the
nodes to quantize), then run twice over the calibration data: once for exact min/max, once to
fill fixed-edge histograms. Two passes keep the histograms exact without storing activations.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from slimkit.data import Dataset
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
    import onnx
    import onnxruntime as ort

    names = tensors_to_calibrate(model_path, op_types)
    model = onnx.load(str(model_path))
    present = {o.name for o in model.graph.output}
    for n in names:
        if n not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    # No graph fusions: the tensors asked for must exist as they are in the file.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = [i.name for i in sess.get_inputs()]
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    hists: dict[str, Histogram] = {}
    steps = 2 * ((len(data) + batch_size - 1) // batch_size)
    with progress_bar("calibrating", total=steps) as advance:
        for pass_ in (1, 2):
            for batch in data.batches(batch_size):
                outs = sess.run(names, {k: batch[k] for k in feeds})
                for n, v in zip(names, outs, strict=True):
                    if pass_ == 1:
                        lo[n] = min(lo[n], float(v.min()))
                        hi[n] = max(hi[n], float(v.max()))
                    elif n not in hists:
                        hists[n] = Histogram.of(v, bins, lo[n], hi[n])
                    else:
                        hists[n].add(v)
                advance(1, f"pass {pass_}")
    return hists
