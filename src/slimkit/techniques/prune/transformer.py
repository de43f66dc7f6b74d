"""Structured pruning of BERT-like encoders: whole attention heads and FFN neurons removed.

Unstructured sparsity does not make a CPU runtime faster; a narrower dense layer does. So the
removed units are cut out of the weight matrices and the result exports to ONNX like the
original. Importance is measured on data (or taken from weight norms), a FLOPs budget is spread
over the layers by that importance, and the kept head count and FFN width of each layer are
recorded in the step, so a saved artifact rebuilds the same shapes without data.
"""

from __future__ import annotations

import copy
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import Float, Space


class PruneTransformer(TechniqueConfig):
    technique: Literal["prune_transformer"] = "prune_transformer"
    family = "pruning"
    space: ClassVar[Space] = {"flops_ratio": Float(0.4, 0.9, step=0.05)}
    flops_ratio: float = Field(0.65, gt=0, le=1, description="share of encoder FLOPs to keep")
    importance: Literal["taylor", "magnitude"] = "taylor"
    allocation: Literal["global", "uniform"] = Field(
        "global", description="global: one ranking over all layers; uniform: same share each")
    heads_share: float | None = Field(
        None, ge=0, le=1, description="share of the FLOPs saving taken from attention heads; "
                                      "None lets the importance scores decide")
    ffn_multiple: int = Field(32, gt=0, description="FFN widths are multiples of this")
    sequence_length: int | None = Field(
        None, gt=0, description="tokens per sequence the FLOPs are counted at; None: the "
                                "padded length of the data")
    samples: int = Field(256, gt=0, description="texts used to score importance")
    projections: int = Field(4, gt=0, description="random projections of the embedding per "
                                                  "batch when there are no labels")
    reconstruct: bool = Field(False, description="refit each layer's output projections by "
                                                 "least squares towards the unpruned model, "
                                                 "layer by layer, on the data")
    # At least one head and one FFN neuron stay in every layer (as the allocation keeps them).
    heads: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="kept heads per layer (recorded)")
    ffn: list[Annotated[int, Field(ge=1)]] | None = Field(
        None, description="kept FFN width per layer (recorded)")

    always_shown = ("flops_ratio",)
    version = 2  # 2: reconstruction layer by layer, towards the unpruned model

    def needs_data(self) -> bool:
        return self.importance == "taylor" or self.reconstruct


def _rebuild(model: Model, config: PruneTransformer, ctx: StepContext) -> Model:
    from slimkit.techniques.prune.transformer_surgery import encoder_layers, parent_map, shrink

    assert isinstance(model, TorchModel)
    layers = encoder_layers(model.module)
    if config.heads is None or config.ffn is None:
        raise TechniqueError("prune_transformer: the saved step records no layer shapes")
    if len(config.heads) != len(layers) or len(config.ffn) != len(layers):
        raise TechniqueError(f"prune_transformer: the record has {len(config.heads)} layers, "
                             f"the model {len(layers)}")
    parents = parent_map(model.module)
    for la, h, f in zip(layers, config.heads, config.ffn, strict=True):
        shrink(la, parents, list(range(h)), list(range(f)))
    return model


def _sequence_length(model: TorchModel, config: PruneTransformer, ctx: StepContext) -> int:
    if config.sequence_length is not None:
        return config.sequence_length
    if ctx.data is not None:
        first = ctx.data.inputs[model.inputs[0].name]
        if first.ndim >= 2:
            return int(first.shape[1])
    return 128


@technique(PruneTransformer, format="torch", requires_data=True, rebuild=_rebuild)
def prune_transformer_torch(model: Model, config: PruneTransformer,
                            ctx: StepContext) -> StepResult:
    from slimkit.techniques.prune import transformer_allocate as alloc
    from slimkit.techniques.prune import transformer_reconstruct as rec
    from slimkit.techniques.prune.transformer_importance import magnitude_scores, taylor_scores
    from slimkit.techniques.prune.transformer_surgery import (
        encoder_flops,
        encoder_layers,
        layer_macs,
        parent_map,
        shrink,
    )

    assert isinstance(model, TorchModel)
    layers = encoder_layers(model.module)
    seq = _sequence_length(model, config, ctx)
    names = [i.name for i in model.inputs]
    if config.needs_data() and (ctx.data is None or len(ctx.data) == 0):
        raise TechniqueError("prune_transformer: taylor importance and reconstruct need data "
                             "(or use importance: magnitude)")
    data = None if ctx.data is None else ctx.data.head(min(config.samples, len(ctx.data)))
    if config.importance == "magnitude":
        scores = magnitude_scores(layers)
    else:
        assert data is not None
        scores = taylor_scores(model.module, layers, names, data, projections=config.projections)
    original = copy.deepcopy(model.module) if config.reconstruct else None
    if config.heads is not None and config.ffn is not None:
        plan = alloc.allocate_counts(scores, config.heads, config.ffn)
    elif config.allocation == "uniform":
        plan = alloc.allocate_uniform(layers, scores, seq, config.flops_ratio,
                                      config.ffn_multiple)
    else:
        plan = alloc.allocate_global(layers, scores, seq, config.flops_ratio,
                                     config.ffn_multiple, config.heads_share)
    before = encoder_flops(layers, seq)
    rows = []
    parents = parent_map(model.module)
    for i, (la, kh, kn) in enumerate(zip(layers, plan.heads, plan.neurons, strict=True)):
        row = {"layer": i, "heads_before": la.heads, "ffn_before": la.ffn,
               "flops_before": 2 * layer_macs(la.heads, la.ffn, la.hidden, la.head_size, seq)}
        new = shrink(la, parents, kh, kn)
        rows.append({**row, "heads_after": new.heads, "ffn_after": new.ffn,
                     "flops_after": 2 * layer_macs(new.heads, new.ffn, new.hidden,
                                                   new.head_size, seq),
                     "heads_kept": kh})
    if original is not None:
        assert data is not None
        rec.reconstruct(model.module, original, names, data)
    layers = encoder_layers(model.module)
    after = encoder_flops(layers, seq)
    report = {
        "sequence_length": seq, "importance": config.importance,
        "allocation": config.allocation, "encoder_flops_before": before,
        "encoder_flops_after": after, "flops_ratio": after / before, "layers": rows}
    record = config.model_copy(update={"heads": [la.heads for la in layers],
                                       "ffn": [la.ffn for la in layers],
                                       "sequence_length": seq})
    return StepResult(model, record=record, report=report)
