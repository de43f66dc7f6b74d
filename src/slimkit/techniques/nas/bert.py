"""BERT-like students: fewer layers, fewer heads, a narrower FFN and hidden size, weights from
the teacher (Minitron's recipe: depth by layer importance, width by activation importance).

Heads and FFN neurons are ranked and cut out with prune_transformer's scores and surgery. The
hidden size is cut across the whole residual stream (embeddings, every projection and LayerNorm);
a Linear after the last layer lifts the stream back to the teacher's size, initialised to put
each kept dimension back where it was, so the pooler, a classifier or a mean-pooled embedding
downstream keep the teacher's shapes and weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from slimkit.errors import TechniqueError
from slimkit.techniques.nas.space import Architecture

if TYPE_CHECKING:
    from slimkit.data import Dataset
    from slimkit.model import TorchModel
    from slimkit.techniques.prune.transformer_importance import Scores


def find_bert(module: nn.Module) -> nn.Module | None:
    """The first submodule shaped like Hugging Face's BertModel: embeddings and encoder.layer."""
    for m in module.modules():
        layer = getattr(getattr(m, "encoder", None), "layer", None)
        if hasattr(m, "embeddings") and isinstance(layer, nn.ModuleList):
            return m
    return None


@dataclass
class BertTeacher:
    module: nn.Module
    shape: Architecture
    scores: Scores  # heads and FFN neurons per teacher layer
    layer_importance: list[float] | None
    hidden_order: list[int]  # hidden dimensions, most important first


def _layer_handle(layer: nn.Module) -> Any:
    from slimkit.techniques.prune.transformer_surgery import encoder_layers

    return encoder_layers(layer)[0]


def _run(module: nn.Module, data: Dataset, names: list[str]) -> torch.Tensor:
    from slimkit.train.outputs import first_tensor

    with torch.no_grad():
        return torch.cat([first_tensor(module(**{n: torch.from_numpy(b[n]) for n in names}))
                          .float().flatten(1) for b in data.batches(32)])


def layer_scores(module: nn.Module, data: Dataset, names: list[str]) -> list[float]:
    """How far the output moves (1 - cosine) when each layer alone is skipped."""
    bert = find_bert(module)
    assert bert is not None
    reference = _run(module, data, names)
    layers = bert.encoder.layer
    found = []
    for i in range(len(layers)):
        bert.encoder.layer = nn.ModuleList([la for k, la in enumerate(layers) if k != i])
        try:
            out = _run(module, data, names)
        finally:
            bert.encoder.layer = layers
        found.append(float(1 - nn.functional.cosine_similarity(out, reference).mean()))
    return found


def hidden_scores(module: nn.Module, data: Dataset, names: list[str]) -> np.ndarray:
    """Mean |activation| of each hidden dimension after every LayerNorm of the residual
    stream (Minitron's embedding-channel importance)."""
    bert = find_bert(module)
    assert bert is not None
    norms = [m for m in bert.modules() if isinstance(m, nn.LayerNorm)]
    total = torch.zeros(norms[0].normalized_shape[0], dtype=torch.float64)

    def add(_m: nn.Module, _args: Any, out: torch.Tensor) -> None:
        total.add_(out.detach().abs().reshape(-1, out.shape[-1]).double().mean(0))

    handles = [m.register_forward_hook(add) for m in norms]
    try:
        _run(module, data, names)
    finally:
        for h in handles:
            h.remove()
    return total.numpy()


def analyse(model: TorchModel, data: Dataset, importance: str, by_importance: bool
            ) -> BertTeacher:
    from slimkit.techniques.prune.transformer_importance import magnitude_scores, taylor_scores
    from slimkit.techniques.prune.transformer_surgery import encoder_layers

    module = model.module.eval()
    bert = find_bert(module)
    if bert is None:
        raise TechniqueError("nas: no BERT-like encoder (embeddings and encoder.layer) found")
    names = [i.name for i in model.inputs]
    layers = encoder_layers(bert)
    scores = (magnitude_scores(layers) if importance == "magnitude"
              else taylor_scores(module, layers, names, data))
    first = layers[0]
    shape = Architecture(family="bert", layers=list(range(len(layers))), heads=first.heads,
                         ffn=first.ffn, hidden=first.hidden)
    if any((la.heads, la.ffn) != (first.heads, first.ffn) for la in layers):
        raise TechniqueError("nas: the encoder's layers differ in heads or FFN width; search "
                             "the unpruned model")
    order = np.argsort(-hidden_scores(module, data, names), kind="stable").tolist()
    return BertTeacher(module, shape, scores, layer_scores(module, data, names)
                       if by_importance else None, order)


def _keep_layers(bert: nn.Module, kept: list[int]) -> None:
    layers = bert.encoder.layer
    bert.encoder.layer = nn.ModuleList([layers[i] for i in kept])
    if hasattr(bert, "config"):
        bert.config.num_hidden_layers = len(kept)


def _cut(param: nn.Parameter, index: torch.Tensor, dim: int) -> nn.Parameter:
    return nn.Parameter(param.detach().index_select(dim, index).clone(),
                        requires_grad=param.requires_grad)


def _slice_hidden(bert: nn.Module, index: list[int], full: int) -> None:
    """Keep the hidden dimensions `index` everywhere in the residual stream, in place, and
    lift the last layer's output back to `full` dimensions."""
    idx = torch.tensor(index, dtype=torch.long)
    for emb in bert.embeddings.modules():
        if isinstance(emb, nn.Embedding):
            emb.weight = _cut(emb.weight, idx, 1)
            emb.embedding_dim = len(index)
    for m in bert.modules():
        if isinstance(m, nn.LayerNorm):
            m.weight = _cut(m.weight, idx, 0)
            m.bias = _cut(m.bias, idx, 0)
            m.normalized_shape = (len(index),)
    for layer in bert.encoder.layer:
        la = _layer_handle(layer)
        for lin in (la.attention.query, la.attention.key, la.attention.value, la.ffn_in):
            lin.weight = _cut(lin.weight, idx, 1)
            lin.in_features = len(index)
        for lin in (la.attn_out, la.ffn_out):
            lin.weight = _cut(lin.weight, idx, 0)
            lin.bias = _cut(lin.bias, idx, 0)
            lin.out_features = len(index)
    out = bert.encoder.layer[-1].output
    lift = nn.Linear(len(index), full, bias=False)
    with torch.no_grad():
        lift.weight.zero_()
        lift.weight[idx, torch.arange(len(index))] = 1.0
    out.LayerNorm = nn.Sequential(out.LayerNorm, lift)


def _shape(bert: nn.Module, arch: Architecture, full: Architecture,
           order: BertTeacher | None) -> None:
    """Cut `bert` to `arch` in place: by the teacher's rankings, or (without them) keeping the
    first units, which is all a rebuild needs before the saved weights are loaded."""
    from slimkit.techniques.prune.transformer_surgery import parent_map, shrink

    assert full.heads is not None and full.ffn is not None and full.hidden is not None
    heads = arch.heads or full.heads
    ffn = arch.ffn or full.ffn
    _keep_layers(bert, arch.layers if order is not None else list(range(len(arch.layers))))
    if (heads, ffn) != (full.heads, full.ffn):
        parents = parent_map(bert)
        for layer, original in zip(bert.encoder.layer, arch.layers, strict=True):
            if order is None:
                keep_h, keep_n = list(range(heads)), list(range(ffn))
            else:
                keep_h = np.argsort(-order.scores.heads[original], kind="stable")[:heads]
                keep_n = np.argsort(-order.scores.neurons[original], kind="stable")[:ffn]
            shrink(_layer_handle(layer), parents, [int(h) for h in keep_h],
                   [int(n) for n in keep_n])
    hidden = arch.hidden or full.hidden
    if hidden < full.hidden:
        index = (sorted(order.hidden_order[:hidden]) if order is not None
                 else list(range(hidden)))
        _slice_hidden(bert, index, full.hidden)


def inherit(teacher: BertTeacher, arch: Architecture) -> nn.Module:
    module = copy.deepcopy(teacher.module)
    bert = find_bert(module)
    assert bert is not None
    _shape(bert, arch, teacher.shape, teacher)
    return module.eval()


def teacher_shape(module: nn.Module) -> Architecture:
    from slimkit.techniques.prune.transformer_surgery import encoder_layers

    bert = find_bert(module)
    if bert is None:
        raise TechniqueError("nas: the record is for a BERT-like encoder; the model has none")
    layers = encoder_layers(bert)
    return Architecture(family="bert", layers=list(range(len(layers))), heads=layers[0].heads,
                        ffn=layers[0].ffn, hidden=layers[0].hidden)


def rebuild(module: nn.Module, arch: Architecture) -> None:
    full = teacher_shape(module)
    bert = find_bert(module)
    assert bert is not None
    _shape(bert, arch, full, None)
    module.eval()
