"""Structured channel pruning of CNNs: filters removed physically, leaving a smaller dense model.

Zeroed weights save nothing on a dense runtime; removing whole filters shrinks every tensor and
every convolution, so any runtime runs the result faster. Which channels go is decided by their
importance on the data; how many go in each layer by a sensitivity scan under a FLOPs target.
Only the kept counts are recorded: they rebuild the structure on a fresh copy of the source model
without data, and the saved weights fill it. Accuracy is recovered by a later step (distillation
or QAT); here BatchNorm statistics are only re-estimated on the calibration data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique
from slimkit.space import Choice, Float, Space
from slimkit.techniques.prune import Method

if TYPE_CHECKING:
    from torch import nn

    from slimkit.data import Dataset
    from slimkit.techniques.prune.graph import Group


class PruneChannels(TechniqueConfig):
    technique: Literal["prune_channels"] = "prune_channels"
    family = "pruning"
    space: ClassVar[Space] = {"flops_ratio": Float(0.3, 0.9, step=0.05),
                               "importance": Choice("l1", "l2", "taylor")}
    always_shown = ("importance", "flops_ratio", "ratio")
    # l1 by default: on a trained CNN whose calibration data it already fits, gradients are
    # small and noisy, and taylor ranked no better than weight magnitude.
    importance: Method = Field("l1", description="how channels are ranked within a layer")
    flops_ratio: float | None = Field(0.5, gt=0, le=1, description="FLOPs kept / FLOPs before; "
                                      "per-layer ratios come from a sensitivity scan")
    ratio: float | None = Field(None, gt=0, le=1, description="instead of flops_ratio: keep this "
                                "share of every layer's channels")
    round_to: int = Field(8, ge=1, description="kept channel counts are multiples of this")
    levels: list[float] = Field(
        default_factory=lambda: [0.875, 0.75, 0.625, 0.5, 0.375, 0.25],
        description="shares of a layer's channels the scan tries keeping; the smallest is the "
                    "floor for every layer")
    samples: int = Field(256, gt=0, description="examples for importance and the scan")
    recalibrate_bn: bool = Field(True, description="re-estimate BatchNorm statistics after")
    ignore: list[str] = Field(default_factory=list, description="modules never pruned")
    kept: dict[str, Annotated[int, Field(ge=1)]] | None = Field(
        None, description="layer -> kept channels; the search records its choice here, so a "
                          "saved model rebuilds without data")

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("ratio") is not None:
            if raw.get("flops_ratio") is not None:
                raise ValueError("give flops_ratio or ratio, not both")
            return {**raw, "flops_ratio": None}
        return raw

    @model_validator(mode="after")
    def _has_target(self) -> PruneChannels:
        if self.flops_ratio is None and self.ratio is None and self.kept is None:
            raise ValueError("give flops_ratio or ratio")
        if not self.levels or any(not 0 < f < 1 for f in self.levels):
            raise ValueError("levels are shares between 0 and 1")
        return self

    def needs_data(self) -> bool:
        return True


def rounded(share: float, channels: int, step: int) -> int:
    """`share` of `channels`, a multiple of `step`, never below one step."""
    if channels <= step:
        return channels
    return min(channels, max(step, round(share * channels / step) * step))


def recalibrate(module: nn.Module, data: Dataset, names: list[str]) -> None:
    """Re-estimate BatchNorm statistics: a layer whose inputs lost channels sees other
    activations than its statistics were measured on."""
    import torch
    from torch import nn

    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over all batches
        m.train()
    with torch.no_grad():
        for batch in data.batches(64):
            module(**{n: torch.from_numpy(batch[n]) for n in names})
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.eval()


def _rebuild(model: Model, config: PruneChannels, ctx: StepContext) -> Model:
    from slimkit.techniques.prune import graph

    assert isinstance(model, TorchModel)
    if config.kept is None:
        raise TechniqueError("prune_channels: the saved step has no kept counts to rebuild from")
    graph.apply_kept(model.module.eval(), graph.example_inputs(model.inputs), config.kept)
    return model


def _by_root(kept: dict[str, int], groups: list[Group]) -> dict[str, int]:
    """Kept counts given for any conv or Linear of a group, keyed by the group's root."""
    owner = {name: g for g in groups for name in g.outputs}
    found = {}
    for name, k in kept.items():
        if name not in owner:
            raise TechniqueError(f"prune_channels: {name!r} is not a prunable layer (prunable: "
                                 f"{', '.join(sorted(owner))})")
        if not 0 < k <= owner[name].channels:
            raise TechniqueError(f"prune_channels: {name!r} has {owner[name].channels} "
                                 f"channels, cannot keep {k}")
        found[owner[name].root] = k
    return found


@technique(PruneChannels, format="torch", requires_data=True, rebuild=_rebuild)
def prune_channels_torch(model: Model, config: PruneChannels, ctx: StepContext) -> StepResult:
    from slimkit.progress import progress_bar
    from slimkit.techniques.prune import graph
    from slimkit.techniques.prune.importance import scores
    from slimkit.techniques.prune.sensitivity import FlopsModel, allocate, quality_loss, scan

    assert isinstance(model, TorchModel)
    if ctx.data is None:
        raise TechniqueError("prune_channels needs data to rank channels and scan sensitivity")
    module = model.module.eval()
    names = [i.name for i in model.inputs]
    sample = ctx.data.head(min(config.samples, len(ctx.data)))
    example = graph.example_inputs(model.inputs, sample.inputs)
    dg = graph.build_graph(module, example)
    groups = graph.prunable_groups(dg, module, config.ignore)
    if not groups:
        raise TechniqueError("prune_channels: no conv or Linear channels can be removed from "
                             "this model (only the output layer or grouped convs)")
    ranks = {root: s.argsort().tolist()
             for root, s in scores(config.importance, dg, module, groups, sample, names).items()}
    quality = quality_loss(module, sample, names)
    before = graph.layer_flops(module, example)
    total = graph.total_flops(module, example)
    params = sum(p.numel() for p in module.parameters())
    depthwise = {n for n, m in module.named_modules() if graph.is_depthwise(m)}
    flops = FlopsModel(groups, before, total, depthwise)
    curves: dict[str, dict[int, float]] = {}
    if config.kept is not None:
        kept = _by_root(config.kept, groups)
    elif config.ratio is not None:
        kept = {g.root: rounded(config.ratio, g.channels, config.round_to) for g in groups}
    else:
        assert config.flops_ratio is not None
        levels = {g.root: sorted({k for f in config.levels
                                  if (k := rounded(f, g.channels, config.round_to)) < g.channels},
                                 reverse=True) for g in groups}
        with progress_bar("pruning sensitivity", total=sum(map(len, levels.values()))) as adv:
            curves = scan(module, dg, example, groups, levels, ranks, quality, adv)
        kept = allocate(groups, curves, flops, config.flops_ratio * total)
    kept = {root: k for root, k in kept.items() if k < graph.out_channels(module, root)}
    missing = [g for g in groups if kept.get(g.root, g.channels) not in curves.get(g.root, {})
               and g.root in kept]
    for root, row in scan(module, dg, example, missing, {g.root: [kept[g.root]] for g in missing},
                          ranks, quality).items():
        curves.setdefault(root, {}).update(row)
    graph.apply_kept(module, example, kept, ranks)
    if config.recalibrate_bn:
        recalibrate(module, sample, names)
    after = graph.layer_flops(module, example)
    total_after = graph.total_flops(module, example)
    rows = []
    for g in groups:
        k = kept.get(g.root, g.channels)
        rows.append({"layer": g.root, "layers": g.outputs, "channels_before": g.channels,
                     "channels_after": k, "importance": config.importance,
                     "sensitivity": curves.get(g.root, {}).get(k, 0.0),
                     "flops_before": sum(before[n] for n in g.outputs),
                     "flops_after": sum(after[n] for n in g.outputs)})
    report = {
        "target": ({"kept": config.kept} if config.kept else
                   {"flops_ratio": config.flops_ratio, "ratio": config.ratio}),
        "flops_before": total, "flops_after": total_after, "flops_ratio": total_after / total,
        "params_before": params, "params_after": sum(p.numel() for p in module.parameters()),
        "quality_loss": quality(module), "bn_recalibrated": config.recalibrate_bn,
        "layers": rows,
    }
    return StepResult(TorchModel(module, model.inputs, model.tokenizer, ref=model.ref),
                      record=config.model_copy(update={"kept": kept}), report=report)
