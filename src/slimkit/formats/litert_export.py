"""The conversion torch -> LiteRT, through litert-torch.

litert-torch lowers a symbolic batch through JAX, which fails on the first flatten of a conv
net, so the model is exported at a fixed batch of `EXPORT_BATCH` and the batch is freed in the
flatbuffer afterwards: the inputs' shape signatures say -1, and a RESHAPE that carries the
batch through (the NCHW -> NHWC one before a single-channel conv, say) reshapes to -1 on it.
The interpreter then resizes to any batch. 2, not 1: a leading 1 in a reshape could as well be
a new axis as the batch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slimkit.errors import TechniqueError
from slimkit.formats.base import FileModel, Model, TorchModel, first_line, get_format
from slimkit.formats.graph import converter
from slimkit.formats.litert import INSTALL, open_interpreter, quiet

if TYPE_CHECKING:
    from slimkit.dataset import Dataset

EXPORT_BATCH = 2
# A batch the converted model is tried at before it is kept: none it was exported with.
CHECK_BATCH = 3


@converter("torch", "litert")
def torch_to_litert(model: Model, workdir: Path, example: Dataset | None = None) -> Model:
    assert isinstance(model, TorchModel)
    return to_litert(model, workdir / get_format("litert").files[0], example)


def litert_torch() -> Any:
    """The converter, imported quietly: its first import brings TensorFlow's native logging."""
    try:
        with quiet():
            import litert_torch
    except ImportError as e:
        raise TechniqueError(f"exporting to LiteRT needs litert-torch ({INSTALL})") from e
    return litert_torch


def sample_args(model: TorchModel, example: Dataset | None, rows: int = EXPORT_BATCH
                ) -> dict[str, Any]:
    """The tensors a graph is traced with, by argument name (the `.tflite` signature keeps
    the names): real rows when there are enough."""
    import numpy as np
    import torch

    from slimkit.dataset import synthetic

    sample = (example.head(rows) if example is not None and len(example) >= rows
              else synthetic(model.inputs, rows, {"sequence": 16}))
    return {i.name: torch.from_numpy(np.ascontiguousarray(sample.inputs[i.name]))
            for i in model.inputs}


def to_litert(model: TorchModel, path: Path, example: Dataset | None = None,
              graph: Any = None, quant_config: Any = None) -> FileModel:
    """Write `model` (or `graph`, its quantized form) as a `.tflite` taking any batch."""
    lt = litert_torch()
    kwargs = sample_args(model, example)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with quiet(), _no_progress():
            edge = lt.convert((graph if graph is not None else model.module.eval()),
                              sample_kwargs=kwargs, quant_config=quant_config)
            edge.export(str(path))
    except Exception as e:
        raise TechniqueError(f"LiteRT export failed: {first_line(e)}") from e
    free_batch(path, EXPORT_BATCH)
    _check_batch(path)
    return FileModel("litert", path, model.inputs, model.tokenizer)


@contextlib.contextmanager
def _no_progress() -> Iterator[None]:
    """litert-torch prints a line per conversion stage unless told not to, by environment."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "n"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def free_batch(path: Path, batch: int) -> None:
    """Mark the first axis of every input and output as dynamic, and let reshapes that carry
    it take -1 there; a model whose weights live outside the flatbuffer is left as it is."""
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    if any((b.offset or 0) > 1 for b in model.buffers or []):
        return
    reshape = schema.BuiltinOperator.RESHAPE
    for graph in model.subgraphs:
        for t in (*graph.inputs, *graph.outputs):
            tensor = graph.tensors[t]
            if tensor.shape is not None and len(tensor.shape) and tensor.shape[0] == batch:
                tensor.shapeSignature = [-1, *(int(d) for d in tensor.shape[1:])]
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if max(code.builtinCode, code.deprecatedBuiltinCode) != reshape:
                continue
            src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
            if not (_leads(src, batch) and _leads(dst, batch)):
                continue
            if len(op.inputs) > 1 and op.inputs[1] >= 0:
                buf = model.buffers[graph.tensors[op.inputs[1]].buffer]
                data = buf.data if isinstance(buf.data, np.ndarray) else np.zeros(0, np.uint8)
                shape = np.frombuffer(data.tobytes(), dtype=np.int32).copy()
                if len(shape) and shape[0] == batch:
                    shape[0] = -1
                    buf.data = np.frombuffer(shape.tobytes(), dtype=np.uint8)
            options = op.builtinOptions
            if isinstance(options, schema.ReshapeOptionsT) and options.newShape is not None \
                    and len(options.newShape) and options.newShape[0] == batch:
                options.newShape = [-1, *list(options.newShape)[1:]]
            dst.shapeSignature = [-1, *(int(d) for d in dst.shape[1:])]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))


def _leads(tensor: Any, batch: int) -> bool:
    return tensor.shape is not None and len(tensor.shape) > 0 and tensor.shape[0] == batch


def _check_batch(path: Path) -> None:
    """A converted model that cannot take another batch is refused here, not in a benchmark."""
    import numpy as np

    it = open_interpreter(path)
    try:
        with quiet():
            for d in it.get_input_details():
                it.resize_tensor_input(d["index"], [CHECK_BATCH, *d["shape"][1:]], strict=False)
            it.allocate_tensors()
            for d in it.get_input_details():
                it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            it.invoke()
    except Exception as e:
        raise TechniqueError(f"the LiteRT model keeps its export batch of {EXPORT_BATCH} "
                             f"({first_line(e)})") from e
