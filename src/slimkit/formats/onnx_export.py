"""The conversion torch -> ONNX, with the TorchScript-based exporter."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from slimkit.errors import TechniqueError
from slimkit.formats.base import FileModel, Model, TorchModel, get_format
from slimkit.formats.graph import converter

if TYPE_CHECKING:
    from slimkit.dataset import Dataset

OPSET = 17


@converter("torch", "onnx")
def torch_to_onnx(model: Model, workdir: Path, example: Dataset | None = None) -> Model:
    assert isinstance(model, TorchModel)
    return to_onnx(model, workdir / get_format("onnx").files[0], example)


def to_onnx(model: TorchModel, path: Path, example: Dataset | None = None) -> FileModel:
    """Export with dynamic batch (and sequence) axes.

    Uses the TorchScript-based exporter: on the encoders tried (BERT family) torch 2.13's
    dynamo exporter wrote an invalid graph (a duplicated output name) and external weight files,
    while this one gives a single valid file that every runtime here reads.
    """
    import numpy as np
    import torch

    from slimkit.dataset import synthetic

    sample = (example.head(2) if example is not None and len(example) >= 2
              else synthetic(model.inputs, 2, {"sequence": 16}))
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample.inputs[i.name]))
                 for i in model.inputs)
    names = [i.name for i in model.inputs]
    axes = {i.name: {k: d for k, d in enumerate(i.shape) if isinstance(d, str)}
            for i in model.inputs}
    path.parent.mkdir(parents=True, exist_ok=True)
    own = getattr(model.module, "export_onnx", None)
    if callable(own):  # a module that a trace cannot capture writes its own graph (early exits)
        own(args, names, path)
        return FileModel("onnx", path, model.inputs, model.tokenizer)
    module = _eager_attention(model.module)
    with torch.inference_mode():
        out = module(*args)
    n_out = len(out) if isinstance(out, (tuple, list)) else 1
    out_names = ["output"] if n_out == 1 else [f"output_{k}" for k in range(n_out)]
    for o in out_names:
        axes[o] = {0: "batch"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(path), input_names=names,
                              output_names=out_names, dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
    except Exception as e:
        raise TechniqueError(f"ONNX export failed: {str(e).splitlines()[0][:300]}") from e
    _fold_quantized_weights(path)
    return FileModel("onnx", path, model.inputs, model.tokenizer)


def _fold_quantized_weights(path: Path) -> None:
    """Weights that training left as QuantizeLinear(float) are stored as int8 instead."""
    import onnx

    from slimkit.techniques.quantize.onnx_graph import fold_constant_quantize

    proto = onnx.load(str(path))
    if fold_constant_quantize(proto):
        onnx.save(proto, str(path))


def _eager_attention(module: object) -> object:
    """A copy whose Hugging Face submodules compute attention explicitly (no SDPA kernel).

    The traced graph is then the textbook MatMul-Softmax-MatMul that ONNX Runtime's transformer
    fusions recognise and that its kernels run faster (MiniLM, batch 32, sequence 128: 116 vs
    102 sequences/s on 2 threads, unfused).
    """
    import copy

    def uses_sdpa(m: object) -> bool:
        return hasattr(m, "set_attn_implementation") and \
            getattr(getattr(m, "config", None), "_attn_implementation", None) == "sdpa"

    if not any(uses_sdpa(m) for m in module.modules()):  # type: ignore[attr-defined]
        return module
    module = copy.deepcopy(module)
    for m in module.modules():  # type: ignore[attr-defined]
        if uses_sdpa(m):
            m.set_attn_implementation("eager")
    return module
