"""SmoothQuant: move activation outliers into the weights before int8.

A few input channels of some Linear layers carry values far larger than the rest (in BERT-like
encoders, the input of the second FFN layer). Per-tensor int8 activations then waste their range
on those channels. Dividing input channel j by s_j and multiplying weight column j by s_j leaves
the layer's output unchanged and evens out the activations; s_j = max|X_j|^a / max|W_j|^(1-a).
The division is an explicit per-channel Mul in front of the layer, because in post-LayerNorm
encoders the activation also feeds a residual path and cannot absorb it. The migration strength
`a` is searched per layer on calibration data by the int8 error of that layer's output.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from slimkit.errors import TechniqueError
from slimkit.model import Model, TorchModel
from slimkit.registry import StepContext, StepResult, TechniqueConfig, technique

# Rows of each layer's input the strength search scores candidates on.
SEARCH_ROWS = 2048


class SmoothQuant(TechniqueConfig):
    technique: Literal["smooth_quant"] = "smooth_quant"
    family = "smoothing"
    # 2: max|X_j| over all calibration rows (was: over the searched sample); the sample drawn
    # while streaming
    version = 2
    # The migration strength `a` of s_j = max|X_j|^a / max|W_j|^(1-a): 0 leaves activations
    # alone, 1 moves all their range into the weights; outside [0, 1] both sides grow.
    alpha: Annotated[float, Field(ge=0, le=1)] | Literal["search"] = "search"
    alphas: list[Annotated[float, Field(ge=0, le=1)]] = Field(
        default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], min_length=1,
        description="strengths the search tries per layer")
    outlier_ratio: float = Field(8.0, gt=1, description="smooth layers whose largest input "
                                                        "channel exceeds the median by this")
    samples: int = Field(64, gt=0)
    layers: list[str] | None = Field(None, description="Linear layers to smooth; the search "
                                                       "records its choice here")

    def needs_data(self) -> bool:
        return True


class SmoothLinear:
    """Factory for a module computing linear(x * inv_scale) with pre-scaled weights."""

    @staticmethod
    def wrap(linear: Any) -> Any:
        import torch
        from torch import nn

        class _Smooth(nn.Module):
            def __init__(self, inner: nn.Linear) -> None:
                super().__init__()
                self.inner = inner
                self.register_buffer("inv_scale", torch.ones(inner.in_features))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(x * self.inv_scale)

        return _Smooth(linear)


def _int8_error(x: np.ndarray, w: np.ndarray, s: np.ndarray) -> float:
    """Output error of int8 per-tensor activations x/s and per-channel weights w*s."""
    from slimkit.techniques.quantize.primitives import affine_params, fake_quantize, quantize_tensor

    xs = x / s
    scale, zero = affine_params(xs.min(), xs.max(), 8, symmetric=False, signed=False)
    xq = fake_quantize(xs, scale, zero, 8, signed=False)
    wq = quantize_tensor(w * s, 8, granularity="channel", axis=0).dequantize()
    ref = x @ w.T
    return float(((xq @ wq.T - ref) ** 2).mean() / max((ref**2).mean(), 1e-12))


def _structure(model: TorchModel, layers: list[str]) -> dict[str, Any]:
    import torch

    named = dict(model.module.named_modules())
    wrapped = {}
    for name in layers:
        linear = named.get(name)
        if not isinstance(linear, torch.nn.Linear):
            raise TechniqueError(f"smooth_quant: {name!r} is not a Linear layer of the model")
        parent_name, _, attr = name.rpartition(".")
        parent = named[parent_name] if parent_name else model.module
        smooth = SmoothLinear.wrap(linear)
        setattr(parent, attr, smooth)
        wrapped[name] = smooth
    return wrapped


def _rebuild(model: Model, config: SmoothQuant, ctx: StepContext) -> Model:
    assert isinstance(model, TorchModel)
    if config.layers is None:
        raise TechniqueError("smooth_quant: the saved step lists no layers to rebuild")
    _structure(model, config.layers)
    return model


def _observe(model: TorchModel, config: SmoothQuant, ctx: StepContext,
             layers: list[str]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-channel max|X| over all calibration rows, and a seeded sample of rows for the
    strength search, of each layer's input."""
    from slimkit.observe import MaxAbs, Request, RowSample, collect

    assert ctx.data is not None
    names = [i.name for i in model.inputs]
    data = ctx.data.head(min(config.samples, len(ctx.data)))
    ask = {"max_abs": MaxAbs, "rows": lambda: RowSample(SEARCH_ROWS, seed=0)}
    stats = collect(model.module, data, names, [Request(layers, ask)])
    amax, rows = {}, {}
    for n in layers:
        top, sample = stats[n].inputs["max_abs"], stats[n].inputs["rows"]
        assert isinstance(top, MaxAbs) and isinstance(sample, RowSample)
        if top.values is not None:
            amax[n], rows[n] = top.values, sample.values()
    return amax, rows


def _outliers(amax: dict[str, np.ndarray], ratio: float) -> list[str]:
    return [n for n, m in amax.items() if m.max() > ratio * max(float(np.median(m)), 1e-12)]


@technique(SmoothQuant, format="torch", requires_data=True, rebuild=_rebuild)
def smooth_quant_torch(model: Model, config: SmoothQuant, ctx: StepContext) -> StepResult:
    import torch

    assert isinstance(model, TorchModel)
    if ctx.data is None:
        raise TechniqueError("smooth_quant needs calibration data")
    linears = [n for n, m in model.module.named_modules() if isinstance(m, torch.nn.Linear)]
    for name in config.layers or []:
        if name not in linears:
            raise TechniqueError(f"smooth_quant: {name!r} is not a Linear layer of the model")
    amax, rows = _observe(model, config, ctx, config.layers or linears)
    chosen = config.layers if config.layers is not None else _outliers(amax, config.outlier_ratio)
    silent = [n for n in chosen if n not in amax]
    if silent:
        raise TechniqueError(f"smooth_quant: calibration never ran {', '.join(silent[:3])}")
    report = []
    wrapped = _structure(model, chosen)
    for n, smooth in wrapped.items():
        x = rows[n]
        w = smooth.inner.weight.detach().numpy()
        xmax = np.maximum(amax[n], 1e-5)
        wmax = np.maximum(np.abs(w).max(0), 1e-5)
        options = config.alphas if config.alpha == "search" else [float(config.alpha)]
        errors = {a: _int8_error(x, w, xmax**a / wmax ** (1 - a)) for a in options}
        errors_none = _int8_error(x, w, np.ones_like(xmax))
        best = min(errors, key=lambda a: errors[a])
        s = (xmax**best / wmax ** (1 - best)).astype(np.float32)
        with torch.no_grad():
            smooth.inner.weight.mul_(torch.from_numpy(s)[None, :])
            smooth.inv_scale.copy_(torch.from_numpy(1.0 / s))
        report.append({"layer": n, "alpha": best, "int8_error": errors[best],
                       "int8_error_unsmoothed": errors_none})
    return StepResult(model, record=config.model_copy(update={"layers": chosen}),
                      report={"layers": report})
