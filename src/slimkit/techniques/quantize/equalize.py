"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization
and Bias Correction", ICCV 2019): even out per-channel weight ranges before int8, without data.

Once BatchNorm is folded, the output channels of one layer of a depthwise-separable CNN
(MobileNetV2) can differ in weight range by orders of magnitude, and per-tensor int8 then leaves
most channels a handful of levels. Rescaling each channel shared by two consecutive layers moves
range from one layer to the other and leaves the float function as it was (see
`equalize_pairs`). Deterministic and data-free, so the step is its own rebuild.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique

if TYPE_CHECKING:
    import torch
    from torch import nn

    from slimkit.techniques.quantize.equalize_pairs import Equalizer, Pair


class Equalize(TechniqueConfig):
    technique: Literal["equalize"] = "equalize"
    family = "quantization"
    always_shown = ("relu6",)
    relu6: Literal["clip", "relu"] = Field(
        "clip", description="a ReLU6 inside a pair becomes a per-channel clip (exact) or a ReLU "
                            "as in the paper (outputs that reached 6 change)")
    absorb_bias: bool = Field(
        False, description="also move high biases into the next layer (approximate: assumes "
                           "normal pre-activations with BatchNorm's mean and spread)")
    sweeps: int = Field(100, ge=1, description="most passes over all pairs; layers shared by "
                                               "two pairs need several to settle")


def _bounds(module: nn.Module, eq: Equalizer, relu6: str) -> list[torch.Tensor | None]:
    """Per pair, the clip bound its activation needs after scaling (None: no clip)."""
    import torch

    out: list[torch.Tensor | None] = []
    for p, s in zip(eq.pairs, eq.scales, strict=True):
        if p.activation == "clip" and p.act_name is not None:
            out.append(module.get_submodule(p.act_name).bound.double().flatten() / s)
        elif p.activation == "relu6" and relu6 == "clip":
            out.append(torch.full_like(s, 6.0) / s)
        else:
            out.append(None)
    return out


def _replace_activations(module: nn.Module, eq: Equalizer,
                         bounds: list[torch.Tensor | None]) -> None:
    from torch import nn

    from slimkit.techniques.quantize.equalize_pairs import ChannelClip, replace

    for p, bound in zip(eq.pairs, bounds, strict=True):
        if p.act_name is None or p.activation not in ("relu6", "clip"):
            continue
        first = eq.layers[p.layer1]
        if bound is None:
            replace(module, p.act_name, nn.ReLU())
        else:
            shape = (-1, 1, 1) if isinstance(first, nn.Conv2d) else (-1,)
            replace(module, p.act_name, ChannelClip(bound.to(first.weight.dtype).reshape(shape)))


def _spread(eq: Equalizer, p: Pair) -> float | None:
    from slimkit.techniques.quantize.equalize_pairs import range_spread

    spreads = [range_spread(eq.w[p.layer1]), range_spread(eq.w[p.layer2])]
    return None if None in spreads else max(s for s in spreads if s is not None)


def _absorb(eq: Equalizer, stats: dict[str, tuple[torch.Tensor, ...]],
            bounds: list[torch.Tensor | None]) -> tuple[int, int]:
    """High-bias absorption through each pair's ReLU (its clip bound lowered to match), where
    the first layer's BatchNorm statistics are known. Returns (channels absorbed, pairs skipped
    because the second layer zero-pads)."""
    from slimkit.techniques.quantize.equalize_pairs import pads_with_zeros

    absorbed, padded = 0, 0
    for k, p in enumerate(eq.pairs):
        if p.activation == "none" or p.layer1 not in stats:
            continue
        if pads_with_zeros(eq.layers[p.layer2]):
            padded += 1
            continue
        c = eq.absorb(k, *stats[p.layer1], bounds[k])
        bound = bounds[k]
        bounds[k] = None if bound is None else bound - c
        absorbed += int((c > 0).sum())
    return absorbed, padded


@technique(Equalize, format="torch")
def equalize_torch(model: Model, config: Equalize, ctx: StepContext) -> StepResult:
    from slimkit.techniques.quantize import equalize_pairs as ep

    assert isinstance(model, TorchModel)
    module = model.module.eval()
    graph, found_by = ep.trace(module)
    stats = ep.fold_norms(module, graph)
    pairs = ep.find_pairs(module, graph)
    if not pairs:
        raise TechniqueError("equalize: no Conv2d or Linear feeds another one alone (directly "
                             "or through a ReLU or ReLU6), so no channel can be rescaled")
    eq = ep.Equalizer(module, pairs)
    before = [_spread(eq, p) for p in pairs]
    sweeps, converged = eq.run(config.sweeps)
    bounds = _bounds(module, eq, config.relu6)
    absorbed, padded = _absorb(eq, stats, bounds) if config.absorb_bias else (0, 0)
    eq.write_back()
    _replace_activations(module, eq, bounds)
    to_relu = config.relu6 == "relu" and any(p.activation == "relu6" for p in pairs)
    rows = [{"layer1": p.layer1, "layer2": p.layer2, "activation": _shown(p, config.relu6),
             "channels": int(eq.scales[k].numel()), "range_spread_before": before[k],
             "range_spread_after": _spread(eq, p)} for k, p in enumerate(pairs)]
    report: dict[str, Any] = {
        "pairs": len(pairs), "pairs_found_by": found_by, "folded_batchnorms": len(stats),
        "sweeps": sweeps, "converged": converged, "exact": not (to_relu or absorbed),
        "range_spread": "largest over median per-output-channel weight range, the larger of "
                        "the pair's two layers",
        "layers": rows}
    notes = []
    if to_relu:
        notes.append("ReLU6 inside pairs became ReLU as in the paper: values that reached 6 "
                     "now pass unclipped, so the float outputs changed")
    if config.absorb_bias:
        report["absorbed_channels"] = absorbed
        report["absorption_skipped_for_padding"] = padded
        notes.append("high-bias absorption is approximate: it assumes normal pre-activations "
                     "with BatchNorm's beta and gamma")
    report["note"] = "; ".join(notes) or "exact up to float rounding"
    return StepResult(TorchModel(module, model.inputs, model.tokenizer, ref=model.ref),
                      report=report)


def _shown(p: Pair, relu6: str) -> str:
    if p.activation == "relu6":
        return "relu6 as clip" if relu6 == "clip" else "relu6 as relu"
    return p.activation
