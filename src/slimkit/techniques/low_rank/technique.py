"""The `low_rank` step: Linear and conv layers replaced by their low-rank factors.

A factorised layer is two or three dense layers with fewer multiply-adds, so every runtime
runs it faster without special kernels, and it exports to ONNX like any torch model. Ranks come
from a sensitivity scan allocated under a FLOPs or parameter target, only where they save cost,
and are recorded: a saved model rebuilds its shapes from the record without data, and the saved
weights fill them. Accuracy is recovered by distillation from the unfactorised model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import Field, model_validator

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, technique
from slimkit.space import Float, Space
from slimkit.techniques.prune.schedule import PruneTraining

if TYPE_CHECKING:
    from torch import nn

    from slimkit.techniques.low_rank.factorise import Layer, Rank

PositiveInt = Annotated[int, Field(ge=1)]


class LowRank(PruneTraining):
    technique: Literal["low_rank"] = "low_rank"
    family = "low_rank"
    version = 1
    space: ClassVar[Space] = {"flops": Float(0.2, 0.9, step=0.05)}
    always_shown = ("flops", "params", "whiten")
    flops: float | None = Field(
        0.5, gt=0, le=1, description="FLOPs kept / FLOPs before, over the chosen layers only "
                                     "(attention's matmuls, norms and whatever is not factorised "
                                     "are not counted); ranks per layer from a sensitivity scan")
    params: float | None = Field(None, gt=0, le=1, description="instead of flops: parameters "
                                 "kept / before, over the chosen layers")
    whiten: bool = Field(False, description="cut each layer where its calibration inputs carry "
                                            "least (SVD-LLM / ASVD whitening); needs data")
    layers: list[str] | None = Field(
        None, description="fnmatch globs or module names (a module stands for the layers in it) "
                          "of the Linear and conv layers to factorise; None: every eligible one")
    exclude: list[str] | None = Field(
        default_factory=list, description="globs or module names never factorised; None: the "
                                          "first and the last eligible layer")
    levels: list[float] = Field(
        default_factory=lambda: [0.75, 0.5, 0.375, 0.25, 0.125],
        description="shares of a layer's full rank the scan tries; the smallest is the floor")
    round_to: int = Field(8, ge=1, description="ranks are multiples of this (of a smaller "
                                               "power of two in layers under 8 such steps)")
    samples: int = Field(256, gt=0, description="examples for whitening and the scan")
    loss: Literal["auto", "labels", "distill"] = Field(
        "distill", description="recovery (epochs > 0) towards the unfactorised model's outputs "
                               "(distill), the labels, or labels when the data has them (auto)")
    ranks: dict[str, PositiveInt | tuple[PositiveInt, PositiveInt]] | None = Field(
        None, description="layer -> rank (an SVD) or [r_in, r_out] (Tucker-2 of a kxk conv); "
                          "the scan records its choice here, so a saved model rebuilds without "
                          "data")

    @model_validator(mode="before")
    @classmethod
    def _one_target(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("params") is not None:
            if raw.get("flops") is not None:
                raise ValueError("give flops or params, not both")
            return {**raw, "flops": None}
        return raw

    @model_validator(mode="after")
    def _has_target(self) -> LowRank:
        if self.flops is None and self.params is None and self.ranks is None:
            raise ValueError("give flops or params (or ranks)")
        if not self.levels or any(not 0 < f < 1 for f in self.levels):
            raise ValueError("levels are shares between 0 and 1")
        return self

    def needs_data(self) -> bool:
        return self.whiten or self.epochs > 0 or self.ranks is None


def _as_rank(value: int | tuple[int, int]) -> Rank:
    return (value,) if isinstance(value, int) else tuple(value)


def _recorded(rank: Rank) -> int | tuple[int, int]:
    return rank[0] if len(rank) == 1 else (rank[0], rank[1])


def _given(config: LowRank, module: nn.Module) -> dict[str, Rank]:
    """The recorded ranks, checked against the model's layers."""
    from slimkit.techniques.low_rank.factorise import kind_of
    from slimkit.techniques.low_rank.scan import eligible

    assert config.ranks is not None
    layers = eligible(module)
    found = {}
    for name, value in config.ranks.items():
        if name not in layers:
            raise TechniqueError(f"low_rank: {name!r} is not a Linear or conv layer that can be "
                                 f"factorised (there are: {', '.join(sorted(layers))})")
        m, rank = layers[name], _as_rank(value)
        tucker = kind_of(m) == "tucker2"
        if len(rank) != (2 if tucker else 1):
            raise TechniqueError(f"low_rank: {name!r} takes " + ("[r_in, r_out] (a kxk conv)"
                                 if tucker else "one rank"))
        full = ((m.in_channels, m.out_channels) if tucker else
                (min(m.weight.shape[0], m.weight[0].numel()),))
        if any(r > f for r, f in zip(rank, full, strict=True)):
            raise TechniqueError(f"low_rank: {name!r} has full rank {list(full)}, not "
                                 f"{list(rank)}")
        found[name] = rank
    return found


def _rebuild(model: Model, config: LowRank, ctx: StepContext) -> Model:
    from slimkit.techniques.low_rank.factorise import empty_factorised
    from slimkit.techniques.low_rank.scan import swap

    assert isinstance(model, TorchModel)
    if config.ranks is None:
        raise TechniqueError("low_rank: the saved step has no ranks to rebuild from")
    module = model.module
    for name, rank in _given(config, module).items():
        swap(module, name, empty_factorised(module.get_submodule(name), rank))
    return model


def _counted(flops: dict[str, float], name: str) -> float:
    return sum(v for n, v in flops.items() if n == name or n.startswith(name + "."))


@technique(LowRank, format="torch", rebuild=_rebuild)
def low_rank_torch(model: Model, config: LowRank, ctx: StepContext) -> StepResult:
    from slimkit.progress import progress_bar
    from slimkit.techniques.low_rank import scan as sc
    from slimkit.techniques.low_rank.factorise import factorised, options
    from slimkit.techniques.prune.graph import example_inputs, layer_flops, total_flops
    from slimkit.techniques.prune.schedule import fine_tune, history, training_target
    from slimkit.techniques.prune.sensitivity import quality_loss

    assert isinstance(model, TorchModel)
    if config.needs_data() and (ctx.data is None or len(ctx.data) == 0):
        raise TechniqueError("low_rank needs calibration data for the rank scan, whitening and "
                             "recovery (or give ranks, whiten: false, epochs: 0)")
    module = model.module.eval()
    names = [i.name for i in model.inputs]
    sample = None if ctx.data is None else ctx.data.head(min(config.samples, len(ctx.data)))
    example = example_inputs(model.inputs, sample.inputs if sample is not None else None)
    chosen = sc.find_layers(module, config.layers, config.exclude)
    if config.ranks is not None:
        plan = _given(config, module)
        chosen = {n: module.get_submodule(n) for n in plan}
    elif not chosen:
        raise TechniqueError("low_rank: no Linear or conv layer to factorise (depthwise and "
                             "grouped convs are left alone; check layers and exclude)")
    geometry = sc.measure(module, example, chosen)
    tuning = training_target(model, config, ctx)  # its teacher: the model as it is now
    covs: dict[str, Any] = {}
    if config.whiten:
        assert sample is not None
        with progress_bar("low-rank statistics", total=-(-len(sample) // 64)) as adv:
            covs = sc.covariances(module, chosen, sample, names, adv)
    quality = quality_loss(module, sample, names) if sample is not None else None
    curves: dict[str, dict[Rank, float]] = {}
    if config.ranks is None:
        assert quality is not None
        metric = "flops" if config.flops is not None else "params"
        tries = {n: options(la, config.levels, config.round_to, metric)
                 for n, la in geometry.items()}
        with progress_bar("low-rank sensitivity", total=sum(map(len, tries.values()))) as adv:
            curves = sc.scan(module, chosen, tries, covs, quality, adv)

        def cost(la: Layer, r: Rank | None) -> float:
            return la.flops(r) if metric == "flops" else float(la.params(r))

        plan = sc.allocate(geometry, curves, cost, config.flops or config.params or 1.0)
    before = layer_flops(module, example)
    total_before = total_flops(module, example)
    params_before = sum(p.numel() for p in module.parameters())
    for name, rank in plan.items():
        sc.swap(module, name, factorised(chosen[name], rank, covs.get(name)))
    loss_cut = quality(module) if quality is not None else None
    result = fine_tune(module, tuning, config, ctx, lambda _s, _t: None, "low-rank recovery")
    module.eval()
    after = layer_flops(module, example)
    rows = [_row(la, plan.get(n), curves.get(n, {}), _counted(before, n), _counted(after, n))
            for n, la in geometry.items()]
    flops_before = sum(r["flops_before"] for r in rows)
    flops_after = sum(r["flops_after"] for r in rows)
    report = {
        "target": ({"ranks": config.ranks} if config.ranks is not None else
                   {"flops": config.flops, "params": config.params}),
        "whiten": config.whiten, "counted_over": "the chosen layers",
        "flops_before": flops_before, "flops_after": flops_after,
        "flops_ratio": flops_after / flops_before if flops_before else 1.0,
        "params_before_layers": sum(r["params_before"] for r in rows),
        "params_after_layers": sum(r["params_after"] for r in rows),
        "model_flops_before": total_before, "model_flops_after": total_flops(module, example),
        "params_before": params_before,
        "params_after": sum(p.numel() for p in module.parameters()),
        "quality_loss_factorised": loss_cut,
        "quality_loss": quality(module) if quality is not None else None,
        "layers": rows, **history(result),
    }
    record = config.model_copy(update={"ranks": {n: _recorded(r) for n, r in plan.items()}})
    return StepResult(TorchModel(module, model.inputs, model.tokenizer, ref=model.ref),
                      record=record, report=report)


def _row(la: Layer, rank: Rank | None, curve: dict[Rank, float], flops_before: float,
         flops_after: float) -> dict[str, Any]:
    shape = [la.cout, la.cin, *la.kernel] if la.kind == "tucker2" else [la.cout, la.cin]
    return {"layer": la.name, "method": la.kind if rank else "kept", "shape": shape,
            "rank": list(rank) if rank else None,
            "flops_before": flops_before, "flops_after": flops_after,
            "params_before": la.params(), "params_after": la.params(rank),
            "scan_error": curve.get(rank) if rank else 0.0,
            "scanned": {"x".join(map(str, r)): round(v, 6) for r, v in curve.items()}}
